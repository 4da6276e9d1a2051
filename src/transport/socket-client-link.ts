import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { ErrorCode, StreamError, hostUnknown } from '../errors.js';
import { InheritedNamespaces } from '../xml/namespace-declarations.js';
import { NS } from '../xml/namespaces.js';
import { renderStreamError } from '../xml/stream-error.js';
import { renderStreamHeader, STREAM_CLOSE, type StreamHeaderAttrs } from '../xml/stream-header.js';
import { StreamScanner, type ScannedElement, type ScannerLimits, type StreamHeader } from '../xml/stream-scanner.js';
import { STARTTLS_REQUIRED_FEATURES } from '../session/features.js';
import { CoalescingWriter } from './coalescing-writer.js';
import { normalizeAddress } from './ip-range.js';
import type { Endpoint } from './proxy-protocol.js';
import type { ClientLink, ClientLinkHandler, LinkEnd, LinkEndpoints, TransportKind } from './client-link.js';
import type { TlsCredentials } from './tls-credentials.js';
import { refuseRenegotiation } from './live-credentials.js';

/** How long a closing link waits for the client to close its side before dropping the socket. */
const CLOSE_WAIT_MS = 2000;
/** RFC 8446 §5.1 / RFC 5246 §6.2.1: ContentType `handshake`, the first byte of a ClientHello record. */
const TLS_HANDSHAKE_RECORD = 0x16;

/** XML 1.0 §2.3 S: space, tab, CR, LF. */
function isXmlWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0d || byte === 0x0a;
}
/** '>': every element, and so `<starttls/>`, ends at one. */
const GT = 0x3e;

/** What a STARTTLS link needs before TLS: certificates and the list of served domains. */
export interface StartTlsOptions {
  readonly credentials: TlsCredentials;
  readonly isServedDomain: (domain: string) => boolean;
  /** Told the code of each refusal before TLS and of a failed TLS handshake, for the metrics (no session sees them). */
  readonly refused: (code: ErrorCode) => void;
}

export interface SocketClientLinkOptions {
  /** A plain socket for `starttls`; an established TLS socket for `directtls`. */
  readonly socket: Socket;
  /** The client: the socket's peer, or the one a load balancer's PROXY protocol header named (connection-gate.ts). */
  readonly client: Endpoint;
  readonly transport: Extract<TransportKind, 'starttls' | 'directtls'>;
  readonly limits: ScannerLimits;
  readonly log: Logger;
  /** Present for `starttls`: the link negotiates TLS itself before the session sees a stream. */
  readonly startTls?: StartTlsOptions;
}

/**
 * Where a socket link stands. `pre-tls` and `awaiting-client-hello` (after `<proceed/>`, until
 * the first byte of the client's TLS handshake) only exist on the STARTTLS transport.
 */
type LinkPhase = 'pre-tls' | 'awaiting-client-hello' | 'tls-handshake' | 'stream' | 'closing' | 'ended';

/**
 * A client connection over TCP: STARTTLS (RFC 6120 §5) or direct TLS (XEP-0368). Before TLS the
 * link answers the client itself, with its own stream id and `<starttls><required/>`; the legacy
 * server is not contacted before TLS.
 */
export class SocketClientLink implements ClientLink {
  readonly transport: SocketClientLinkOptions['transport'];
  readonly remote: string;
  readonly address: string;
  readonly endpoints: LinkEndpoints;

  private socket: Socket;
  private scanner: StreamScanner;
  private handler: ClientLinkHandler | undefined;
  private phase: LinkPhase;
  private headerSent = false;
  /** What the client's current stream header declares beyond the default namespace and `stream`. */
  private inherited: InheritedNamespaces | undefined;
  private peerClosedStream = false;
  private localEndReason: string | undefined;
  private writer: CoalescingWriter;
  private closeTimer: NodeJS.Timeout | undefined;
  /** The domain the client named before TLS: picks the certificate when it sends no SNI. */
  private tlsServerName: string | undefined;
  /** Bytes the client sent between `<starttls/>` and its ClientHello, dropped (for the log). */
  private droppedBeforeTls = 0;
  private limits: ScannerLimits;
  private readonly log: Logger;
  private readonly startTls: StartTlsOptions | undefined;

  constructor(options: SocketClientLinkOptions) {
    this.transport = options.transport;
    this.socket = options.socket;
    this.writer = new CoalescingWriter(options.socket);
    this.remote = `${options.client.address}:${options.client.port}`;
    this.address = options.client.address;
    const listener = { address: normalizeAddress(options.socket.localAddress) ?? '0.0.0.0', port: options.socket.localPort ?? 0 };
    this.endpoints = { client: options.client, listener };
    this.limits = options.limits;
    this.log = options.log;
    this.startTls = options.startTls;
    this.phase = options.startTls !== undefined ? 'pre-tls' : 'stream';
    this.scanner = this.phase === 'pre-tls' ? this.preTlsScanner() : this.streamScanner();
    this.attachSocket(this.socket);
  }

