import { NS } from './namespaces.js';
import type { ScannedElement } from './stream-scanner.js';

/**
 * The text of an element for a `trace` log line. SASL elements (auth, challenge, response,
 * success) carry credentials or proofs: only their name and size are logged (STYLE "Logs").
 */
export function sanitizeForLog(element: ScannedElement): string {
  if (element.ns === NS.sasl) {
    return `<${element.name} xmlns='${NS.sasl}'/> (SASL payload of ${element.bytes.length} bytes not logged)`;
  }
  return element.bytes.toString('utf8');
}
