import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { SessionHook } from '../session/hooks.js';

/**
 * XEP-0078 non-SASL authentication through the proxy is refused, and the legacy server's offer of
 * it is removed from the features (features.ts). It authenticates and binds in one iq, with no SASL
 * exchange and no stream restart, so a later `<resume/>` could not be authenticated on a temporary
 * stream the way the proxy checks every resumption (XEP-0198 §5: "the client MUST authenticate"),
 * and XEP-0078 itself is obsolete in favour of SASL (RFC 6120 §6), which every legacy server the
 * proxy fronts offers as well.
 *
 * Returns the error answer to a client's `jabber:iq:auth` get or set (XEP-0078 §3: a server that
 * does not offer the protocol answers `<service-unavailable/>`), or `undefined` for anything else.
 */
export function refuseLegacyAuth(element: ScannedElement): string | undefined {
  // Parsed, not searched for as bytes: `jabber:iq&#58;auth` is the same namespace. Before
  // authentication iqs are few (this, in-band registration), so the parse costs nothing that matters.
  if (element.localName !== 'iq') return undefined;
  const iq = parseElement(element.bytes);
  const type = iq.attrs.type as string | undefined;
  if ((type !== 'get' && type !== 'set') || iq.getChild('query', NS.iqAuth) === undefined) return undefined;
  const id = iq.attrs.id as string | undefined;
  return (
    `<iq type='error'${id === undefined ? '' : ` id='${escapeXml(id)}'`}>` +
    `<error type='cancel'><service-unavailable xmlns='${NS.stanzas}'/>` +
    `<text xmlns='${NS.stanzas}' xml:lang='en'>XEP-0078 non-SASL authentication is not available through this proxy: use SASL</text>` +
    '</error></iq>'
  );
}

/** Answers XEP-0078 requests before authentication; afterwards the legacy server has its say. */
export const legacyAuthRefusal: SessionHook = {
  name: 'legacy-auth-refusal',
  phases: ['authenticating'],
  fromClient(element, _phase, session) {
    const refusal = refuseLegacyAuth(element);
    if (refusal === undefined) return undefined;
    session.log.info('XEP-0078 non-SASL authentication refused');
    return { kind: 'answer-stanza', stanza: refusal };
  },
};
