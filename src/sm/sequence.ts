/**
 * Stream-management counters modulo 2^32.
 *
 * XEP-0198 §4 (https://xmpp.org/extensions/xep-0198.html#acking): "the value of 'h' SHALL be reset
 * from 2^32-1 back to zero (rather than being incremented to 2^32)". Every counter, sum and
 * comparison in `src/sm/` goes through these functions, so no caller compares two counters with
 * `<` directly: on the circle of 2^32 values, "later" only means "a short distance ahead".
 *
 * All functions take and return sequence values: integers in [0, 2^32 - 1] (see {@link isSeq}).
 * They do not validate their arguments, because they sit on the per-stanza path; values that come
 * from the wire go through {@link parseH} first.
 */

/** Largest sequence value, 2^32 - 1. The next one is 0. */
export const MAX_SEQ = 0xffff_ffff;

/** True if `n` is a sequence value: an integer in [0, 2^32 - 1]. */
export function isSeq(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= MAX_SEQ;
}

/**
 * The value after `n`: (n + 1) mod 2^32, so `nextSeq(4294967295) === 0` (XEP-0198 §4).
 */
export function nextSeq(n: number): number {
  return (n + 1) >>> 0;
}

/**
 * `n` advanced by `k` steps: (n + k) mod 2^32. `k` must be a non-negative integer below 2^53 - 2^32.
 */
export function addSeq(n: number, k: number): number {
  // `>>> 0` is ToUint32: exact reduction mod 2^32 for any integer below 2^53.
  return (n + k) >>> 0;
}

/**
 * How many steps forward from `from` reach `to`: (to - from) mod 2^32, in [0, 2^32).
 * `seqDistance(4294967295, 0) === 1`; `seqDistance(1, 0) === 4294967295`.
 */
export function seqDistance(from: number, to: number): number {
  return (to - from) >>> 0;
}

/** Decimal digits only: no sign, no whitespace, no radix prefix, no fraction or exponent. */
const DIGITS = /^[0-9]+$/;

/**
 * Parses an `h` attribute (of `<a/>`, `<resume/>`, `<resumed/>`, `<failed/>`).
 *
 * XEP-0198 §13 (schema): `h` is an xs:unsignedInt. Accepted: one or more ASCII decimal digits
 * whose value is at most 4294967295; leading zeros are allowed (`'01'` is 1, as in the xs:unsignedInt lexical
 * space). Everything else gives `undefined`, which the caller answers with `invalid-xml`
 * (`ErrorCode.SM_INVALID_H`): the empty string, an absent attribute, signs
 * (`'-1'`, `'+1'`), whitespace (`' 1'`), fractions (`'1.0'`), exponents, hex (`'0x1'`) and values
 * above 2^32 - 1.
 *
 * Deliberately stricter than the XML Schema lexical space, which would also accept a `+` sign,
 * `-0` and surrounding whitespace (xs:unsignedInt's whiteSpace facet is "collapse"). If a client
 * turns out to send those, relax this here, in one place, with a COMPAT note.
 */
export function parseH(value: string | undefined): number | undefined {
  if (value === undefined || !DIGITS.test(value)) return undefined;
  // Any digit string converts exactly up to 2^53; longer ones exceed MAX_SEQ either way
  // (a string of a thousand digits becomes a huge number or Infinity, never a small one).
  const n = Number(value);
  return n <= MAX_SEQ ? n : undefined;
}
