import { ErrorCode, StreamError } from '../errors.js';
import { AckPolicy } from './ack-policy.js';
import { negotiateMax, newSmId, parseResumeFlag } from './enable-decision.js';
import { InboundCounter } from './inbound-counter.js';
import type { QueueBudget } from './queue-budget.js';
import { UnackedQueue, type PushResult, type UnackedQueueSnapshot } from './unacked-queue.js';
import { parseH } from './sequence.js';
import { NS, type SmNamespace } from '../xml/namespaces.js';

/** Stream-management settings, from config `streamManagement` (durations in ms here). */
export interface SmSettings {
  /** Hibernation time when the client asks for none (`hibernationSeconds`); 0 disables resumption. */
  readonly hibernationMs: number;
  /** Upper bound for the client's `max` (`maxHibernationSeconds`). */
  readonly maxHibernationMs: number;
  readonly maxUnackedStanzas: number;
  readonly maxAckDelayMs: number;
  readonly ackRequestIntervalMs: number;
  readonly maxQueueStanzas: number;
  readonly maxQueueBytes: number;
}

export type EnableResult = { ok: true; sm: StreamManagement } | { ok: false; text: string };

/** What a client's `<a/>` means for the session ({@link StreamManagement.onAck}). */
export type AckOutcome =
  /** `requestedAtMs`: when the `<r/>` this answers was sent, if one was outstanding (the ack's round trip). */
  | { readonly kind: 'acked'; readonly requestedAtMs: number | undefined }
  /** Less than before: tolerated (ejabberd and Openfire do too), worth a log line. */
  | { readonly kind: 'backwards'; readonly h: number; readonly previous: number; readonly requestedAtMs: number | undefined }
  /** The stream ends with this error. */
  | { readonly kind: 'error'; readonly error: StreamError };

/** What the ack timer finds when it fires ({@link StreamManagement.ackTimerFired}). */
export type AckTimerDecision =
  /** No request outstanding: the timer is no longer needed. */
  | { readonly kind: 'idle' }
  /** A newer request is outstanding: fire again after what is left of its delay. */
  | { readonly kind: 'wait'; readonly ms: number }
  /** The request went unanswered for `maxAckDelayMs`: the client connection is treated as dead. */
  | { readonly kind: 'overdue'; readonly waitedMs: number };

/** {@link StreamManagement.snapshot}: plain data (the ack policy starts afresh, as at hibernation). */
export interface StreamManagementSnapshot {
  readonly ns: SmNamespace;
  readonly id: string;
  readonly resumable: boolean;
  readonly hibernationMs: number;
  /** The inbound count: stanzas handled from the client. */
  readonly h: number;
  readonly queue: UnackedQueueSnapshot;
}

/**
 * The XEP-0198 state of one session once enabled: the pure core's counters, queue and ack policy,
 * plus the namespace the client chose (answers use it, XEP-0198 §2) and the SM-ID. Survives
 * hibernation and resumption; the session does the I/O.
 */
export class StreamManagement {
  private constructor(
    readonly ns: SmNamespace,
    readonly id: string,
    readonly resumable: boolean,
    readonly hibernationMs: number,
    readonly queue: UnackedQueue,
    private readonly policy: AckPolicy,
    /** Inbound h: stanzas handled from the client; starts at the received `<enable/>` (XEP-0198 §4). */
    readonly inbound = new InboundCounter(),
  ) {}

  /** The state as plain data, to hand a hibernated session to another process. */
  snapshot(): StreamManagementSnapshot {
    return {
      ns: this.ns,
      id: this.id,
      resumable: this.resumable,
      hibernationMs: this.hibernationMs,
      h: this.inbound.h,
      queue: this.queue.snapshot(),
    };
  }

  /** The state of `snapshot` under this process's settings and budget; the queue's refusal when it does not fit them. */
  static restore(
    snapshot: StreamManagementSnapshot,
    settings: SmSettings,
    budget: QueueBudget,
  ): StreamManagement | Extract<PushResult, { ok: false }> {
    const queue = UnackedQueue.restore({ maxStanzas: settings.maxQueueStanzas, maxBytes: settings.maxQueueBytes }, budget, snapshot.queue);
    if (!(queue instanceof UnackedQueue)) return queue;
    const policy = new AckPolicy({ maxUnackedStanzas: settings.maxUnackedStanzas });
    return new StreamManagement(
      snapshot.ns,
      snapshot.id,
      snapshot.resumable,
      snapshot.hibernationMs,
      queue,
      policy,
      new InboundCounter(snapshot.h),
    );
  }

  /** Decides on an `<enable/>` (XEP-0198 §3) from its attributes and the settings. */
  static enable(request: {
    ns: SmNamespace;
    resumeAttr: string | undefined;
    maxAttr: string | undefined;
    settings: SmSettings;
    budget: QueueBudget;
  }): EnableResult {
    const resume = parseResumeFlag(request.resumeAttr);
    if (resume === 'invalid') return { ok: false, text: `resume='${request.resumeAttr ?? ''}' is not an xs:boolean` };
    const { settings } = request;
    const seconds = negotiateMax(request.maxAttr, settings.hibernationMs / 1000, settings.maxHibernationMs / 1000);
    const resumable = resume && seconds > 0;
    const queue = new UnackedQueue({ maxStanzas: settings.maxQueueStanzas, maxBytes: settings.maxQueueBytes }, request.budget);
    const policy = new AckPolicy({ maxUnackedStanzas: settings.maxUnackedStanzas });
    return { ok: true, sm: new StreamManagement(request.ns, newSmId(), resumable, seconds * 1000, queue, policy) };
  }

