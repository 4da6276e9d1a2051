import { createHmac } from 'node:crypto';
import type { Logger } from 'pino';
import type { WebhookEvent } from '../config/config.js';
import { ErrorCode } from '../errors.js';
import type { SmEventMap, SmEvents } from '../session/events.js';

/** The first retry waits this long; each further one twice as long, up to {@link MAX_RETRY_DELAY_MS}. */
const FIRST_RETRY_DELAY_MS = 1000;
const MAX_RETRY_DELAY_MS = 60_000;

export interface WebhookOptions {
  readonly url: string;
  /** The HMAC-SHA256 key (config `webhook.secretFile`). */
  readonly secret: string;
  readonly events: readonly WebhookEvent[];
  readonly maxQueue: number;
  readonly timeoutMs: number;
  readonly maxAttempts: number;
  /** Told what became of each event, for the metrics. */
  readonly outcome: (outcome: WebhookOutcome) => void;
  readonly log: Logger;
  readonly now?: () => number;
}

/** `delivered`: a 2xx answer; `failed`: refused for good or out of attempts; `dropped`: pushed out of a full queue. */
export type WebhookOutcome = 'delivered' | 'failed' | 'dropped';

interface Pending {
  readonly body: string;
  attempts: number;
}

/**
 * The SM events as HTTP POSTs to a push or monitoring service (README, Webhook): one JSON object
 * per event (`event`, `time`, `data`: the session id, the JID and the event's counts; never a
 * stanza, never the SM-ID, which would let anyone resume the session), signed with HMAC-SHA256 over
 * `<timestamp>.<body>`. Events go one at a time, in the order they happened; a failed POST is
 * retried (1 s, then doubling up to 60 s) up to `maxAttempts`; a 4xx other than 408 and 429 is
 * final. At most `maxQueue` wait; beyond, the oldest is dropped.
 */
export class Webhook {
  private readonly queue: Pending[] = [];
  private sending = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Resolved each time the queue runs empty (idle). */
  private emptied: (() => void)[] = [];
  private readonly now: () => number;

  constructor(
    private readonly options: WebhookOptions,
    events: SmEvents,
  ) {
    this.now = options.now ?? Date.now;
    for (const event of options.events) {
      events.on(event, (data: SmEventMap[typeof event][0]) => this.enqueue(event, data));
    }
  }

  /** Resolves once every event queued so far has been delivered or given up (at once when none wait). */
  idle(): Promise<void> {
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.emptied.push(resolve));
  }

  /** Stops sending and retrying; returns how many events were left undelivered. */
  stop(): number {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    return this.queue.length;
  }

  private enqueue(event: WebhookEvent, data: SmEventMap[WebhookEvent][0]): void {
    if (this.stopped) return;
    // The SM-ID is the session's resumption secret: it never leaves the proxy.
    const { smId: _secret, ...shown } = data as Record<string, unknown>;
    const body = JSON.stringify({ event, time: new Date(this.now()).toISOString(), data: shown });
    if (this.queue.length >= this.options.maxQueue) {
      // The one in flight (the head) stays; the oldest waiting one goes, or, when none waits, this one.
      const removed = this.queue.splice(this.sending ? 1 : 0, 1);
      this.options.outcome('dropped');
      if (removed.length === 0) return;
    }
    this.queue.push({ body, attempts: 0 });
    this.pump();
  }

  private pump(): void {
    const next = this.queue[0];
    if (next === undefined) {
      for (const resolve of this.emptied.splice(0)) resolve();
      return;
    }
    if (this.sending || this.stopped || this.retryTimer !== undefined) return;
    this.sending = true;
    const posted = this.post(next).catch((err: unknown) => ({ kind: 'retry' as const, why: (err as Error).message }));
    void posted.then((result) => {
      this.sending = false;
      if (this.stopped) return;
      if (result.kind === 'retry' && next.attempts < this.options.maxAttempts) {
        const delayMs = Math.min(MAX_RETRY_DELAY_MS, FIRST_RETRY_DELAY_MS * 2 ** (next.attempts - 1));
        this.options.log.info(
          { code: ErrorCode.WEBHOOK_DELIVERY, why: result.why, attempts: next.attempts, retryInMs: delayMs },
          'webhook POST failed; retrying',
        );
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.pump();
        }, delayMs);
        this.retryTimer.unref();
        return;
      }
      this.queue.shift();
      if (result.kind === 'delivered') {
        this.options.outcome('delivered');
      } else {
        this.options.outcome('failed');
        this.options.log.warn(
          { code: ErrorCode.WEBHOOK_DELIVERY, why: result.why, attempts: next.attempts },
          'webhook event dropped after a failed POST',
        );
      }
      this.pump();
    });
  }

  private async post(pending: Pending): Promise<{ kind: 'delivered' } | { kind: 'final' | 'retry'; why: string }> {
    pending.attempts++;
    const timestamp = String(Math.floor(this.now() / 1000));
    const signature = createHmac('sha256', this.options.secret).update(`${timestamp}.${pending.body}`).digest('hex');
    let response: Response;
    try {
      response = await fetch(this.options.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'smacks-proxy',
          'x-smacks-timestamp': timestamp,
          'x-smacks-signature': `sha256=${signature}`,
        },
        body: pending.body,
        redirect: 'manual',
        signal: AbortSignal.timeout(this.options.timeoutMs),
      });
    } catch (err) {
      // A request fetch refuses to make (a URL it cannot take) never succeeds: no retries.
      if (err instanceof TypeError && (err as Error & { cause?: unknown }).cause === undefined) return { kind: 'final', why: err.message };
      const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
      return { kind: 'retry', why: cause };
    }
    // The answer's body is not read: drop it, so that the connection can be reused (a body that
    // already failed rejects here, and the answer's status still counts).
    await response.body?.cancel().catch(() => undefined);
    if (response.ok) return { kind: 'delivered' };
    const why = `HTTP ${response.status}`;
    const final = response.status >= 300 && response.status < 500 && response.status !== 408 && response.status !== 429;
    return { kind: final ? 'final' : 'retry', why };
  }
}
