import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';
import type { UpstreamStream } from '../upstream/upstream-link.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { NS, isStanza } from '../xml/namespaces.js';
import { bounceFor } from './bounce.js';
import { KeptStanzas } from './kept-stanzas.js';

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
   * Arrived after the proxy's `</stream:stream>`, while a new session of the same full JID waited to
   * bind: delivered to that session's client (the server would have routed them there).
   */
  handedOver: number;
  /**
   * Stanzas that needed an answer but arrived after the proxy's `</stream:stream>`, with no new
   * session of that full JID to take them: RFC 6120 §4.4 forbids writing behind the close, so
   * nothing can answer them. Logged at warn.
   */
  unanswerable: number;
  /**
   * Answered (by the session as it ended, or here) on a stream the legacy server then ended without
   * reading the proxy's close (it stopped, or restarted): the answers may never have been read.
   * The stanzas are kept for the next session of the same full JID (`LingerOptions.keepMs`).
   */
  unread: number;
}

export interface LingerOptions {
  /** The full JID bound on the stream: bounces come from it (bounce.ts). */
  readonly jid: string;
  readonly expiryPolicy: 'bounce' | 'drop';
  /** The client had sent available presence: the user's unavailable presence (RFC 6121 §4.5) goes first. */
  readonly wasAvailable: boolean;
  /** What the session answered on the stream as it ended (its unacked stanzas), in order. */
  readonly answered: readonly Buffer[];
  /** How long answered stanzas the server may not have read wait for a new session of the full JID; 0: not at all. */
  readonly keepMs: number;
  readonly log: Logger;
}

/**
 * The upstream streams of sessions that have ended, each read until the legacy server has closed
 * it. A server goes on routing stanzas to a full JID until it has read the proxy's close: a stanza
 * in flight then would reach no one, and the server counts it as delivered. So the stream stays
 * open a little: the user's unavailable presence goes first (contacts stop addressing the full
 * JID: RFC 6121 §5.1), whatever arrives is answered as at expiry, and the close is sent once the
 * stream is quiet (at the latest after `maxMs`).
 *
 * A client that comes back and binds the same resource meanwhile would make the server end the
 * lingering stream for a resource conflict, and the server reads nothing more from it: answers
 * to what it routed there just before would be lost. So that bind waits for {@link handOver}: the
 * lingering stream closes at once, and what arrives behind the close goes to the new session.
 * Only a stanza that arrives behind a close with no such session cannot be answered; it is counted.
 *
 * The answers count as read once the server has answered the close with its own: it reads a
 * stream in order. A server that ends the stream otherwise (a stream error such as
 * `system-shutdown`, or the connection) may never have read them: the stanzas they answered are
 * kept for `keepMs`, and a new session binding that full JID gets them (kept-stanzas.ts).
 */
export class LingeringUpstreams {
  readonly #streams = new Set<LingeringStream>();
  #idle: (() => void) | undefined;

  constructor(
    private readonly timing: LingerTiming = LINGER_TIMING,
    /** Where the stanzas of answers the server never read wait for the next session of their full JID. */
    readonly kept: KeptStanzas = new KeptStanzas(),
  ) {}

  /** Upstream streams still open for late stanzas. */
  get count(): number {
    return this.#streams.size;
  }

