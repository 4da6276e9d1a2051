import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Logger } from 'pino';
import { ErrorCode, UpstreamError } from '../errors.js';
import type { LinkEndpoints } from '../transport/client-link.js';
import { CoalescingWriter } from '../transport/coalescing-writer.js';
import { tryBuildHeader, type ProxyProtocolVersion } from '../transport/proxy-protocol.js';
import { InheritedNamespaces } from '../xml/namespace-declarations.js';
import { NS } from '../xml/namespaces.js';
import { renderStreamHeader, STREAM_CLOSE, type StreamHeaderAttrs } from '../xml/stream-header.js';
import { StreamScanner, type ScannedElement, type StreamHeader } from '../xml/stream-scanner.js';

/**
 * The legacy server is trusted, and sends what clients asked for (a large roster, a vCard with a
 * photo): its elements are limited far above the client limit, only to bound memory.
 */
const UPSTREAM_MAX_STANZA_BYTES = 16 * 1024 * 1024;
const UPSTREAM_MAX_DEPTH = 256;
/** How long a closing upstream link waits for the server's `</stream:stream>`. */
const CLOSE_WAIT_MS = 2000;

/** Where and how to reach the legacy server for one domain (config `domains.*.upstream`). */
export interface UpstreamTarget {
  readonly domain: string;
  readonly host: string;
  readonly port: number;
  /** `plain` on loopback, `starttls` or `tls` across a network. */
  readonly security: 'plain' | 'starttls' | 'tls';
  readonly connectTimeoutMs: number;
  readonly rejectUnauthorized: boolean;
  readonly serverName?: string | undefined;
  /** Send a PROXY protocol header of this version first (proxy-protocol.ts); undefined = none. */
  readonly proxyProtocol?: ProxyProtocolVersion | undefined;
  /** Whom the header names: the user's client; undefined for the proxy's own connections (a probe: v2 LOCAL, v1 UNKNOWN). */
  readonly origin?: LinkEndpoints | undefined;
}

/** What the upstream link reports to the session that owns it. */
export interface UpstreamHandler {
  onStreamOpen(header: StreamHeader): void;
  onElement(element: ScannedElement): void;
  onStreamClose(): void;
  /** The legacy server sent invalid XML, or did not answer a stream header in time: the link is being torn down. */
  onFailure(error: UpstreamError): void;
  /** The socket is gone. `clean` when the server had closed its stream first. Called once. */
  onEnd(clean: boolean): void;
  onDrain(): void;
}

/**
 * One XML stream to the legacy server, as the session uses it: the members of {@link UpstreamLink}
 * that `Session` calls, and nothing about how it is connected. `UpstreamLink` is the one real
 * implementation; unit tests drive a session through an in-memory one.
 */
export interface UpstreamStream {
  /** True once the connection is gone: nothing written any more reaches the legacy server. */
  readonly ended: boolean;
  /** Installs the receiver of this stream's events (see UpstreamHandler). */
  setHandler(handler: UpstreamHandler): void;
  /** Opens (or, after SASL success, restarts) the XML stream towards the server. */
  sendHeader(attrs: StreamHeaderAttrs): void;
  /** Writes one complete element. Returns false when the caller should pause its source until onDrain. */
  send(element: Buffer | string): boolean;
  /** RFC 6120 §4.6.1 whitespace keepalive whenever nothing was written for `intervalMs`; only once bound. */
  startKeepalive(intervalMs: number): void;
  /** The next thing the server sends is a new stream header (after SASL success). */
  expectRestart(): void;
  /** Closes the stream cleanly; the connection ends once the server closed its side, or after a bounded wait. */
  close(): void;
  /** Drops the connection at once, without a stream close. */
  destroy(): void;
  /** Stops reading from the server (backpressure from the client side). */
  pause(): void;
  /** Reads from the server again. */
  resume(): void;
  /** Takes the open stream out, to be carried to another process ({@link UpstreamLink.release}); undefined when it cannot go now. */
  release(): ReleasedUpstream | undefined;
}

