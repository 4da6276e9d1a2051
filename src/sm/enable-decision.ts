import { randomBytes } from 'node:crypto';

/**
 * Pure decisions on the parameters of `<enable/>` and `<resume/>` (XEP-0198 §3 and §5).
 */

/** Decimal digits only, as in the h parser: no sign, whitespace, fraction or exponent. */
const DIGITS = /^[0-9]+$/;

/**
 * Parses the `resume` attribute of `<enable/>`.
 *
 * XEP-0198 §3 (https://xmpp.org/extensions/xep-0198.html#enable): `resume` is "a boolean 'resume'
 * attribute, which defaults to false"; for xs:boolean "the allowable lexical representations ...
 * are the strings "0" and "false" for the concept 'false' and the strings "1" and "true" for the
 * concept 'true'; implementations MUST support both styles".
 *
 * @returns true for `'true'` and `'1'`; false for `'false'`, `'0'` and an absent attribute;
 *   `'invalid'` for anything else (case and whitespace matter: `'True'` and `' 1'` are invalid).
 */
export function parseResumeFlag(value: string | undefined): boolean | 'invalid' {
  switch (value) {
    case 'true':
    case '1':
      return true;
    case undefined:
    case 'false':
    case '0':
      return false;
    default:
      return 'invalid';
  }
}

/**
 * The hibernation time granted, in seconds.
 *
 * XEP-0198 §3: "The <enable/> element MAY include a 'max' attribute to specify the client's
 * preferred maximum resumption time in seconds" (an xs:positiveInteger, §13). A valid client `max`
 * (digits only, value ≥ 1; leading zeros allowed) is honoured up to `maxSeconds`; an absent or
 * invalid one (`'0'`, `'-5'`, `'1.5'`, `' 30'`, `''`) gives `defaultSeconds`. The result never
 * exceeds `maxSeconds`, even if `defaultSeconds` does. A `defaultSeconds` of 0 is the operator
 * turning resumption off (config `hibernationSeconds: 0`): no client `max` turns it back on.
 *
 * @param clientMax the `max` attribute of `<enable/>`, if any.
 * @param defaultSeconds hibernation time when the client states no preference.
 * @param maxSeconds the most the proxy grants.
 */
export function negotiateMax(clientMax: string | undefined, defaultSeconds: number, maxSeconds: number): number {
  if (defaultSeconds === 0) return 0;
  if (clientMax !== undefined && DIGITS.test(clientMax)) {
    // Very long digit strings become huge numbers or Infinity and are capped below.
    const wanted = Number(clientMax);
    if (wanted >= 1) return Math.min(wanted, maxSeconds);
  }
  return Math.min(defaultSeconds, maxSeconds);
}

/**
 * A new SM-ID for `<enabled id=…/>`.
 *
 * XEP-0198 §5: "The SM-ID MUST NOT be reused for simultaneous or subsequent sessions"; it is also
 * the only thing a resuming client names, so it must be unguessable. 18 random bytes (144 bits)
 * from the OS CSPRNG, base64url without padding: 24 characters, safe in an XML attribute.
 */
export function newSmId(): string {
  return randomBytes(18).toString('base64url');
}

/** SM-IDs are secrets of their session: logs carry only a prefix. */
export function shortId(id: string): string {
  return id.slice(0, 6);
}
