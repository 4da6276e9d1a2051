/**
 * Whether the element whose bytes start at offset 0 is named `name` (an ASCII name without a
 * prefix, as top-level stanzas are sent): a byte comparison, so that hooks on the path of every
 * stanza can tell a `<message/>` from an `<iq/>` without parsing.
 */
export function isElementNamed(bytes: Buffer, name: string): boolean {
  if (bytes.length < name.length + 2 || bytes[0] !== 0x3c /* < */) return false;
  for (let i = 0; i < name.length; i++) {
    if (bytes[i + 1] !== name.charCodeAt(i)) return false;
  }
  const next = bytes[name.length + 1];
  return next === 0x20 || next === 0x09 || next === 0x0a || next === 0x0d || next === 0x2f || next === 0x3e;
}

/** Which stanza the bytes of a top-level stanza are (one the stream scanner framed: `<message`, `<presence` or `<iq`). */
export function stanzaKindOf(bytes: Buffer): 'message' | 'presence' | 'iq' {
  if (isElementNamed(bytes, 'iq')) return 'iq';
  return isElementNamed(bytes, 'presence') ? 'presence' : 'message';
}