/**
 * Where an {@link UpstreamLink} is in its life. `open` carries the timers of a live stream (the
 * wait for the server's header, the whitespace keepalive), `closing` the bounded wait for the
 * server's `</stream:stream>`; `released` means the socket was handed to another owner
 * ({@link UpstreamLink.release}) and the link no longer reads, writes or reports anything.
 */
type UpstreamPhase =
  | { readonly kind: 'open'; headerTimer: NodeJS.Timeout | undefined; keepaliveTimer: NodeJS.Timeout | undefined }
  | { readonly kind: 'closing'; readonly closeTimer: NodeJS.Timeout }
  | { readonly kind: 'released' }
  | { readonly kind: 'ended' };

/**
 * An upstream stream taken out of its link to be carried elsewhere (another process of the proxy,
 * on upgrade): the connected socket, and the server's current stream header, which the adopting
 * link reads again so that its scanner stands inside the stream with the same namespaces in scope.
 */
export interface ReleasedUpstream {
  readonly socket: Socket;
  readonly serverHeader: Buffer;
}

/**
 * One XML stream to the legacy server, on behalf of one client session. Created connected (and
 * with TLS negotiated on the hop if configured) by `UpstreamLink.connect`; the session then opens
 * the stream with the client's header. `release` and `adopt` move an open stream to a new link
 * without the server noticing.
 */
export class UpstreamLink implements UpstreamStream {
  private handler: UpstreamHandler | undefined;
  private readonly scanner: StreamScanner;
  private readonly writer: CoalescingWriter;
  private phase: UpstreamPhase = { kind: 'open', headerTimer: undefined, keepaliveTimer: undefined };
  /** The server closed its stream (it may do so before or after the proxy closes its own). */
  private serverClosed = false;
  private wroteSinceKeepalive = false;
  /** The server's current stream header, kept for `release`. */
  private serverHeader: Buffer | undefined;
  /** What the server's current stream header declares beyond the default namespace and `stream`. */
  private inherited: InheritedNamespaces | undefined;
  private readonly onData = (chunk: Buffer): void => this.scanner.write(chunk);
  private readonly onDrain = (): void => this.handler?.onDrain();
  private readonly onError = (err: Error): void => this.log.debug({ err: err.message }, 'upstream socket error');
  private readonly onClose = (): void => {
    const phase = this.phase;
    if (phase.kind === 'ended' || phase.kind === 'released') return;
    this.clearTimers();
    this.phase = { kind: 'ended' };
    this.handler?.onEnd(this.serverClosed);
  };

