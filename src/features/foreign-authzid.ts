import { parseElement } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { ErrorCode } from '../errors.js';
import type { SessionHook } from '../session/hooks.js';
import { initialNames } from '../session/sasl-identity.js';

/**
 * A SASL `<auth/>` whose authorization identity names another account than the one whose
 * credentials it carries (PLAIN `authzid`, SCRAM `a=`) is refused by the proxy, not relayed.
 *
 * RFC 6120 §6.3.8 lets a server authorize one entity to act as another; ejabberd 23.01 does it for
 * any account: `alice@example.org` as authzid with bob's user name and password logs bob in as
 * alice. Clients have no use for it (they send no authzid, or their own bare JID), and a proxy in
 * front of such a server would otherwise carry the impersonation to it. The answer is RFC 6120
 * §6.5.6 `<invalid-authzid/>`: "the initiating entity does not have permissions to authorize that
 * ID"; the client may authenticate again. An authzid equal to `user@domain` passes. DIGEST-MD5
 * carries its authzid in a later response and is not checked here (README, Compatibility).
 */
export function refuseForeignAuthzid(element: ScannedElement, domain: string): string | undefined {
  if (element.localName !== 'auth' || element.ns !== NS.sasl) return undefined;
  const auth = parseElement(element.bytes);
  const names = initialNames((auth.attrs.mechanism as string | undefined) ?? '', auth.getText());
  if (names === undefined || names.authzid === undefined || names.authzid === '') return undefined;
  if (names.authzid === `${names.authcid}@${domain}`) return undefined;
  return (
    `<failure xmlns='${NS.sasl}'><invalid-authzid/>` +
    `<text xml:lang='en'>the authorization identity must be empty or your own bare JID</text></failure>`
  );
}

/** Refuses a foreign authorization identity before the `<auth/>` reaches the legacy server. */
export const foreignAuthzidRefusal: SessionHook = {
  name: 'foreign-authzid-refusal',
  phases: ['authenticating'],
  fromClient(element, _phase, session) {
    const failure = refuseForeignAuthzid(element, session.domain ?? '');
    if (failure === undefined) return undefined;
    session.log.info({ code: ErrorCode.SASL_FOREIGN_AUTHZID }, 'SASL authorization identity of another account refused');
    return { kind: 'answer-nonza', nonza: failure };
  },
};
