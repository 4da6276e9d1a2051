import type { Element } from '../xml/element.js';
import { xml } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/** Which stream the features belong to: before SASL success, or after the SASL restart. */
export type FeaturesPhase = 'pre-auth' | 'post-auth';

/** What the rewrite found that an operator must hear about (DESIGN §4). */
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
 * - SASL2 `<authentication/>`: see below.
 */
function isRemoved(child: Element): boolean {
  const ns = child.attrs.xmlns as string | undefined;
  if (child.name === 'starttls' && ns === NS.tls) return true;
  if (child.name === 'compression' && ns === NS.compressFeature) return true;
  if (child.name === 'sm' && ns !== undefined && ns.startsWith('urn:xmpp:sm:')) return true;
  if (ns === NS.smDraft) return true;
  // SASL2 (XEP-0388), and Bind2/FAST within it, end authentication without the stream restart
  // the proxy follows and would need inline stream management: offer classic SASL only (clients
  // then resume with a classic <resume/>, as Conversations does when SASL2 has no inline SM).
  if (ns === NS.sasl2) return true;
  return false;
}

/**
 * Rewrites the legacy server's `<stream:features/>` for the client (DESIGN §4). SASL mechanisms
 * pass unchanged: editing them would trip clients that pin mechanisms or check XEP-0474 hashes.
 * After authentication the proxy adds `<sm/>` in both namespaces (XEP-0198 §2: the feature is
 * offered once stanzas can flow; Dino resumes as soon as any features contain `<sm/>`, so never
 * before authentication).
 */
export function rewriteFeatures(upstream: Element, phase: FeaturesPhase): RewrittenFeatures {
  const features = xml('stream:features', {});
  const channelBindingMechanisms: string[] = [];
  let channelBindingTypes = false;
  for (const child of upstream.getChildElements()) {
    if (isRemoved(child)) continue;
    if (child.name === 'mechanisms' && child.attrs.xmlns === NS.sasl) {
      for (const mechanism of child.getChildren('mechanism')) {
        const name = mechanism.getText().trim();
        if (name.endsWith('-PLUS')) channelBindingMechanisms.push(name);
      }
    }
    if (child.attrs.xmlns === NS.saslChannelBinding) channelBindingTypes = true;
    features.cnode(child);
  }
  if (phase === 'post-auth') {
    features.cnode(xml('sm', { xmlns: NS.sm2 }));
    features.cnode(xml('sm', { xmlns: NS.sm3 }));
  }
  return { features, findings: { channelBindingMechanisms, channelBindingTypes } };
}

/** The proxy's own pre-TLS features (RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here). */
export const STARTTLS_REQUIRED_FEATURES =
  `<stream:features><starttls xmlns='${NS.tls}'><required/></starttls></stream:features>`;
