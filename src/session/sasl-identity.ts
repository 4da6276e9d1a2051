import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { parseElement } from '../xml/element.js';

/**
 * The account a client's SASL exchange names, read from the relayed `<auth/>` as it passes (never
 * logged, never kept beyond the account name), for one purpose: to confirm the identity of a
 * resuming client without binding a second resource on the legacy server.
 *
 * That check (XEP-0198 §5: "the server MUST verify that the resuming entity is the same as the
 * original entity") otherwise binds a throwaway resource on the new connection's upstream stream
 * and compares bare JIDs. On a server that allows one resource per account (ejabberd's
 * `max_user_sessions: 1`), that bind replaces the very session being resumed. The SASL exchange
 * answers the same question with no side effect, but only where it cannot name a wrong account:
 *
 * - Only mechanisms whose initial response carries the user name the server checks the
 *   credentials of (RFC 6120 §6.3.8: for them the authentication identity is the localpart):
 *   PLAIN (RFC 4616 `authcid`) and SCRAM-* (RFC 5802 `n=`), mechanism names compared exactly.
 *   DIGEST-MD5 names the user in a later response that servers parse in their own ways (RFC 2831
 *   leaves room: unquoted values, repeated directives), EXTERNAL and ANONYMOUS name none, and
 *   anything else is unknown: all of them claim nothing.
 * - An authorization identity (PLAIN `authzid`, SCRAM `a=`) is honoured differently by servers
 *   (Prosody and jabberd2 ignore it, others may act on it): the exchange claims an account only
 *   when there is none, or when it is exactly `authcid@domain`.
 * - The initial response must be canonical base64 (RFC 6120 §6.4.2: anything else is refused by
 *   the server, so it cannot name the account the server authenticated).
 * - The claim only counts once the server said `<success/>` to that one exchange (see `phase`),
 *   and only when `authcid@domain` is *exactly* the bare JID the server bound for the hibernated
 *   session: a bound JID is canonical, and a user name that equals a canonical localpart byte for
 *   byte names that account. Anything else (another spelling, `ALICE` for `alice`) falls back to
 *   the bind check, which asks the server.
 */
/** What a log line may say of a SASL attempt: the mechanism, and the user name where the mechanism shows it (PLAIN, SCRAM-*). */
export interface SaslAttempt {
  readonly mechanism: string;
  readonly username: string | undefined;
}

export class SaslIdentity {
  /**
   * SASL is one exchange at a time (RFC 6120 §6.4): after `<auth/>` the client may only send
   * `<response/>` or `<abort/>` until the server answers. A second `<auth/>` (pipelined) or an
   * `<abort/>` makes the exchange unclear until the server's `<failure/>`: nothing is claimed then,
   * so a `<success/>` can never be matched with a name from another exchange.
   */
  private phase:
    { readonly name: 'idle' } | { readonly name: 'exchanging'; readonly claimed: string | undefined } | { readonly name: 'unclear' } = {
    name: 'idle',
  };

  /** The last `<auth/>`, for the log line of a failure. */
  private attempt: SaslAttempt | undefined;

  constructor(private readonly domain: string) {}

  /** The bare JID the exchange names, or `undefined` when it names none for sure. Read after `<success/>`. */
  get bareJid(): string | undefined {
    return this.phase.name === 'exchanging' ? this.phase.claimed : undefined;
  }

  /** Reads a client element relayed during authentication: `<auth/>` and `<abort/>` matter. */
  fromClient(element: ScannedElement): void {
    if (element.ns !== NS.sasl) return;
    if (element.localName === 'auth') {
      if (this.phase.name !== 'idle') {
        this.phase = { name: 'unclear' };
        return;
      }
      const auth = parseElement(element.bytes);
      const mechanism = (auth.attrs.mechanism as string | undefined) ?? '';
      this.attempt = { mechanism, username: initialNames(mechanism, auth.getText())?.authcid };
      this.phase = { name: 'exchanging', claimed: this.claim(mechanism, auth.getText()) };
      return;
    }
    if (element.localName === 'abort') this.phase = { name: 'unclear' };
  }

  /** The server's `<failure/>` ended the exchange: the next `<auth/>` starts afresh. Returns the attempt that failed. */
  onFailure(): SaslAttempt | undefined {
    this.phase = { name: 'idle' };
    const attempt = this.attempt;
    this.attempt = undefined;
    return attempt;
  }

  private claim(mechanism: string, base64: string): string | undefined {
    const names = initialNames(mechanism, base64);
    if (names === undefined) return undefined;
    const { authcid, authzid } = names;
    if (authcid === '' || authcid.includes('@') || authcid.includes('/')) return undefined;
    const account = `${authcid}@${this.domain}`;
    return authzid === undefined || authzid === '' || authzid === account ? account : undefined;
  }
}

/**
 * The user names in a PLAIN or SCRAM-* initial response (canonical base64, RFC 6120 §6.4.2), or
 * `undefined` for any other mechanism or a response that does not parse.
 */
export function initialNames(mechanism: string, base64: string): { authcid: string; authzid: string | undefined } | undefined {
  const text = base64.trim();
  if (text === '' || text === '=') return undefined;
  const decoded = Buffer.from(text, 'base64');
  if (decoded.toString('base64') !== text) return undefined;
  return namesIn(mechanism, decoded.toString('utf8'));
}

function namesIn(mechanism: string, message: string): { authcid: string; authzid: string | undefined } | undefined {
  if (mechanism === 'PLAIN') {
    // RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
    const parts = message.split('\0');
    if (parts.length !== 3) return undefined;
    return { authzid: parts[0], authcid: parts[1]! };
  }
  if (/^SCRAM-[A-Z0-9-]+$/.test(mechanism)) {
    // RFC 5802 §7: client-first-message = gs2-header "n=" saslname ",r=" c-nonce; gs2-header =
    // gs2-cbind-flag "," [ "a=" saslname ] ","; saslname escapes "," as "=2C" and "=" as "=3D".
    const match = /^(?:n|y|p=[A-Za-z0-9.-]+),(?:a=([^,]*))?,n=([^,]*),r=/.exec(message);
    if (match === null) return undefined;
    return { authzid: match[1] === undefined ? undefined : unescapeSaslname(match[1]), authcid: unescapeSaslname(match[2]!) };
  }
  return undefined;
}

function unescapeSaslname(name: string): string {
  return name.replaceAll('=2C', ',').replaceAll('=3D', '=');
}
