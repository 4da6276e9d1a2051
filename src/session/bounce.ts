import type { Element } from '../xml/element.js';
import { parseElement, xml } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/**
 * What happens to an unacked stanza when its session expires (DESIGN §5 "Expiry", XEP-0198 §5:
 * "treat unacked stanzas as if sent to an unavailable resource"): the legacy server already
 * considers them delivered, so the proxy answers them on the user's behalf, through the user's
 * own upstream stream, addressed to the original sender.
 *
 * - message (not error, not a carbon copy): error `recipient-unavailable` (RFC 6120 §8.3.3.13)
 * - iq get/set: error `service-unavailable` (RFC 6120 §8.3.3.19)
 * - presence, any error, iq result, carbons (XEP-0280 §6: never bounce copies): dropped
 *
 * Returns the error stanza to send upstream, or undefined when the stanza is dropped.
 */
export function bounceFor(stanzaBytes: Buffer): string | undefined {
  const stanza = parseElement(stanzaBytes);
  const from = stanza.attrs.from as string | undefined;
  const type = stanza.attrs.type as string | undefined;
  if (from === undefined || type === 'error') return undefined;
  if (stanza.name === 'message') {
    if (isCarbon(stanza)) return undefined;
    return errorReply(stanza, 'wait', 'recipient-unavailable');
  }
  if (stanza.name === 'iq' && (type === 'get' || type === 'set')) {
    return errorReply(stanza, 'cancel', 'service-unavailable');
  }
  return undefined;
}

function isCarbon(message: Element): boolean {
  return message.getChildElements().some((child) => child.attrs.xmlns === NS.carbons);
}

function errorReply(stanza: Element, errorType: string, condition: string): string {
  const attrs: Record<string, string> = { to: stanza.attrs.from as string, type: 'error' };
  if (stanza.attrs.id !== undefined) attrs.id = stanza.attrs.id as string;
  const reply = xml(stanza.name, attrs);
  // RFC 6120 §8.3.1: the error MAY include the original payload, so the sender can tell which
  // message failed; the body of a message is kept for that reason.
  for (const child of stanza.getChildElements()) {
    if (stanza.name === 'message' && child.name !== 'body') continue;
    reply.cnode(child);
  }
  reply.c('error', { type: errorType }).c(condition, { xmlns: NS.stanzas });
  return reply.toString();
}
