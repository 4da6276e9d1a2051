import type { StreamManagement } from '../sm/stream-management.js';

/** What the clock does through its session. */
export interface AckClockPort {
  /** Writes an `<r/>` to the client. */
  sendRequest(request: string): void;
  /** An `<r/>` went unanswered for `maxAckDelayMs`: the client connection is to be treated as dead. */
  overdue(waitedMs: number): void;
  /** Runs a timer's work the way the session runs every event (a throw ends that session only). */
  guard(action: () => void): void;
}

/** The two timings of XEP-0198 acking, in ms (config `streamManagement`). */
export interface AckTimings {
  readonly maxAckDelayMs: number;
  readonly ackRequestIntervalMs: number;
}

/**
 * When to send `<r/>` to an attached client, in time: after each write burst and each `<a/>` (one
 * check per tick, however many stanzas the burst had), every `ackRequestIntervalMs` while stanzas
 * are unacked, and the deadline of each request (`maxAckDelayMs`). What to decide is
 * {@link StreamManagement}'s (pure); this is its clock. One clock per attached client link: it is
 * stopped when the link goes (hibernation, the end) and a resumed session starts a new one, so a
 * timer never acts for a link it was not armed for.
 */
export class AckClock {
  #ackTimer: NodeJS.Timeout | undefined;
  #requestTimer: NodeJS.Timeout | undefined;
  #checkScheduled = false;
  #stopped = false;

  constructor(
    private readonly sm: StreamManagement,
    private readonly timings: AckTimings,
    private readonly now: () => number,
    private readonly port: AckClockPort,
  ) {
    const timer = setInterval(() => this.port.guard(() => this.request('periodic')), timings.ackRequestIntervalMs);
    timer.unref();
    this.#requestTimer = timer;
  }

  /** Stanzas were written, or an `<a/>` arrived: the policy is asked once, at the end of this tick. */
  check(): void {
    if (this.#checkScheduled) return;
    this.#checkScheduled = true;
    process.nextTick(() => {
      this.#checkScheduled = false;
      this.port.guard(() => this.request('burst'));
    });
  }

  /** Sends an `<r/>` if the policy says one is due for `trigger`, and arms its deadline. */
  request(trigger: 'burst' | 'periodic' | 'replayed'): void {
    if (this.#stopped) return;
    const request = this.sm.requestIfDue(trigger, this.now());
    if (request === undefined) return;
    this.port.sendRequest(request);
    if (this.#ackTimer === undefined) this.armDeadline(this.timings.maxAckDelayMs);
  }

  /** The link is gone: no timer of this clock acts again. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#ackTimer);
    clearInterval(this.#requestTimer);
    this.#ackTimer = undefined;
    this.#requestTimer = undefined;
  }

  private armDeadline(delayMs: number): void {
    const timer = setTimeout(() => this.port.guard(() => this.onDeadline(timer)), Math.max(0, delayMs));
    timer.unref();
    this.#ackTimer = timer;
  }

  private onDeadline(timer: NodeJS.Timeout): void {
    // The timer re-checks the clock it was armed for.
    if (this.#stopped || this.#ackTimer !== timer) return;
    this.#ackTimer = undefined;
    const decision = this.sm.ackTimerFired(this.now(), this.timings.maxAckDelayMs);
    if (decision.kind === 'wait') this.armDeadline(decision.ms);
    else if (decision.kind === 'overdue') this.port.overdue(decision.waitedMs);
  }
}
