/**
 * The rules a name in a start tag must follow beyond the bytes the scanner checks per byte: the
 * characters above ASCII (XML 1.0 Fifth Edition §2.3) and the shape of a qualified name
 * (Namespaces in XML 1.0 §4). The scanner's byte tables accept every byte of a multi-byte
 * character and the colon anywhere, so that the common, ASCII, unprefixed name costs nothing; the
 * scanner calls these only for a name that has a byte above ASCII or a colon in it.
 */

/** XML 1.0 (Fifth Edition) §2.3 [4] NameStartChar, above ASCII. */
function isWideNameStartChar(c: number): boolean {
  return (
    (c >= 0xc0 && c <= 0xd6) ||
    (c >= 0xd8 && c <= 0xf6) ||
    (c >= 0xf8 && c <= 0x2ff) ||
    (c >= 0x370 && c <= 0x37d) ||
    (c >= 0x37f && c <= 0x1fff) ||
    (c >= 0x200c && c <= 0x200d) ||
    (c >= 0x2070 && c <= 0x218f) ||
    (c >= 0x2c00 && c <= 0x2fef) ||
    (c >= 0x3001 && c <= 0xd7ff) ||
    (c >= 0xf900 && c <= 0xfdcf) ||
    (c >= 0xfdf0 && c <= 0xfffd) ||
    (c >= 0x10000 && c <= 0xeffff)
  );
}

/** XML 1.0 (Fifth Edition) §2.3 [4a] NameChar, above ASCII. */
function isWideNameChar(c: number): boolean {
  return isWideNameStartChar(c) || c === 0xb7 || (c >= 0x300 && c <= 0x36f) || (c >= 0x203f && c <= 0x2040);
}

/** [4] NameStartChar without the colon (an NCName's first character), for any code point. */
function isNcNameStartChar(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || (c >= 0x80 && isWideNameStartChar(c));
}

/**
 * Why `name` (a name the scanner's byte tables accepted) is not a qualified name, or `undefined`
 * when it is one: every character above ASCII a name character, at the start a name start
 * character (XML 1.0 §2.3 [5] Name), and at most one colon, with a non-empty prefix and a local
 * part that starts like a name (Namespaces in XML 1.0 §4 [7] QName, §7: "All element and attribute
 * names contain either zero or one colon").
 */
export function qualifiedNameProblem(name: string): string | undefined {
  let colons = 0;
  let atStart = true;
  for (const ch of name) {
    const c = ch.codePointAt(0)!;
    if (c === 0x3a) {
      if (atStart) return `'${name}' has an empty prefix or local part (Namespaces in XML 1.0 §4)`;
      if (++colons > 1) return `'${name}' has more than one colon (Namespaces in XML 1.0 §7)`;
      atStart = true;
      continue;
    }
    if (atStart ? !isNcNameStartChar(c) : c >= 0x80 && !isWideNameChar(c)) {
      const where = atStart ? 'to start a name or local part' : 'in a name';
      return `'${name}' has U+${c.toString(16).toUpperCase().padStart(4, '0')}, not allowed ${where} (XML 1.0 §2.3)`;
    }
    atStart = false;
  }
  if (atStart) return `'${name}' has an empty prefix or local part (Namespaces in XML 1.0 §4)`;
  return undefined;
}