  get ended(): boolean {
    return this.phase === 'ended';
  }

  setHandler(handler: ClientLinkHandler): void {
    this.handler = handler;
  }

  sendHeader(attrs: StreamHeaderAttrs): void {
    this.headerSent = true;
    this.write(renderStreamHeader(attrs));
  }

  send(element: Buffer | string): boolean {
    if (this.phase !== 'stream') return true;
    return this.write(element);
  }

  /**
   * A refusal the link decides itself, before TLS, where no session sees the stream: counted here
   * for the metrics. What the session or the proxy ends with `fail` they count themselves.
   */
  private refuse(error: StreamError): void {
    this.startTls?.refused(error.code);
    this.fail(error);
  }

  fail(error: StreamError): void {
    if (this.phase === 'closing' || this.phase === 'ended') return;
    // Before TLS no session has seen the stream yet: the refusal is logged here, with its code.
    if (this.phase === 'pre-tls') {
      this.log.info({ code: error.code, condition: error.condition, err: error.message }, 'stream error sent to client before TLS');
    }
    if (!this.headerSent) this.sendHeader({ id: newStreamId(), version: '1.0' });
    this.write(renderStreamError(error) + STREAM_CLOSE);
    this.beginClose(`stream error ${error.condition}`);
  }

  close(): void {
    if (this.phase === 'closing' || this.phase === 'ended') return;
    this.write(STREAM_CLOSE);
    this.beginClose('closed by proxy');
  }

  destroy(reason: string): void {
    if (this.phase === 'ended') return;
    this.localEndReason ??= reason;
    this.socket.destroy();
  }

  expectRestart(): void {
    this.scanner.restart();
  }

  setLimits(limits: Partial<ScannerLimits>): void {
    this.limits = { ...this.limits, ...limits };
    this.scanner.setLimits(limits);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  private attachSocket(socket: Socket): void {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onSocketError);
    socket.on('close', this.onSocketClose);
  }

