import type { Logger } from 'pino';
import type { Readiness } from './readiness.js';

/** What a drain ends, one at a time. */
export interface DrainedSession {
  drain(): void;
}

export interface DrainOptions {
  /** The live sessions, oldest first. */
  readonly sessions: () => Iterable<DrainedSession>;
  /** Stops every client listener from accepting. */
  readonly stopAccepting: () => void;
  readonly readiness: Readiness;
  readonly log: Logger;
}

/** The fastest a drain goes: a tick at most every 10 ms. */
const MIN_TICK_MS = 10;

/**
 * Empties the proxy before maintenance (README, Metrics and health), in the manner of HAProxy's
 * drain: `/readyz` turns 503 at once so that the load balancer sends no one new, the listeners stop
 * accepting, and the sessions end at `ratePerSecond` (each as at expiry, its client cut off
 * without a stream close so that it reconnects at once, to another node). Once started, a drain
 * goes on until no session is left; a second request changes only its rate.
 */
export class Drain {
  private timer: NodeJS.Timeout | undefined;
  private started = false;

  constructor(private readonly options: DrainOptions) {}

  /** Starts (or re-paces) the drain; returns how many sessions are left to end. */
  start(ratePerSecond: number): number {
    const left = [...this.options.sessions()].length;
    if (!this.started) {
      this.started = true;
      this.options.readiness.drainStarted();
      this.options.stopAccepting();
      this.options.log.info({ sessions: left, ratePerSecond }, 'draining: no new connections; sessions end at the given rate');
    }
    clearInterval(this.timer);
    const tickMs = Math.max(MIN_TICK_MS, 1000 / ratePerSecond);
    const perTick = Math.max(1, Math.round((ratePerSecond * tickMs) / 1000));
    this.timer = setInterval(() => this.tick(perTick), tickMs);
    this.timer.unref();
    return left;
  }

  /** The proxy stops: no tick acts again. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(count: number): void {
    // Read afresh each tick: the registry drops a session when it ends, whatever ended it.
    const next = [...this.options.sessions()].slice(0, count);
    for (const session of next) session.drain();
    if (next.length === 0) {
      this.stop();
      this.options.log.info('drained: no session left');
    }
  }
}
