import { parseElement } from './element.js';
import { NS } from './namespaces.js';

/**
 * RFC 3920 stream error conditions that RFC 6120 renamed or removed, and what the proxy relays in
 * their place. jabberd2 2.7 still reports bad XML as `<xml-not-well-formed/>`; a client written to
 * RFC 6120 §4.9.3 knows only the conditions listed there.
 *
 * - `xml-not-well-formed` (RFC 3920 §4.7.3) → `not-well-formed` (RFC 6120 §4.9.3.13): the same
 *   condition under its RFC 6120 name.
 * - `invalid-id` → `undefined-condition`: RFC 3920 §4.7.3 defined it for an invalid stream or
 *   dialback id; RFC 6120 has no counterpart, so it becomes the generic condition (§4.9.3.21).
 */
const RENAMED: Readonly<Record<string, string>> = {
  'xml-not-well-formed': 'not-well-formed',
  'invalid-id': 'undefined-condition',
};
const NEEDLES = Object.keys(RENAMED).map((name) => Buffer.from(name, 'utf8'));

/**
 * A legacy server's `<stream:error/>` as the client should see it: the bytes unchanged when the
 * condition is one RFC 6120 defines, else re-serialised with the RFC 6120 condition in its place
 * (text and application condition kept).
 */
export function toRfc6120StreamError(bytes: Buffer): Buffer | string {
  if (!NEEDLES.some((needle) => bytes.includes(needle))) return bytes;
  const error = parseElement(bytes);
  let renamed = false;
  for (const child of error.getChildElements()) {
    const replacement = RENAMED[child.getName()];
    if (replacement === undefined || child.getNS() !== NS.streams) continue;
    const colon = child.name.indexOf(':');
    child.name = colon < 0 ? replacement : `${child.name.slice(0, colon + 1)}${replacement}`;
    renamed = true;
  }
  return renamed ? error.toString() : bytes;
}