  private detachSocket(socket: Socket): void {
    socket.off('data', this.onData);
    socket.off('drain', this.onDrain);
    socket.off('error', this.onSocketError);
    socket.off('close', this.onSocketClose);
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === 'pre-tls') this.scanPreTls(chunk);
    else if (this.phase === 'awaiting-client-hello') this.awaitClientHello(chunk);
    else this.scanner.write(chunk);
  };

  private readonly onDrain = (): void => {
    this.handler?.onDrain();
  };

  private readonly onSocketError = (err: Error): void => {
    this.log.debug({ err: err.message, code: (err as NodeJS.ErrnoException).code }, 'client socket error');
  };

  private readonly onSocketClose = (): void => {
    if (this.phase === 'ended') return;
    const wasClosing = this.phase === 'closing';
    this.phase = 'ended';
    clearTimeout(this.closeTimer);
    let end: LinkEnd;
    if (this.peerClosedStream) end = { kind: 'clean' };
    else if (wasClosing || this.localEndReason !== undefined) end = { kind: 'local', reason: this.localEndReason ?? 'closed by proxy' };
    else end = { kind: 'lost', reason: 'connection lost without stream close' };
    this.handler?.onEnd(end);
  };

  private write(data: Buffer | string): boolean {
    if (this.phase === 'ended' || this.socket.destroyed) return true;
    return this.writer.write(data);
  }

  private beginClose(reason: string): void {
    this.phase = 'closing';
    this.localEndReason ??= reason;
    // RFC 6120 §4.4: the closing entity waits for the peer's close, but not forever.
    this.writer.end();
    this.closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_WAIT_MS);
    this.closeTimer.unref();
  }

  // --- before TLS (STARTTLS transport only) ---

  private preTlsScanner(): StreamScanner {
    return new StreamScanner(
      {
        onStreamOpen: (header) => this.onPreTlsHeader(header),
        onElement: (element) => this.onPreTlsElement(element),
        onStreamClose: () => {
          if (this.phase === 'pre-tls') this.close();
        },
        onError: (error) => {
          if (this.phase === 'pre-tls') this.refuse(error);
        },
      },
      this.limits,
    );
  }

  /**
   * Feeds the pre-TLS scanner one piece at a time, each ending at a '>', so that when
   * `<starttls/>` has ended, the rest of the read is known and is not parsed as XML.
   */
  private scanPreTls(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length && this.phase === 'pre-tls') {
      const gt = chunk.indexOf(GT, start);
      const end = gt < 0 ? chunk.length : gt + 1;
      this.scanner.write(chunk.subarray(start, end));
      start = end;
    }
    if (this.phase === 'awaiting-client-hello' && start < chunk.length) this.awaitClientHello(chunk.subarray(start));
  }

  private onPreTlsHeader(header: StreamHeader): void {
    if (this.phase !== 'pre-tls') return;
    const to = header.attrs.to?.toLowerCase();
    const attrs = { from: to, id: newStreamId(), version: '1.0' };
    if (to === undefined || !this.startTls?.isServedDomain(to)) {
      this.sendHeader(attrs);
      this.refuse(hostUnknown(to));
      return;
    }
    this.sendHeader(attrs);
    this.write(STARTTLS_REQUIRED_FEATURES);
    this.tlsServerName = to;
  }

  private onPreTlsElement(element: ScannedElement): void {
    if (this.phase !== 'pre-tls') return;
    if (element.localName !== 'starttls' || element.ns !== NS.tls) {
      // RFC 6120 §5.3.1: TLS is mandatory-to-negotiate on this listener.
      this.refuse(new StreamError(ErrorCode.UNEXPECTED_ELEMENT, 'policy-violation', 'STARTTLS is required before anything else'));
      return;
    }
    this.write(`<proceed xmlns='${NS.tls}'/>`);
    this.phase = 'awaiting-client-hello';
  }

  /**
   * COMPAT(several clients; whitespace keepalives): some clients send whitespace after
   * `<starttls/>` (a space, a newline), in the same read or in a segment of their own, before their
   * ClientHello, although RFC 6120 §5.3.3 says "During STARTTLS negotiation, the entities MUST NOT
   * send any whitespace as separators between XML elements". After `<proceed/>` the stream's XML is
   * over (§5.4.2.3: the receiving entity "MUST consider the TLS negotiation to have begun"), so the
   * whitespace belongs to neither the stream nor TLS and is dropped; the first byte of a TLS
   * handshake record starts TLS. Anything else is neither, and the connection is dropped: no XML
   * may be sent after `<proceed/>`, so there is no stream error to give.
   */
  private awaitClientHello(bytes: Buffer): void {
    let at = 0;
    while (at < bytes.length && isXmlWhitespace(bytes[at]!)) at++;
    this.droppedBeforeTls += at;
    if (at === bytes.length) return;
    if (bytes[at] !== TLS_HANDSHAKE_RECORD) {
      this.log.info(
        { code: ErrorCode.TLS_HANDSHAKE, byte: bytes[at] },
        'client sent neither whitespace nor a TLS handshake after <proceed/>',
      );
      this.startTls?.refused(ErrorCode.TLS_HANDSHAKE);
      this.writer.flush(); // <proceed/> may still be corked when both arrive in one read
      this.destroy('not TLS after <proceed/>');
      return;
    }
    this.upgradeToTls(bytes.subarray(at));
  }

  /** Starts TLS over the plain socket; `first` holds the first bytes of the client's TLS handshake. */
  private upgradeToTls(first: Buffer): void {
    const startTls = this.startTls;
    if (startTls === undefined) return;
    this.phase = 'tls-handshake';
    if (this.droppedBeforeTls > 0)
      this.log.debug({ bytes: this.droppedBeforeTls }, 'dropped bytes between <starttls/> and the TLS handshake');
    const plain = this.socket;
    this.detachSocket(plain);
    this.writer.flush();
    // The TLS socket reads what is buffered on the plain socket first: hand back the part of this
    // read that is TLS. Paused, so that nothing flows out of the buffer before it does.
    plain.pause();
    plain.unshift(first);
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: startTls.credentials.contextFor(this.tlsServerName),
      SNICallback: startTls.credentials.sniCallback,
    });
    this.socket = secure;
    this.writer = new CoalescingWriter(secure);
    this.headerSent = false;
    secure.once('secure', () => {
      if (this.phase !== 'tls-handshake') return;
      this.phase = 'stream';
      refuseRenegotiation(secure);
      this.log.debug(
        { protocol: secure.getProtocol(), servername: (secure as { servername?: string }).servername },
        'client TLS established',
      );
    });
    this.scanner = this.streamScanner();
    this.attachSocket(secure);
    secure.on('error', (err) => {
      if (this.phase === 'tls-handshake') {
        this.log.info({ code: ErrorCode.TLS_HANDSHAKE, err: err.message }, 'client TLS handshake failed');
        this.startTls?.refused(ErrorCode.TLS_HANDSHAKE);
      }
    });
  }

  // --- the XML stream after TLS ---

  private streamScanner(): StreamScanner {
    return new StreamScanner(
      {
        onStreamOpen: (header) => {
          this.headerSent = false;
          this.inherited = InheritedNamespaces.of(header);
          this.handler?.onStreamOpen(header);
        },
        // The proxy writes its own header upstream: prefixes declared on the client's header are
        // made explicit on each element that uses them, as the legacy server never sees that header.
        onElement: (element) => this.handler?.onElement(this.inherited === undefined ? element : this.inherited.applyTo(element)),
        onStreamClose: () => {
          this.peerClosedStream = true;
          this.handler?.onStreamClose();
        },
        onError: (error) => this.handler?.onProtocolError(error),
      },
      this.limits,
    );
  }
}

/** A fresh stream id (RFC 6120 §4.7.3: unique and unpredictable). */
export function newStreamId(): string {
  return randomBytes(12).toString('base64url');
}
