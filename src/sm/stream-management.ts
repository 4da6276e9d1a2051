import { AckPolicy } from './ack-policy.js';
import { negotiateMax, newSmId, parseResumeFlag } from './enable-decision.js';
import { InboundCounter } from './inbound-counter.js';
import type { MemoryBudget } from './memory-budget.js';
import { UnackedQueue, type PushResult, type UnackedQueueSnapshot } from './unacked-queue.js';
import type { SmNamespace } from '../xml/namespaces.js';

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
    readonly policy: AckPolicy,
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
    budget: MemoryBudget,
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
    budget: MemoryBudget;
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

  requestElement(): string {
    return `<r xmlns='${this.ns}'/>`;
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
