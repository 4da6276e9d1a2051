import { isSmNamespace, NS } from './namespaces.js';
import type { ScannedElement } from './stream-scanner.js';

/** An SM-ID in `<resume previd/>` or `<enabled id/>`: the rest after its first 6 characters. */
const SM_ID_TAIL = /\b((?:previd|id)=(['"])[^'"]{6})[^'"]*\2/g;

/**
 * The text of an element for a `trace` log line. SASL elements (auth, challenge, response,
 * success) carry credentials or proofs: only their name and size are logged (README, Security: "Logs never contain SASL payloads").
 * SM-IDs are the only thing a resuming client names (a bearer secret of its session): shown
 * shortened, like everywhere else in the logs.
 */
export function sanitizeForLog(element: ScannedElement): string {
  if (element.ns === NS.sasl) {
    return `<${element.name} xmlns='${NS.sasl}'/> (SASL payload of ${element.bytes.length} bytes not logged)`;
  }
  const text = element.bytes.toString('utf8');
  return isSmNamespace(element.ns) ? text.replace(SM_ID_TAIL, '$1…$2') : text;
}

/** How much of a peer-chosen value (a stream header's `to`, an HTTP Origin) goes into a log line or an error text. */
const CLIP_CHARS = 64;

/** A peer-chosen value clipped for a log line or an error text: at most 64 characters, then how many were left out. */
export function clipped(value: string): string {
  return value.length <= CLIP_CHARS ? value : `${value.slice(0, CLIP_CHARS)}… (${value.length - CLIP_CHARS} more characters)`;
}
