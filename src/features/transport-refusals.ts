import { NS } from '../xml/namespaces.js';
import type { SessionHook } from '../session/hooks.js';

/**
 * What a client may ask of the transport that the proxy has already settled: TLS ends at the proxy
 * (the STARTTLS offer happened on the proxy's own pre-TLS features), and compression is never
 * offered because the proxy must see plain XML to frame and count stanzas (features.ts removes the
 * legacy server's offers of both).
 */
export const transportRefusals: SessionHook = {
  name: 'transport-refusals',
  fromClient(element) {
    if (element.localName === 'starttls' && element.ns === NS.tls) {
      // RFC 6120 §5.4.2.2: the failure case, after which the stream closes.
      return { kind: 'answer-nonza', nonza: `<failure xmlns='${NS.tls}'/>`, thenClose: 'client asked for STARTTLS twice' };
    }
    if (element.localName === 'compress' && element.ns === NS.compress) {
      // XEP-0138 §6: the method is not supported; the stream goes on uncompressed.
      return { kind: 'answer-nonza', nonza: `<failure xmlns='${NS.compress}'><unsupported-method/></failure>` };
    }
    return undefined;
  },
};
