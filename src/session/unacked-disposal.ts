import type { Logger } from 'pino';
import { bounceFor } from './bounce.js';

/** What becomes of a session's unacked stanzas when it ends (README, What it does). */
export type UnackedDisposal =
  /** `expiryPolicy: "drop"`: the operator's archive covers them. */
  | { readonly kind: 'dropped-by-policy'; readonly count: number }
  /** The legacy server ended the stream they would be answered on: nothing written to it is processed. */
  | { readonly kind: 'lost'; readonly count: number }
  /**
   * Answered to their senders through the user's stream, as `bounces` (bounce.ts chooses);
   * `answered` holds the stanzas that got one, in order.
   */
  | { readonly kind: 'answered'; readonly count: number; readonly bounces: readonly string[]; readonly answered: readonly Buffer[] };

/**
 * XEP-0198 §5: unacked stanzas of a session that ends are treated "as if sent to an unavailable
 * resource". `ownJid` is the user's full JID when its upstream stream can still carry answers,
 * `undefined` when it cannot.
 */
export function unackedDisposal(entries: readonly Buffer[], expiryPolicy: 'bounce' | 'drop', ownJid: string | undefined): UnackedDisposal {
  if (expiryPolicy === 'drop') return { kind: 'dropped-by-policy', count: entries.length };
  if (ownJid === undefined) return { kind: 'lost', count: entries.length };
  const bounces: string[] = [];
  const answered: Buffer[] = [];
  for (const bytes of entries) {
    const bounce = bounceFor(bytes, ownJid);
    if (bounce === undefined) continue;
    bounces.push(bounce);
    answered.push(bytes);
  }
  return { kind: 'answered', count: entries.length, bounces, answered };
}

/**
 * How many unacked stanzas were bounced, dropped without an answer (none needed, or by policy),
 * lost, or handed over to a new session of the same client (a login of the resource, or the
 * stream of a resume that could not go on).
 */
export interface UnackedOutcome {
  readonly bounced: number;
  readonly dropped: number;
  readonly lost: number;
  readonly handedOver: number;
}

export const NOTHING_UNACKED: UnackedOutcome = { bounced: 0, dropped: 0, lost: 0, handedOver: 0 };

/** Where unacked stanzas can still be answered: the user's upstream stream, and the full JID bound on it. */
export interface AnswerRoute {
  readonly upstream: { readonly ended: boolean; send(data: string): unknown };
  readonly jid: string;
}

/**
 * Answers a session's unacked stanzas (`entries`, in order) on the user's behalf, or drops them
 * per `expiryPolicy`, and logs what became of them; `answered` holds the stanzas that got an
 * answer. `via` is undefined when the legacy server's stream is gone or going: nothing written to
 * it would be processed, so the stanzas are lost and the senders get no error; that is a warning.
 */
export function disposeUnacked(
  entries: readonly Buffer[],
  expiryPolicy: 'bounce' | 'drop',
  via: AnswerRoute | undefined,
  log: Logger,
): { readonly outcome: UnackedOutcome; readonly answered: readonly Buffer[] } {
  if (entries.length === 0) return { outcome: NOTHING_UNACKED, answered: [] };
  const usable = via !== undefined && !via.upstream.ended ? via : undefined;
  const disposal = unackedDisposal(entries, expiryPolicy, usable?.jid);
  switch (disposal.kind) {
    case 'dropped-by-policy':
      log.info({ dropped: disposal.count }, 'unacked stanzas dropped (expiryPolicy drop)');
      return { outcome: { ...NOTHING_UNACKED, dropped: disposal.count }, answered: [] };
    case 'lost':
      log.warn(
        { dropped: disposal.count },
        'unacked stanzas dropped unanswered: the legacy server ended the stream they would be bounced on',
      );
      return { outcome: { ...NOTHING_UNACKED, lost: disposal.count }, answered: [] };
    case 'answered':
      for (const bounce of disposal.bounces) usable?.upstream.send(bounce);
      log.info({ unacked: disposal.count, bounced: disposal.bounces.length }, 'unacked stanzas answered to their senders');
      return {
        outcome: { ...NOTHING_UNACKED, bounced: disposal.bounces.length, dropped: disposal.count - disposal.bounces.length },
        answered: disposal.answered,
      };
  }
}