  private constructor(
    private readonly socket: Socket,
    private readonly target: UpstreamTarget,
    private readonly log: Logger,
  ) {
    this.scanner = new StreamScanner(
      {
        onStreamOpen: (header) => {
          if (this.phase.kind === 'open') {
            clearTimeout(this.phase.headerTimer);
            this.phase.headerTimer = undefined;
          }
          this.serverHeader = Buffer.from(header.bytes);
          this.inherited = InheritedNamespaces.of(header);
          this.handler?.onStreamOpen(header);
        },
        // The proxy writes its own header to the client: prefixes declared on the server's header
        // are made explicit on each element that uses them, before anyone reads or queues it.
        onElement: (element) => this.handler?.onElement(this.inherited === undefined ? element : this.inherited.applyTo(element)),
        onStreamClose: () => {
          this.serverClosed = true;
          // RFC 6120 §4.4: both streams are closed once the server answers our close; the TCP
          // connection can go now, whatever the session (perhaps closed already) does with the event.
          if (this.phase.kind === 'closing') this.writer.end();
          this.handler?.onStreamClose();
        },
        onError: (error) => {
          this.log.warn({ code: error.code, err: error.message }, 'legacy server sent invalid XML');
          this.failWith(
            new UpstreamError(ErrorCode.UPSTREAM_CLOSED, `legacy server sent invalid XML: ${error.message}`, {
              cause: error,
              text: 'legacy server sent invalid XML',
            }),
          );
        },
      },
      { maxStanzaBytes: UPSTREAM_MAX_STANZA_BYTES, maxDepth: UPSTREAM_MAX_DEPTH },
      // The legacy server's own serialisation of what other users wrote (stream-scanner.ts NameChecks).
      'top-level',
    );
    this.writer = new CoalescingWriter(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  /**
   * Connects to the legacy server; negotiates STARTTLS on the hop first when configured
   * (RFC 6120 §5). Rejects with an UpstreamError (`remote-connection-failed`) on refusal,
   * timeout or a failed TLS negotiation.
   */
  static async connect(target: UpstreamTarget, log: Logger): Promise<UpstreamLink> {
    const socket = await connectSocket(target);
    try {
      const ready = target.security === 'starttls' ? await negotiateStartTls(socket, target) : socket;
      return new UpstreamLink(ready, target, log);
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /**
   * A link for a stream that another link released: the scanner reads the server's header again
   * (reporting nothing: no handler is installed yet) and goes on with the socket's next byte as the
   * next element. The link starts paused, as `release` left the socket: install the handler, then
   * `resume()`. The stream is past authentication, so the caller usually starts the keepalive.
   */
  static adopt(released: ReleasedUpstream, target: UpstreamTarget, log: Logger): UpstreamLink {
    const link = new UpstreamLink(released.socket, target, log);
    released.socket.pause();
    link.scanner.write(released.serverHeader);
    return link;
  }

  get ended(): boolean {
    return this.phase.kind === 'ended' || this.phase.kind === 'released';
  }

  setHandler(handler: UpstreamHandler): void {
    this.handler = handler;
  }

  /**
   * Opens (or, after SASL success, restarts) the XML stream towards the server. A server that
   * does not answer with its own header within the connect timeout fails the link.
   */
  sendHeader(attrs: StreamHeaderAttrs): void {
    const phase = this.phase;
    if (phase.kind !== 'open') return;
    this.write(renderStreamHeader(attrs));
    clearTimeout(phase.headerTimer);
    const timeoutMs = this.target.connectTimeoutMs;
    phase.headerTimer = setTimeout(() => {
      this.failWith(
        new UpstreamError(
          ErrorCode.UPSTREAM_CONNECT,
          `legacy server ${this.target.host}:${this.target.port} sent no stream header within ${timeoutMs} ms`,
          { text: 'legacy server did not answer' },
        ),
      );
    }, timeoutMs);
    phase.headerTimer.unref();
  }

  private failWith(error: UpstreamError): void {
    if (this.ended) return;
    this.handler?.onFailure(error);
    this.socket.destroy();
  }

  send(element: Buffer | string): boolean {
    return this.write(element);
  }

  /**
   * RFC 6120 §4.6.1 whitespace keepalive: from now on, a space is written whenever nothing was
   * written for `intervalMs`. Needed once bound: the proxy answers the client's `<r/>` pings
   * itself and keeps the stream while the client hibernates, so the legacy server may otherwise
   * see an idle connection. Never before authentication (RFC 6120 §6.3.5: no whitespace in SASL).
   */
  startKeepalive(intervalMs: number): void {
    const phase = this.phase;
    if (phase.kind !== 'open' || phase.keepaliveTimer !== undefined) return;
    phase.keepaliveTimer = setInterval(() => {
      if (!this.wroteSinceKeepalive) this.write(' ');
      this.wroteSinceKeepalive = false;
    }, intervalMs);
    phase.keepaliveTimer.unref();
  }

  /** The next thing the server sends is a new stream header (after SASL success). */
  expectRestart(): void {
    this.scanner.restart();
  }

  /**
   * Closes the stream cleanly and waits, for a bounded time, for the server to close its side; the
   * socket is ended as soon as the server's `</stream:stream>` is there (or at once if it already was).
   */
  close(): void {
    if (this.phase.kind !== 'open') return;
    this.clearTimers();
    this.write(STREAM_CLOSE);
    if (this.serverClosed) this.writer.end();
    const closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_WAIT_MS);
    closeTimer.unref();
    this.phase = { kind: 'closing', closeTimer };
  }

  /** A released link leaves its socket alone: it belongs to the adopter (a resumed socket without its reader would lose what it reads). */
  destroy(): void {
    if (this.phase.kind !== 'released') this.socket.destroy();
  }

  pause(): void {
    if (this.phase.kind !== 'released') this.socket.pause();
  }

  resume(): void {
    if (this.phase.kind !== 'released') this.socket.resume();
  }

  /**
   * Takes the stream out of this link, for {@link UpstreamLink.adopt} elsewhere, without a byte
   * to the server. Only a stream that can continue on another scanner qualifies: open, the
   * server's header read and its stream not closed, nothing of an element held half-read, nothing
   * written and not yet sent, and the hop not TLS (TLS state cannot leave the process). Bytes the
   * socket already buffered are scanned first, so their elements reach the handler before the
   * release. Returns `undefined`, and changes nothing, when the stream does not qualify now.
   * The socket stays paused: what the server sends from now on waits in it for the adopter.
   */
  release(): ReleasedUpstream | undefined {
    if (this.phase.kind !== 'open' || this.serverHeader === undefined || this.serverClosed) return undefined;
    if (this.target.security !== 'plain') return undefined;
    this.socket.pause();
    // On a paused socket, read() hands everything it buffered to the 'data' listener: the scanner.
    this.socket.read();
    this.writer.flush();
    // What the scanner reported may have made the owner close or drop the stream meanwhile.
    if (this.scanner.midElement || this.socket.writableLength > 0 || this.phase.kind !== 'open') {
      if (!this.ended) this.socket.resume();
      return undefined;
    }
    this.clearTimers();
    this.phase = { kind: 'released' };
    this.socket.off('data', this.onData);
    this.socket.off('drain', this.onDrain);
    this.socket.off('error', this.onError);
    this.socket.off('close', this.onClose);
    return { socket: this.socket, serverHeader: this.serverHeader };
  }

  private clearTimers(): void {
    const phase = this.phase;
    if (phase.kind === 'open') {
      clearTimeout(phase.headerTimer);
      clearInterval(phase.keepaliveTimer);
    } else if (phase.kind === 'closing') {
      clearTimeout(phase.closeTimer);
    }
  }

  private write(data: Buffer | string): boolean {
    if (this.ended || this.socket.destroyed) return true;
    this.wroteSinceKeepalive = true;
    return this.writer.write(data);
  }
}

function connectSocket(target: UpstreamTarget): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const where = `${target.host}:${target.port}`;
    const tls = {
      servername: target.serverName ?? target.domain,
      rejectUnauthorized: target.rejectUnauthorized,
      ALPNProtocols: ['xmpp-client'],
    };
    let socket: Socket;
    let tcp: Socket | undefined;
    if (target.proxyProtocol !== undefined) {
      // The header goes first on the TCP connection, before any TLS (proxy-protocol.txt §2).
      const { origin, proxyProtocol } = target;
      const plain = netConnect({ host: target.host, port: target.port });
      plain.once('connect', () => {
        const own = (address: string | undefined, port: number | undefined) => ({ address: address ?? '', port: port ?? 0 });
        const header =
          origin === undefined
            ? tryBuildHeader(proxyProtocol, own(plain.localAddress, plain.localPort), own(plain.remoteAddress, plain.remotePort), 'local')
            : tryBuildHeader(proxyProtocol, origin.client, origin.listener, 'proxy');
        // Thrown here, an error would leave the event loop: the connection fails instead.
        if (header === undefined)
          plain.destroy(new Error(`no PROXY protocol header can name ${origin?.client.address ?? 'this connection'}`));
        else plain.write(header);
      });
      socket = target.security === 'tls' ? tlsConnect({ socket: plain, ...tls }) : plain;
      if (socket !== plain) plain.on('error', (err) => socket.destroy(err));
      tcp = plain;
    } else {
      const address = { host: target.host, port: target.port };
      socket = target.security === 'tls' ? tlsConnect({ ...address, ...tls }) : netConnect(address);
    }
    const readyEvent = target.security === 'tls' ? 'secureConnect' : 'connect';
    const timer = setTimeout(() => {
      socket.destroy();
      tcp?.destroy();
      reject(
        new UpstreamError(ErrorCode.UPSTREAM_CONNECT, `legacy server ${where} did not accept within ${target.connectTimeoutMs} ms`, {
          text: 'legacy server unreachable',
        }),
      );
    }, target.connectTimeoutMs);
    socket.once(readyEvent, () => {
      clearTimeout(timer);
      resolve(socket);
    });
    // Stays installed: an error after the promise settled must not become an uncaught exception
    // before the link installs its own listener (a settled promise ignores the reject).
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(
        new UpstreamError(ErrorCode.UPSTREAM_CONNECT, `cannot connect to legacy server ${where}: ${err.message}`, {
          cause: err,
          text: 'legacy server unreachable',
        }),
      );
    });
  });
}

