import type { Logger } from 'pino';
import { asProxyError, ErrorCode, InvariantError, UpstreamError } from '../errors.js';
import { parseElement } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';
import type { StreamHeaderAttrs } from '../xml/stream-header.js';
import type { ScannedElement, StreamHeader } from '../xml/stream-scanner.js';
import type { ReleasedUpstream, UpstreamHandler, UpstreamStream, UpstreamTarget } from './upstream-link.js';

/** Opens a connected upstream stream to `target`: `UpstreamLink.connect`, or a test's fake. */
export type UpstreamConnector = (target: UpstreamTarget, log: Logger) => Promise<UpstreamStream>;

/**
 * Most client bytes kept for a replay. A client that sends more before the server's first answer
 * (a SASL `<auth/>` is far below it) is not recorded further and gets no retry: the copies are
 * freed and what the server does is relayed as it is.
 */
export const MAX_REPLAY_BYTES = 64 * 1024;

const enum Phase {
  /** First stream; the server sent at most its header and `<stream:features>`: what is sent is copied. */
  Recording,
  /** The first link ended with `internal-server-error`; the second is being connected. */
  Reconnecting,
  /** The second link is open: its header (and features) are swallowed, then the copies are written. */
  Reopening,
  /** Plain pass-through: the current link reports straight to the handler. */
  Relaying,
  /** The link ended, or the reconnect failed or was given up by `close()`/`destroy()`. */
  Gone,
}

const IGNORE: UpstreamHandler = {
  onStreamOpen: () => undefined,
  onElement: () => undefined,
  onStreamClose: () => undefined,
  onFailure: () => undefined,
  onEnd: () => undefined,
  onDrain: () => undefined,
};

/**
 * An upstream stream that reconnects once, transparently, when the legacy server ends its first
 * stream with `internal-server-error` before answering anything the client sent (jabberd2 2.7
 * does that to a connection that got the fd of a session that just ended; see the COMPAT note at
 * the rule). The new stream is opened with the same header, the elements written to the failed
 * one are replayed byte for byte, and the new header and features are not reported: the session
 * relayed the first ones to its client already.
 *
 * Recording ends as soon as the server answers anything beyond its header and features, after
 * `expectRestart()` and on `close()`; the copies are freed then, and from then on the link reports
 * straight to the handler and a `send` costs one comparison more than the link's own.
 */
export class RetryingUpstream implements UpstreamStream {
  private handler: UpstreamHandler | undefined;
  private phase = Phase.Recording;
  /** The first stream's header, sent again on the second link. */
  private header: StreamHeaderAttrs | undefined;
  /** Copies of what was written to the first link, then of what was sent while reconnecting, in order. */
  private replay: Buffer[] = [];
  private replayBytes = 0;
  /** The first stream had `<stream:features>`: the second one's are swallowed before the replay. */
  private sawFeatures = false;
  /** A send during the reconnect returned false: `onDrain` is due once the replay is written. */
  private owesDrain = false;
  private paused = false;
  private keepaliveMs: number | undefined;
  /** Receives the current link's events until it relays (Recording and Reopening). */
  private readonly early: UpstreamHandler = {
    onStreamOpen: (header) => this.onEarlyStreamOpen(header),
    onElement: (element) => this.onEarlyElement(element),
    onStreamClose: () => this.onEarlyStreamClose(),
    onFailure: (error) => this.handler?.onFailure(error),
    onEnd: (clean) => {
      this.phase = Phase.Gone;
      this.replay = [];
      this.handler?.onEnd(clean);
    },
    onDrain: () => {
      // While reopening, the client is held until the replay is written (`owesDrain`).
      if (this.phase === Phase.Recording) this.handler?.onDrain();
    },
  };

  private constructor(
    private link: UpstreamStream,
    private readonly reconnect: () => Promise<UpstreamStream>,
    private readonly log: Logger,
  ) {
    link.setHandler(this.early);
  }

  /** Connects with `connect` and wraps the link; a reconnect uses the same `connect` and `target`. */
  static async connect(connect: UpstreamConnector, target: UpstreamTarget, log: Logger): Promise<RetryingUpstream> {
    const link = await connect(target, log);
    return new RetryingUpstream(link, () => connect(target, log), log);
  }

  get ended(): boolean {
    switch (this.phase) {
      case Phase.Gone:
        return true;
      case Phase.Reconnecting:
        return false;
      default:
        return this.link.ended;
    }
  }

