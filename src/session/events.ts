import type { EndedReason } from './session-registry.js';
import { EventEmitter } from 'node:events';

/** Why a hibernation ended: resumed, or one of the ways a session ends for good. */
export type HibernationEnd = 'resumed' | EndedReason;

/**
 * Stream-management events for integrations (push notifications, metrics), the proxy's equivalent
 * of mod_smacks' `smacks-ack-delayed`, `smacks-hibernation-start`, `smacks-hibernation-end` and
 * `smacks-hibernation-stanza-queued` hooks. Each is also logged by the session.
 */
export interface SmEventMap {
  /** An `<r/>` stayed unanswered past `maxAckDelaySeconds`; the connection is then treated as dead. */
  ackDelayed: [{ sid: string; jid: string; unacked: number; waitedMs: number }];
  /** The client link ended without a stream close and the session is kept for resumption. */
  hibernationStarted: [{ sid: string; jid: string; smId: string; queued: number; timeoutMs: number }];
  /** The hibernation is over: resumed, or the session ended. */
  hibernationEnded: [{ sid: string; jid: string; smId: string; reason: HibernationEnd; hibernatedMs: number }];
  /** A stanza for the client was queued while it is away (a push trigger). */
  stanzaQueuedWhileHibernating: [{ sid: string; jid: string; smId: string; queued: number; kind: string }];
}

/** One typed in-process emitter for every SM event of a proxy instance. */
export class SmEvents extends EventEmitter<SmEventMap> {}