/**
 * STARTTLS on the hop (RFC 6120 §5.4): open a stream, read the features, send `<starttls/>`,
 * wait for `<proceed/>`, then upgrade. The session later opens a fresh stream over TLS. The whole
 * negotiation, TLS handshake included, must finish within the connect timeout; on failure both
 * sockets are destroyed.
 */
function negotiateStartTls(socket: Socket, target: UpstreamTarget): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let secure: Socket | undefined;
    const fail = (message: string, cause?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeAllListeners('data');
      secure?.destroy();
      socket.destroy();
      reject(
        new UpstreamError(ErrorCode.UPSTREAM_TLS, `STARTTLS with legacy server ${target.host}:${target.port}: ${message}`, {
          cause,
          text: 'legacy server TLS failed',
        }),
      );
    };
    const timer = setTimeout(() => {
      const step = secure === undefined ? 'no answer' : 'TLS handshake not complete';
      fail(`${step} within ${target.connectTimeoutMs} ms`);
    }, target.connectTimeoutMs);
    const scanner = new StreamScanner(
      {
        onStreamOpen: () => undefined,
        onElement: (element) => {
          if (element.localName === 'features') {
            if (!element.bytes.includes('urn:ietf:params:xml:ns:xmpp-tls')) {
              fail('the server does not offer STARTTLS');
              return;
            }
            socket.write(`<starttls xmlns='${NS.tls}'/>`);
          } else if (element.localName === 'proceed' && element.ns === NS.tls) {
            socket.removeAllListeners('data');
            const tls = tlsConnect({
              socket,
              servername: target.serverName ?? target.domain,
              rejectUnauthorized: target.rejectUnauthorized,
            });
            secure = tls;
            tls.once('secureConnect', () => {
              if (settled) return;
              settled = true;
              clearTimeout(timer);
              resolve(tls);
            });
            tls.on('error', (err) => fail(err.message, err));
          } else {
            fail(`unexpected <${element.name}/>`);
          }
        },
        onStreamClose: () => fail('the server closed the stream'),
        onError: (error) => fail(error.message, error),
      },
      { maxStanzaBytes: UPSTREAM_MAX_STANZA_BYTES, maxDepth: UPSTREAM_MAX_DEPTH },
      'top-level',
    );
    socket.on('data', (chunk: Buffer) => scanner.write(chunk));
    socket.once('close', () => fail('connection closed'));
    socket.write(renderStreamHeader({ to: target.domain, version: '1.0' }));
  });
}
