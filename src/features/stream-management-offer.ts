import { xml } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';
import type { SessionHook } from '../session/hooks.js';

/**
 * The proxy offers `<sm/>` in both namespaces once the client has authenticated (XEP-0198 §2: the
 * feature is offered once stanzas can flow; Dino resumes as soon as any features contain `<sm/>`,
 * so never before authentication). The legacy server's own offers are removed (features.ts).
 */
export const streamManagementOffer: SessionHook = {
  name: 'stream-management-offer',
  advertise: (phase) => (phase === 'post-auth' ? [xml('sm', { xmlns: NS.sm2 }), xml('sm', { xmlns: NS.sm3 })] : []),
};
