import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { bounceFor } from './bounce.js';

const PING = Buffer.from(NS.ping, 'utf8');

/**
 * XEP-0199 §4.2: the legacy server pings the client; while the client is away the proxy answers
 * on its behalf, so the server keeps the session. Returns the `<iq type='result'/>` to send
 * upstream, or `undefined` when `element` is not a ping request.
 */
export function pingAnswer(element: ScannedElement): string | undefined {
  if (element.localName !== 'iq' || !element.bytes.includes(PING)) return undefined;
  const iq = parseElement(element.bytes);
  if (iq.attrs.type !== 'get' || iq.getChild('ping', NS.ping) === undefined) return undefined;
  const to = iq.attrs.from as string | undefined;
  return `<iq type='result'${to === undefined ? '' : ` to='${escapeXml(to)}'`} id='${escapeXml((iq.attrs.id as string | undefined) ?? '')}'/>`;
}

/** What becomes of a session's unacked stanzas when it ends (README, What it does). */
export type UnackedDisposal =
  /** `expiryPolicy: "drop"`: the operator's archive covers them. */
  | { readonly kind: 'dropped-by-policy'; readonly count: number }
  /** The legacy server ended the stream they would be answered on: nothing written to it is processed. */
  | { readonly kind: 'lost'; readonly count: number }
  /** Answered to their senders through the user's stream, as `bounces` (bounce.ts chooses). */
  | { readonly kind: 'answered'; readonly count: number; readonly bounces: readonly string[] };

/**
 * XEP-0198 §5: unacked stanzas of a session that ends are treated "as if sent to an unavailable
 * resource". `ownJid` is the user's full JID when its upstream stream can still carry answers,
 * `undefined` when it cannot.
 */
export function unackedDisposal(entries: readonly Buffer[], expiryPolicy: 'bounce' | 'drop', ownJid: string | undefined): UnackedDisposal {
  if (expiryPolicy === 'drop') return { kind: 'dropped-by-policy', count: entries.length };
  if (ownJid === undefined) return { kind: 'lost', count: entries.length };
  const bounces: string[] = [];
  for (const bytes of entries) {
    const bounce = bounceFor(bytes, ownJid);
    if (bounce !== undefined) bounces.push(bounce);
  }
  return { kind: 'answered', count: entries.length, bounces };
}
