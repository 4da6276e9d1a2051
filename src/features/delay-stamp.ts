import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import { bare } from '../xml/jid.js';
import { isElementNamed } from '../xml/stanza-bytes.js';
import type { SessionHook } from '../session/hooks.js';

/**
 * Adds a XEP-0203 `<delay/>` to the original bytes of a top-level `<message/>` without
 * re-serialising it (XEP-0198 §5: resent stanzas SHOULD carry the original time). The bytes come
 * from the stream scanner, so the element is well-formed: it ends either with `/>` (no children)
 * or with its own end tag.
 *
 * A message that already carries a `<delay/>` child (an offline message, XEP-0160) is returned
 * unchanged: its stamp is the older, true one, and a second `<delay/>` leaves clients to guess
 * which to show. A `<delay/>` nested deeper (inside a carbon's `<forwarded/>`) is the forwarded
 * stanza's own and does not count.
 */
export function addDelay(stanza: Buffer, stampMs: number, from: string): Buffer {
  if (hasDelay(stanza)) return stanza;
  const delay = Buffer.from(`<delay xmlns='${NS.delay}' from='${escapeXml(from)}' stamp='${new Date(stampMs).toISOString()}'/>`);
  const len = stanza.length;
  if (stanza[len - 2] === 0x2f /* / */) {
    const name = elementName(stanza);
    return Buffer.concat([stanza.subarray(0, len - 2), Buffer.from('>'), delay, Buffer.from(`</${name}>`)]);
  }
  const endTag = stanza.lastIndexOf('</');
  return Buffer.concat([stanza.subarray(0, endTag), delay, stanza.subarray(endTag)]);
}

/** True when the stanza has a XEP-0203 `<delay/>` child; parses only stanzas naming the namespace. */
function hasDelay(stanza: Buffer): boolean {
  return stanza.includes(NS.delay) && parseElement(stanza).getChild('delay', NS.delay) !== undefined;
}

/** The qualified name of the element whose bytes start at offset 0. */
function elementName(bytes: Buffer): string {
  let end = 1;
  while (end < bytes.length) {
    const c = bytes[end];
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x2f || c === 0x3e) break;
    end++;
  }
  return bytes.toString('latin1', 1, end);
}

/** XEP-0198 §5 with XEP-0203: a message resent after `<resumed/>` carries the time it was first sent, from the user's server. */
export const replayDelayStamp: SessionHook = {
  name: 'replay-delay-stamp',
  replay(bytes, sentAtMs, session) {
    const jid = session.jid;
    if (jid === undefined || !isElementNamed(bytes, 'message')) return bytes;
    return addDelay(bytes, sentAtMs, bare(jid));
  },
};