  /** Takes over `upstream` (its handler is replaced) and calls `done` once its connection is gone. */
  linger(upstream: UpstreamStream, options: LingerOptions, done: (late: LateStanzas) => void): void {
    const stream = new LingeringStream(upstream, options, this.timing, (late, unread) => {
      if (!this.#streams.delete(stream)) return;
      this.kept.keep(options.jid, unread, options.keepMs, options.log);
      done(late);
      if (this.#streams.size === 0) this.#idle?.();
    });
    this.#streams.add(stream);
    stream.start();
  }

  /** Whether a stream lingers whose full JID `matches`. */
  has(matches: (jid: string) => boolean): boolean {
    for (const stream of this.#streams) if (matches(stream.jid)) return true;
    return false;
  }

  /**
   * Closes at once every lingering stream whose full JID `matches`, and resolves, once the legacy
   * server has closed them (or the close timed out), with the stanzas that arrived behind the
   * closes, in order, for a new session of that JID.
   */
  async handOver(matches: (jid: string) => boolean): Promise<Buffer[]> {
    const streams = [...this.#streams].filter((stream) => matches(stream.jid));
    const late = await Promise.all(streams.map((stream) => stream.handOver()));
    return late.flat();
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
    for (const stream of [...this.#streams]) stream.destroy();
  }
}

/** One ended session's upstream stream, from its end to the end of its connection. */
class LingeringStream {
  readonly #late: LateStanzas = { answered: 0, dropped: 0, handedOver: 0, unanswerable: 0, unread: 0 };
  /** The proxy closed the stream, or the server ended it: nothing written any more is processed. */
  #closed = false;
  /** The proxy wrote its close, before the server ended the stream. */
  #closeSent = false;
  /** The server answered the proxy's close with its own: it has read every answer. */
  #closeRead = false;
  /** The server ended the stream with a stream error: a close after it answers nothing. */
  #errorSeen = false;
  /** The stanzas answered on this stream, in order, until the server has read them. */
  readonly #answered: Buffer[];
  /** Set once a new session of this JID waits: what arrives behind the close is kept for it. */
  #forNewSession: Buffer[] | undefined;
  #quietTimer: NodeJS.Timeout | undefined;
  #maxTimer: NodeJS.Timeout | undefined;
  #finished = false;
  readonly #ended: Promise<void>;
  #resolveEnded: () => void = () => undefined;

  constructor(
    private readonly upstream: UpstreamStream,
    private readonly options: LingerOptions,
    private readonly timing: LingerTiming,
    private readonly onFinished: (late: LateStanzas, unread: readonly Buffer[]) => void,
  ) {
    this.#ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    this.#answered = [...options.answered];
  }

  get jid(): string {
    return this.options.jid;
  }

  start(): void {
    const upstream = this.upstream;
    upstream.setHandler({
      onStreamOpen: () => undefined,
      onElement: (element) => this.onElement(element),
      onStreamClose: () => {
        // RFC 6120 §4.4: the server's answer to the proxy's close comes after it read all before it.
        if (this.#closeSent && !this.#errorSeen) this.#closeRead = true;
        this.close();
      },
      onFailure: () => undefined,
      onEnd: () => this.finish(),
      onDrain: () => undefined,
    });
    if (upstream.ended) {
      this.finish();
      return;
    }
    // Reading may have been paused for the client (flow control); nothing waits for the client now.
    upstream.resume();
    if (this.options.wasAvailable) upstream.send(UNAVAILABLE);
    this.#maxTimer = setTimeout(() => this.close(), this.timing.maxMs);
    this.#maxTimer.unref();
    this.quiet();
  }

  handOver(): Promise<Buffer[]> {
    this.#forNewSession ??= [];
    const kept = this.#forNewSession;
    this.close();
    return this.#ended.then(() => kept);
  }

  destroy(): void {
    this.upstream.destroy();
  }

  private onElement(element: ScannedElement): void {
    if (element.localName === 'error' && element.ns === NS.stream) {
      // The server ends the stream: nothing written to it any more is processed.
      this.#closed = true;
      this.#errorSeen = true;
      return;
    }
    if (!isStanza(element)) return;
    if (this.#closed && this.#forNewSession !== undefined) {
      this.#forNewSession.push(Buffer.from(element.bytes));
      this.#late.handedOver++;
      return;
    }
    const answer = this.options.expiryPolicy === 'bounce' ? bounceFor(element.bytes, this.options.jid) : undefined;
    if (answer === undefined) this.#late.dropped++;
    else if (this.#closed) this.#late.unanswerable++;
    else {
      this.upstream.send(answer);
      this.#answered.push(Buffer.from(element.bytes));
      this.#late.answered++;
    }
    if (!this.#closed) this.quiet();
  }

  private quiet(): void {
    clearTimeout(this.#quietTimer);
    this.#quietTimer = setTimeout(() => this.close(), this.timing.quietMs);
    this.#quietTimer.unref();
  }

  private close(): void {
    clearTimeout(this.#quietTimer);
    clearTimeout(this.#maxTimer);
    if (this.#closed) return;
    this.#closed = true;
    this.#closeSent = true;
    this.upstream.close();
  }

  private finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#quietTimer);
    clearTimeout(this.#maxTimer);
    const unread = this.#closeRead ? [] : this.#answered;
    this.#late.unread = unread.length;
    if (this.#late.unanswerable > 0) {
      this.options.log.warn(
        { code: ErrorCode.LATE_STANZA_UNANSWERED, unanswerable: this.#late.unanswerable },
        'stanzas arrived after the stream to the legacy server was closed; their senders get no answer',
      );
    }
    this.onFinished(this.#late, unread);
    this.#resolveEnded();
  }
}
