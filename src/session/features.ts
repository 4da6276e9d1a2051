import type { Element } from '../xml/element.js';
import { xml } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/** Which stream the features belong to: before SASL success, or after the SASL restart. */
export type FeaturesPhase = 'pre-auth' | 'post-auth';

/** What the rewrite found that an operator must hear about (README, Security). */
export interface FeaturesFindings {
  /** SASL mechanisms ending in -PLUS: channel binding cannot cross a TLS-terminating proxy. */
  readonly channelBindingMechanisms: readonly string[];
  /** The upstream advertised XEP-0440 `<sasl-channel-binding/>`. */
  readonly channelBindingTypes: boolean;
}

export interface RewrittenFeatures {
  readonly features: Element;
  readonly findings: FeaturesFindings;
}

/**
 * Upstream features the proxy removes in every phase:
 * - `<starttls/>`: TLS towards the client ends at the proxy; the hop is the operator's business.
 * - `<compression/>` (XEP-0138): the proxy must see plain XML to frame and count stanzas.
 * - `<sm/>` of any version and jabberd2's draft `<ack/>`: the proxy owns stream management.
 * - XEP-0078 `<auth/>` and jabberd2's `<unbind/>`: see below.
 * - SASL2 `<authentication/>`: see below.
 */
function isRemoved(child: Element): boolean {
  // Resolved, not read from the child's own attributes: jabberd2 2.7 writes `<ack:ack/>` with the
  // prefix declared on its stream header (made explicit on the features element as it was framed).
  const ns = child.getNS() as string | undefined;
  const name = child.getName();
  if (name === 'starttls' && ns === NS.tls) return true;
  if (name === 'compression' && ns === NS.compressFeature) return true;
  if (name === 'sm' && ns !== undefined && ns.startsWith('urn:xmpp:sm:')) return true;
  if (ns === NS.smDraft) return true;
  // XEP-0078 non-SASL authentication (jabberd2 offers it): it binds without SASL or a stream
  // restart, so a resumption could not authenticate the way XEP-0198 §5 requires; the proxy
  // refuses it (legacy-auth.ts) and does not offer it. Every legacy server here also offers SASL.
  if (name === 'auth' && ns === NS.iqAuthFeature) return true;
  // jabberd2's `<unbind/>` (from a draft of multiple resources per stream): the proxy's session is
  // one stream with one bound resource, whose full JID it tracks for bounces and resumption.
  if (name === 'unbind' && ns === NS.bind) return true;
  // SASL2 (XEP-0388), and Bind2/FAST within it, end authentication without the stream restart
  // the proxy follows and would need inline stream management: offer classic SASL only (clients
  // then resume with a classic <resume/>, as Conversations does when SASL2 has no inline SM).
  if (ns === NS.sasl2) return true;
  return false;
}

/**
 * Rewrites the legacy server's `<stream:features/>` for the client. SASL mechanisms
 * pass unchanged: editing them would trip clients that pin mechanisms or check XEP-0474 hashes.
 * `additions` are the proxy's own offers (the session hooks' `advertise`, such as `<sm/>` after
 * authentication), appended after what is kept.
 */
export function rewriteFeatures(upstream: Element, additions: readonly Element[]): RewrittenFeatures {
  // Declarations the upstream features element carries (made explicit from the server's stream
  // header when its children use them) stay, so that the children kept can still rely on them.
  const declarations: Record<string, string> = {};
  for (const [attr, value] of Object.entries(upstream.attrs as Record<string, unknown>)) {
    if (attr.startsWith('xmlns:') && typeof value === 'string') declarations[attr] = value;
  }
  const features = xml('stream:features', declarations);
  const channelBindingMechanisms: string[] = [];
  let channelBindingTypes = false;
  for (const child of upstream.getChildElements()) {
    if (isRemoved(child)) continue;
    if (child.is('mechanisms', NS.sasl)) {
      for (const mechanism of child.getChildren('mechanism')) {
        const name = mechanism.getText().trim();
        if (name.endsWith('-PLUS')) channelBindingMechanisms.push(name);
      }
    }
    if (child.getNS() === NS.saslChannelBinding) channelBindingTypes = true;
    features.cnode(child);
  }
  for (const added of additions) features.cnode(added);
  return { features, findings: { channelBindingMechanisms, channelBindingTypes } };
}

/** The proxy's own pre-TLS features (RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here). */
export const STARTTLS_REQUIRED_FEATURES = `<stream:features><starttls xmlns='${NS.tls}'><required/></starttls></stream:features>`;
