import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';
import type { UpstreamHandler, UpstreamStream } from '../upstream/upstream-link.js';
import { NS, isStanza } from '../xml/namespaces.js';
import { bounceFor } from './bounce.js';

/**
 * How long an ended session's upstream stream stays open for late stanzas (README, What it does):
 * it closes once nothing arrived for `quietMs`, and at the latest after `maxMs`.
 */
export interface LingerTiming {
  readonly quietMs: number;
  readonly maxMs: number;
}

export const LINGER_TIMING: LingerTiming = { quietMs: 500, maxMs: 5000 };

const UNAVAILABLE = "<presence type='unavailable'/>";

/** What became of the stanzas that reached an ended session, for its summary log line. */
export interface LateStanzas {
  /** Answered to their senders, as unacked stanzas are at expiry. */
  answered: number;
  /** Needing no answer (presence, results, errors, headlines, copies), or dropped by `expiryPolicy: "drop"`. */
  dropped: number;
  /**
   * Stanzas that needed an answer but arrived after the proxy's `</stream:stream>`: RFC 6120 §4.4
   * forbids writing behind it, so nothing can answer them. Logged at warn.
   */
  unanswerable: number;
}

export interface LingerOptions {
  /** The full JID bound on the stream: bounces come from it (bounce.ts). */
  readonly jid: string;
  readonly expiryPolicy: 'bounce' | 'drop';
  /** The client had sent available presence: the user's unavailable presence (RFC 6121 §4.5) goes first. */
  readonly wasAvailable: boolean;
  readonly log: Logger;
}

/**
 * The upstream streams of sessions that have ended, each read until the legacy server has closed
 * it. A server goes on routing stanzas to a full JID until it has read the proxy's close: a stanza
 * in flight then would reach no one, and the server counts it as delivered. So the stream stays
 * open a little: the user's unavailable presence goes first (contacts stop addressing the full
 * JID: RFC 6121 §5.1), whatever arrives is answered as at expiry, and the close is sent once the
 * stream is quiet (at the latest after `maxMs`). Only a stanza the server sends in the moment
 * between that close and its reading it cannot be answered; it is counted.
 */
export class LingeringUpstreams {
  readonly #streams = new Map<UpstreamStream, () => void>();
  #idle: (() => void) | undefined;

  constructor(private readonly timing: LingerTiming = LINGER_TIMING) {}

  /** Upstream streams still open for late stanzas. */
  get count(): number {
    return this.#streams.size;
  }

  /** Takes over `upstream` (its handler is replaced) and calls `done` once its connection is gone. */
  linger(upstream: UpstreamStream, options: LingerOptions, done: (late: LateStanzas) => void): void {
    const late: LateStanzas = { answered: 0, dropped: 0, unanswerable: 0 };
    let closed = false;
    let quietTimer: NodeJS.Timeout | undefined;
    const close = (): void => {
      if (closed) return;
      closed = true;
      clearTimeout(quietTimer);
      clearTimeout(maxTimer);
      upstream.close();
    };
    const quiet = (): void => {
      clearTimeout(quietTimer);
      quietTimer = setTimeout(close, this.timing.quietMs);
      quietTimer.unref();
    };
    const maxTimer = setTimeout(close, this.timing.maxMs);
    maxTimer.unref();
    const finished = (): void => {
      clearTimeout(quietTimer);
      clearTimeout(maxTimer);
      if (!this.#streams.delete(upstream)) return;
      if (late.unanswerable > 0) {
        options.log.warn(
          { code: ErrorCode.LATE_STANZA_UNANSWERED, unanswerable: late.unanswerable },
          'stanzas arrived after the stream to the legacy server was closed; their senders get no answer',
        );
      }
      done(late);
      if (this.#streams.size === 0) this.#idle?.();
    };
    const handler: UpstreamHandler = {
      onStreamOpen: () => undefined,
      onElement: (element) => {
        if (element.localName === 'error' && element.ns === NS.stream) {
          // The server ends the stream: nothing written to it any more is processed.
          closed = true;
          return;
        }
        if (!isStanza(element)) return;
        const answer = options.expiryPolicy === 'bounce' ? bounceFor(element.bytes, options.jid) : undefined;
        if (answer === undefined) late.dropped++;
        else if (closed) late.unanswerable++;
        else {
          upstream.send(answer);
          late.answered++;
        }
        if (!closed) quiet();
      },
      onStreamClose: close,
      onFailure: () => undefined,
      onEnd: finished,
      onDrain: () => undefined,
    };
    this.#streams.set(upstream, () => upstream.destroy());
    upstream.setHandler(handler);
    if (upstream.ended) {
      finished();
      return;
    }
    // Reading may have been paused for the client (flow control); nothing waits for the client now.
    upstream.resume();
    if (options.wasAvailable) upstream.send(UNAVAILABLE);
    quiet();
  }

  /** Resolves once no stream lingers any more. */
  idle(): Promise<void> {
    if (this.#streams.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.#idle;
      this.#idle = () => {
        this.#idle = undefined;
        previous?.();
        resolve();
      };
    });
  }

  /** Drops every lingering connection at once (the end of the shutdown grace period). */
  destroyAll(): void {
    for (const destroy of [...this.#streams.values()]) destroy();
  }
}