  /**
   * A client's `<a/>` with its `h` attribute (XEP-0198 §4): trims the queue. Any `<a/>`, even a
   * backwards one, answers the outstanding `<r/>`: it shows the client is alive, and an unanswered
   * request would block every later one until `maxAckDelay` declared the link dead.
   */
  onAck(hAttr: string | undefined): AckOutcome {
    const h = parseH(hAttr);
    if (h === undefined) {
      return {
        kind: 'error',
        error: new StreamError(
          ErrorCode.SM_INVALID_H,
          'invalid-xml',
          `<a/> without a valid h (got '${hAttr ?? ''}'); XEP-0198 §4: h is REQUIRED, an xs:unsignedInt`,
        ),
      };
    }
    const result = this.queue.ack(h);
    const requestedAtMs = this.policy.outstandingSinceMs;
    switch (result.kind) {
      case 'acked':
        this.policy.answered();
        return { kind: 'acked', requestedAtMs };
      case 'backwards':
        this.policy.answered();
        return { kind: 'backwards', h: result.h, previous: result.previous, requestedAtMs };
      case 'too-high':
        // XEP-0198 §6: on an h above what was sent the receiver SHOULD send `undefined-condition` with <handled-count-too-high/>.
        return {
          kind: 'error',
          error: new StreamError(
            ErrorCode.SM_HANDLED_COUNT_TOO_HIGH,
            'undefined-condition',
            `client acked h=${result.h} but only ${result.sendCount} stanzas were sent`,
            {
              appCondition: {
                name: 'handled-count-too-high',
                xmlns: NS.sm3,
                attrs: { h: String(result.h), 'send-count': String(result.sendCount) },
              },
            },
          ),
        };
    }
  }

  /**
   * The `<r/>` to send now, recorded as outstanding, or `undefined`. After a write burst or an
   * `<a/>` the {@link AckPolicy} decides; on the periodic check (`ackRequestIntervalMs`) any unacked
   * stanza is asked about when no request is outstanding; after a replay the request is due at once.
   */
  requestIfDue(trigger: 'burst' | 'periodic' | 'replayed', nowMs: number): string | undefined {
    const { queue, policy } = this;
    const due =
      trigger === 'burst'
        ? policy.shouldRequest({ sent: queue.sent, acked: queue.acked })
        : policy.outstandingSinceMs === undefined && (trigger === 'replayed' || queue.length > 0);
    if (!due) return undefined;
    policy.requested(queue.sent, nowMs);
    return `<r xmlns='${this.ns}'/>`;
  }

  /** The client link changed (hibernation, resumption): a request sent on the old one will never be answered. */
  linkChanged(): void {
    this.policy.answered();
  }

  /** The ack timer fired: whether the outstanding `<r/>` is overdue (mod_smacks's `smacks-ack-delayed`). */
  ackTimerFired(nowMs: number, maxAckDelayMs: number): AckTimerDecision {
    const since = this.policy.outstandingSinceMs;
    if (since === undefined) return { kind: 'idle' };
    if (!this.policy.isOverdue(nowMs, maxAckDelayMs)) return { kind: 'wait', ms: since + maxAckDelayMs - nowMs };
    return { kind: 'overdue', waitedMs: nowMs - since };
  }

  /**
   * `<enabled/>`: `id` and `resume='true'` only when resumption is allowed (XEP-0198 §3). `max` is
   * an xs:positiveInteger (XEP-0198 §13 schema), so a fractional hibernation time (tests, or a
   * configured `0.5`) is rounded up to whole seconds, at least 1.
   */
  enabledElement(): string {
    if (!this.resumable) return `<enabled xmlns='${this.ns}'/>`;
    const maxSeconds = Math.max(1, Math.ceil(this.hibernationMs / 1000));
    return `<enabled xmlns='${this.ns}' id='${this.id}' resume='true' max='${maxSeconds}'/>`;
  }

  /** `<a h/>` with the inbound count (XEP-0198 §4: answer every `<r/>` promptly). */
  ackElement(): string {
    return `<a xmlns='${this.ns}' h='${this.inbound.h}'/>`;
  }

  /**
   * `<resumed/>` echoes previd exactly (it is this session's id, found by it) and always carries
   * h: libstrophe and Conversations reject it otherwise. Like every SM answer (XEP-0198 §2; servers
   * offering both namespaces answer in the one the client used) it is in the namespace of the
   * `<resume/>` request, which may differ from the one `<enable/>` used.
   * @param ns the namespace of the `<resume/>` element.
   */
  resumedElement(ns: SmNamespace): string {
    return `<resumed xmlns='${ns}' previd='${this.id}' h='${this.inbound.h}'/>`;
  }
}