  setHandler(handler: UpstreamHandler): void {
    this.handler = handler;
    if (this.phase === Phase.Relaying) this.link.setHandler(handler);
  }

  sendHeader(attrs: StreamHeaderAttrs): void {
    switch (this.phase) {
      case Phase.Recording:
        this.header = attrs;
        this.link.sendHeader(attrs);
        return;
      case Phase.Relaying:
        this.link.sendHeader(attrs);
        return;
      case Phase.Reconnecting:
      case Phase.Reopening:
        // A stream restart follows SASL success, and the server has not answered yet.
        throw new InvariantError('upstream stream restart while the upstream reconnects');
      case Phase.Gone:
        return;
    }
  }

  send(element: Buffer | string): boolean {
    if (this.phase === Phase.Relaying) return this.link.send(element);
    if (this.phase === Phase.Recording) {
      this.record(element);
      return this.link.send(element);
    }
    // Gone: like a link after its end, nothing reaches the server any more.
    if (this.phase === Phase.Gone) return true;
    // Reconnecting or reopening: held (and the client with it, by returning false) until the replay is written.
    this.replay.push(copyOf(element));
    this.owesDrain = true;
    return false;
  }

  startKeepalive(intervalMs: number): void {
    this.keepaliveMs = intervalMs;
    this.live?.startKeepalive(intervalMs);
  }

  expectRestart(): void {
    switch (this.phase) {
      case Phase.Recording:
        this.passThrough();
        this.link.expectRestart();
        return;
      case Phase.Relaying:
        this.link.expectRestart();
        return;
      case Phase.Reconnecting:
      case Phase.Reopening:
        throw new InvariantError('SASL success while the upstream reconnects');
      case Phase.Gone:
        return;
    }
  }

  close(): void {
    switch (this.phase) {
      case Phase.Recording:
        this.passThrough();
        this.link.close();
        return;
      case Phase.Relaying:
        this.link.close();
        return;
      case Phase.Reconnecting:
      case Phase.Reopening:
        // The second stream means nothing to the client yet: there is nothing to close cleanly.
        this.giveUp();
        return;
      case Phase.Gone:
        return;
    }
  }

  destroy(): void {
    switch (this.phase) {
      case Phase.Recording:
      case Phase.Relaying:
        this.link.destroy();
        return;
      case Phase.Reconnecting:
      case Phase.Reopening:
        this.giveUp();
        return;
      case Phase.Gone:
        return;
    }
  }

  pause(): void {
    this.paused = true;
    this.live?.pause();
  }

  resume(): void {
    this.paused = false;
    this.live?.resume();
  }

  /** Only a stream that relays goes: before that, the client is still logging in. */
  release(): ReleasedUpstream | undefined {
    if (this.phase !== Phase.Relaying) return undefined;
    const released = this.link.release();
    if (released !== undefined) this.phase = Phase.Gone;
    return released;
  }

  /** The link calls go to: none while reconnecting (they apply once it is there) or once gone. */
  private get live(): UpstreamStream | undefined {
    return this.phase === Phase.Reconnecting || this.phase === Phase.Gone ? undefined : this.link;
  }

  /** Copies: callers may pass subarrays of buffers that are reused once this returns. */
  private record(element: Buffer | string): void {
    const copy = copyOf(element);
    this.replayBytes += copy.length;
    if (this.replayBytes > MAX_REPLAY_BYTES) {
      this.passThrough();
      return;
    }
    this.replay.push(copy);
  }

  /** No retry from now on: the copies are freed and the link reports to the handler itself. */
  private passThrough(): void {
    this.replay = [];
    this.handOff();
  }

  private handOff(): void {
    this.phase = Phase.Relaying;
    if (this.handler !== undefined) this.link.setHandler(this.handler);
  }

  private onEarlyStreamOpen(header: StreamHeader): void {
    if (this.phase === Phase.Recording) {
      this.handler?.onStreamOpen(header);
      return;
    }
    // Reopening: the client has the first stream's header already.
    if (!this.sawFeatures) this.writeReplay();
  }

