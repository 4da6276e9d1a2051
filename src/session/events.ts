import type { Logger } from 'pino';
import { EventEmitter } from 'node:events';
import type { EndedReason, SmFailureKey } from '../sm/failures.js';
import type { LateStanzas } from './lingering-upstream.js';
import type { UnackedOutcome } from './unacked-disposal.js';

/** Why a hibernation ended: resumed, or one of the ways a session ends for good. */
export type HibernationEnd = 'resumed' | EndedReason;

/**
 * Why a session ended (the `reason` of its `session ended` line), or `resumed`: the connection's
 * client resumed an earlier session, which took the connection over.
 */
export type SessionEndReason = EndedReason | 'resumed';

/**
 * Stream-management events for integrations (push notifications, metrics), the proxy's equivalent
 * of mod_smacks' `smacks-ack-delayed`, `smacks-hibernation-start`, `smacks-hibernation-end` and
 * `smacks-hibernation-stanza-queued` hooks, and of the session's life for metrics. Each is also
 * logged by the session.
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
  /** A `<resume/>` succeeded: of a hibernating session, or of one whose old connection was still attached (`tookOver`). */
  resumed: [{ sid: string; jid: string; smId: string; replayed: number; hibernatedMs: number; tookOver: boolean }];
  /** A stream-management request was answered with `<failed/>`; `failed` is its key (README, Errors). */
  smFailed: [{ sid: string; failed: SmFailureKey }];
  /**
   * The session is over: its summary line is written. `unacked` is what became of the stanzas the
   * client had not acknowledged, `late` of those that reached it afterwards (lingering-upstream.ts),
   * `code` the error code when it ended with a stream error to the client or from the legacy server.
   */
  sessionEnded: [
    {
      sid: string;
      jid: string | undefined;
      reason: SessionEndReason;
      code: string | undefined;
      unacked: UnackedOutcome;
      late: LateStanzas | undefined;
    },
  ];
}

/**
 * One typed in-process emitter for every SM event of a proxy instance. Integrations subscribe with
 * `on`; the proxy emits with {@link SmEvents.notify}, never `emit`.
 */
export class SmEvents extends EventEmitter<SmEventMap> {
  /**
   * Calls every listener of `event` in order, each in its own try/catch: a listener that throws is
   * logged on `log` (the emitting session's logger) with the event name and does not stop the
   * other listeners nor reach the session, which emits from inside its own state changes and
   * timers (a throw there would end or crash it). `once` listeners are removed as with `emit`.
   */
  notify<K extends keyof SmEventMap>(log: Logger, event: K, ...args: SmEventMap[K]): void {
    // rawListeners: a `once` wrapper removes itself when called, as emit() does.
    for (const listener of this.rawListeners(event) as ((...a: SmEventMap[K]) => unknown)[]) {
      try {
        listener.apply(this, args);
      } catch (err) {
        log.error(
          { event, err: err instanceof Error ? err.message : String(err), stack: err instanceof Error ? err.stack : undefined },
          'SM event listener threw; ignored',
        );
      }
    }
  }
}
