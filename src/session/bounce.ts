import type { Element } from '../xml/element.js';
import { parseElement, xml } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/** XEP-0313 archive results, in the namespaces servers have used (mam:2 current, 0 and 1 older). */
const MAM_NAMESPACES = new Set(['urn:xmpp:mam:2', 'urn:xmpp:mam:1', 'urn:xmpp:mam:0']);

/**
 * What happens to an unacked stanza when its session expires (README, What it does; XEP-0198 §5:
 * "treat unacked stanzas as if sent to an unavailable resource"): the legacy server already
 * considers them delivered, so the proxy answers them on the user's behalf, through the user's
 * own upstream stream, addressed to the original sender.
 *
 * - message: error `recipient-unavailable` (RFC 6120 §8.3.3.13), except
 *   - headline: dropped (RFC 6121 §8.5.3.2.1: for a resource that is gone, "the server MUST
 *     silently ignore the message");
 *   - carbon copies (XEP-0280 §6: never bounce copies) and XEP-0313 archive results: dropped,
 *     they are copies of what the user's account already has;
 * - iq get/set: error `service-unavailable` (RFC 6120 §8.3.3.19)
 * - presence, any error, iq result: dropped
 * - anything the user's own session sent (from its full JID, as Prosody): dropped.
 *
 * Returns the error stanza to send upstream, or undefined when the stanza is dropped.
 */
export function bounceFor(stanzaBytes: Buffer, ownJid: string): string | undefined {
  const stanza = parseElement(stanzaBytes);
  const from = stanza.attrs.from as string | undefined;
  const type = stanza.attrs.type as string | undefined;
  if (from === undefined || from === ownJid || type === 'error') return undefined;
  if (stanza.name === 'message') {
    if (type === 'headline' || isCopy(stanza)) return undefined;
    return errorReply(stanza, 'wait', 'recipient-unavailable');
  }
  if (stanza.name === 'iq' && (type === 'get' || type === 'set')) {
    return errorReply(stanza, 'cancel', 'service-unavailable');
  }
  return undefined;
}

/**
 * A carbon copy (XEP-0280 `<sent/>` or `<received/>`, not the `<private/>` opt-out marker) or an
 * archive result (XEP-0313 `<result/>`).
 */
function isCopy(message: Element): boolean {
  return message.getChildElements().some((child) => {
    // Resolved namespaces and local names: a sender may bind its own prefix.
    const ns = child.getNS() as string | undefined;
    const name = child.getName();
    return (
      (ns === NS.carbons && (name === 'sent' || name === 'received')) || (ns !== undefined && name === 'result' && MAM_NAMESPACES.has(ns))
    );
  });
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