  private onEarlyElement(element: ScannedElement): void {
    const isFeatures = element.localName === 'features' && element.ns === NS.stream;
    if (this.phase === Phase.Reopening) {
      this.writeReplay();
      // The client has the first stream's features already; anything else is news to it.
      if (!isFeatures) this.handler?.onElement(element);
      return;
    }
    if (isFeatures) {
      this.sawFeatures = true;
      this.handler?.onElement(element);
      return;
    }
    // COMPAT(jabberd2 2.7): c2s keys client sessions by socket number. When a logged-in session
    // ends, the sm's late reply for it can reach c2s after c2s accepted a new connection on the same
    // (reused) fd, and c2s kills the new stream at once with internal-server-error; through the
    // proxy that connection is a client's login. Up to here the server sent its header and features
    // only: it has answered, so acted on, none of the client's elements. A new stream with the same
    // header and the same elements (typically one SASL <auth/>) is the client's first try again,
    // not a second one. RFC 6120 §4.9.1.1: the failed stream is gone; the new one replaces it.
    const header = this.header;
    if (header !== undefined && isInternalServerError(element)) {
      this.retry(header);
      return;
    }
    // The server answered: whatever it did with the client's elements, a replay would repeat them.
    this.passThrough();
    this.handler?.onElement(element);
  }

  /** Recording: the server closed without an answer. Reopening: the second stream closed before it was ready; the copies go nowhere. */
  private onEarlyStreamClose(): void {
    this.passThrough();
    this.handler?.onStreamClose();
  }

  /** Drops the failed link (its close and end are not reported) and connects the next one. */
  private retry(header: StreamHeaderAttrs): void {
    this.log.warn(
      { code: ErrorCode.UPSTREAM_STREAM_ERROR, replayed: this.replay.length },
      'legacy server sent internal-server-error before answering the client; reconnecting once and replaying (jabberd2 2.7 fd reuse)',
    );
    this.phase = Phase.Reconnecting;
    const failed = this.link;
    failed.setHandler(IGNORE);
    failed.destroy();
    this.reconnect().then(
      (link) => this.onReconnected(link, header),
      (err: unknown) => this.onReconnectFailed(err),
    );
  }

  private onReconnected(link: UpstreamStream, header: StreamHeaderAttrs): void {
    if (this.phase !== Phase.Reconnecting) {
      // close() or destroy() came first.
      link.destroy();
      return;
    }
    this.phase = Phase.Reopening;
    this.link = link;
    link.setHandler(this.early);
    if (this.paused) link.pause();
    if (this.keepaliveMs !== undefined) link.startKeepalive(this.keepaliveMs);
    link.sendHeader(header);
  }

  /**
   * Reported as a failed link (`onFailure` with the connect error, then `onEnd`), not by relaying
   * the first stream's `internal-server-error`: the client then gets `remote-connection-failed`
   * with the reason ("legacy server unreachable"), which is what is wrong now, and the operator
   * the connect error's code in the session's log.
   */
  private onReconnectFailed(err: unknown): void {
    if (this.phase !== Phase.Reconnecting) return;
    this.phase = Phase.Gone;
    this.replay = [];
    const error =
      err instanceof UpstreamError
        ? err
        : new UpstreamError(ErrorCode.UPSTREAM_CONNECT, asProxyError(err).message, { cause: err, text: 'legacy server unreachable' });
    this.handler?.onFailure(error);
    this.handler?.onEnd(false);
  }

  /** The second stream is ready: the copies, then what was sent meanwhile, in order; then pass-through. */
  private writeReplay(): void {
    const replay = this.replay;
    this.replay = [];
    this.handOff();
    let writable = true;
    for (const bytes of replay) writable = this.link.send(bytes);
    if (this.owesDrain && writable) this.handler?.onDrain();
    this.owesDrain = false;
  }

  /** Nothing of the reconnect is kept; `onEnd` follows, as after a link's own end. */
  private giveUp(): void {
    if (this.phase === Phase.Reopening) {
      this.link.setHandler(IGNORE);
      this.link.destroy();
    }
    this.phase = Phase.Gone;
    this.replay = [];
    process.nextTick(() => this.handler?.onEnd(false));
  }
}

/** RFC 6120 §4.9.3.8 `internal-server-error`, as a stream error. */
function isInternalServerError(element: ScannedElement): boolean {
  if (element.localName !== 'error' || element.ns !== NS.stream) return false;
  return parseElement(element.bytes).getChild('internal-server-error', NS.streams) !== undefined;
}

function copyOf(element: Buffer | string): Buffer {
  return typeof element === 'string' ? Buffer.from(element, 'utf8') : Buffer.from(element);
}
