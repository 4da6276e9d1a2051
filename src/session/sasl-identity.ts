import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { parseElement } from '../xml/element.js';

/**
 * The account a client's SASL exchange names, read from the relayed SASL elements as they pass
 * (never logged, never kept beyond the account name), for one purpose: to confirm the identity of
 * a resuming client without binding a second resource on the legacy server.
 *
 * That check (XEP-0198 §5: "the server MUST verify that the resuming entity is the same as the
 * original entity") otherwise binds a throwaway resource on the new connection's upstream stream
 * and compares bare JIDs. On a server that allows one resource per account (ejabberd's
 * `max_user_sessions: 1`), that bind replaces the very session being resumed. The SASL exchange
 * answers the same question with no side effect, where it can never accept a wrong account:
 *
 * - Only mechanisms whose messages carry a simple user name (RFC 6120 §6.3.8: for them the
 *   authentication identity is the localpart): PLAIN (RFC 4616), SCRAM-* (RFC 5802 `n=`),
 *   DIGEST-MD5 (RFC 2831 `username=`). EXTERNAL, ANONYMOUS and anything unknown claim nothing.
 * - An authorization identity (PLAIN authzid, SCRAM `a=`, DIGEST-MD5 `authzid=`) makes the session
 *   that account; it is used when it is a bare JID, and claims nothing otherwise.
 * - The claim only counts once the server said `<success/>` to that one exchange (see `phase`),
 *   and only when `localpart@domain` is *exactly* the bare JID the server bound for the hibernated
 *   session: a bound JID is canonical, and a user name that equals a canonical localpart
 *   byte for byte names that account. Anything else (another spelling, `ALICE` for `alice`) falls
 *   back to the bind check, which asks the server.
 */
export class SaslIdentity {
  /**
   * SASL is one exchange at a time (RFC 6120 §6.4): after `<auth/>` the client may only send
   * `<response/>` or `<abort/>` until the server answers. A second `<auth/>` (pipelined) or an
   * `<abort/>` makes the exchange unclear until the server's `<failure/>`: nothing is claimed then,
   * so a `<success/>` can never be matched with a name from another exchange.
   */
  private phase: { readonly name: 'idle' } | { readonly name: 'exchanging'; readonly mechanism: string; claimed: string | undefined } | { readonly name: 'unclear' } = { name: 'idle' };

  constructor(private readonly domain: string) {}

  /** The bare JID the exchange names, or `undefined` when it names none for sure. Read after `<success/>`. */
  get bareJid(): string | undefined {
    return this.phase.name === 'exchanging' ? this.phase.claimed : undefined;
  }

  /** Reads a client element relayed during authentication: `<auth/>`, `<response/>`, `<abort/>`. */
  fromClient(element: ScannedElement): void {
    if (element.ns !== NS.sasl) return;
    const phase = this.phase;
    switch (element.localName) {
      case 'auth': {
        if (phase.name !== 'idle') {
          this.phase = { name: 'unclear' };
          return;
        }
        const auth = parseElement(element.bytes);
        const mechanism = ((auth.attrs.mechanism as string | undefined) ?? '').toUpperCase();
        this.phase = { name: 'exchanging', mechanism, claimed: this.read(mechanism, auth.getText()) };
        return;
      }
      case 'response':
        if (phase.name === 'exchanging' && phase.mechanism === 'DIGEST-MD5' && phase.claimed === undefined) {
          phase.claimed = this.read(phase.mechanism, parseElement(element.bytes).getText());
        }
        return;
      case 'abort':
        this.phase = { name: 'unclear' };
        return;
    }
  }

  /** The server's `<failure/>` ended the exchange: the next `<auth/>` starts afresh. */
  onFailure(): void {
    this.phase = { name: 'idle' };
  }

  private read(mechanism: string, base64: string): string | undefined {
    const text = base64.trim();
    if (text === '' || text === '=') return undefined;
    const names = namesIn(mechanism, Buffer.from(text, 'base64').toString('utf8'));
    return names === undefined ? undefined : this.account(names);
  }

  private account({ authcid, authzid }: { authcid: string; authzid: string | undefined }): string | undefined {
    if (authzid !== undefined && authzid !== '') {
      // An authorization identity is a JID (RFC 6120 §6.3.8); only a bare one names an account.
      return /^[^@/]+@[^@/]+$/.test(authzid) ? authzid : undefined;
    }
    if (authcid === '' || authcid.includes('@') || authcid.includes('/')) return undefined;
    return `${authcid}@${this.domain}`;
  }
}

function namesIn(mechanism: string, message: string): { authcid: string; authzid: string | undefined } | undefined {
  if (mechanism === 'PLAIN') {
    // RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
    const parts = message.split('\0');
    if (parts.length !== 3) return undefined;
    return { authzid: parts[0], authcid: parts[1]! };
  }
  if (mechanism.startsWith('SCRAM-')) {
    // RFC 5802 §7: client-first-message = gs2-header "n=" saslname ",r=" c-nonce; gs2-header =
    // gs2-cbind-flag "," [ "a=" saslname ] ","; saslname escapes "," as "=2C" and "=" as "=3D".
    const match = /^(?:n|y|p=[A-Za-z0-9.-]+),(?:a=([^,]*))?,n=([^,]*),/.exec(message);
    if (match === null) return undefined;
    return { authzid: match[1] === undefined ? undefined : unescapeSaslname(match[1]), authcid: unescapeSaslname(match[2]!) };
  }
  if (mechanism === 'DIGEST-MD5') {
    // RFC 2831 §2.1.2: the digest-response carries username="..." and, optionally, authzid="...".
    const username = digestDirective(message, 'username');
    if (username === undefined) return undefined;
    return { authcid: username, authzid: digestDirective(message, 'authzid') };
  }
  return undefined;
}

function unescapeSaslname(name: string): string {
  return name.replaceAll('=2C', ',').replaceAll('=3D', '=');
}

/** A quoted directive of a DIGEST-MD5 response (RFC 2831 §7.2 quoted-string, `\` escapes). */
function digestDirective(message: string, key: string): string | undefined {
  const match = new RegExp(`(?:^|,)\\s*${key}\\s*=\\s*"((?:[^"\\\\]|\\\\.)*)"`).exec(message);
  return match === null ? undefined : match[1]!.replace(/\\(.)/g, '$1');
}
