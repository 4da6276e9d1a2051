/**
 * A client link over XMPP-over-WebSocket (RFC 7395). Each WebSocket message is one complete XML
 * element: `<open/>` and `<close/>` in the framing namespace stand for the stream header and the
 * stream close, everything else is a top-level element of the stream. The session code sees the
 * same events as on a TCP link, so resumption across transports needs nothing special.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { RawData, WebSocket } from 'ws';
import { ErrorCode, StreamError } from '../errors.js';
import { parseElement } from '../xml/element.js';
import { renderAttrs } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import { renderStreamError } from '../xml/stream-error.js';
import { declaration, declareOnStartTag, startTagName } from '../xml/namespace-declarations.js';
import type { StreamHeaderAttrs } from '../xml/stream-header.js';
import { scanFragment, type ScannedElement, type ScannerLimits, type StreamHeader } from '../xml/stream-scanner.js';
import type { ClientLink, ClientLinkHandler, LinkEnd, LinkEndpoints } from './client-link.js';
import { newStreamId } from './socket-client-link.js';

/** How long a closing link waits for the client's WebSocket close frame before dropping the socket. */
const CLOSE_WAIT_MS = 2000;

/**
 * `send` returns false once this many bytes wait in the WebSocket's send buffer (ws's queue plus the
 * socket's), and `onDrain` follows when the buffer is back at or below it.
 */
const WEBSOCKET_HIGH_WATER_MARK_BYTES = 1024 * 1024;

/** RFC 6455 §7.4.1 close status codes the link uses. */
export const WebSocketCloseCode = {
  /** Normal closure: after `<close/>`, with or without a stream error before it. */
  NORMAL: 1000,
  /** "Going away, such as a server going down": after a `system-shutdown` stream error. */
  GOING_AWAY: 1001,
  /** "An endpoint that understands only text data MAY send this if it receives a binary message". */
  UNSUPPORTED_DATA: 1003,
  /** "A message that is too big for it to process": after a stanza-too-big stream error. */
  MESSAGE_TOO_BIG: 1009,
} as const;

/** The framing elements the link writes (RFC 7395 §3.4, §3.6). */
const FRAMING_CLOSE = `<close xmlns='${NS.framing}'/>`;

/** What a WebSocket link needs. */
export interface WebSocketClientLinkOptions {
  /** An open server-side WebSocket whose subprotocol is `xmpp`. */
  readonly ws: WebSocket;
  /** The connection it runs on, as the HTTP server read it (`req.socket`, after TLS). */
  readonly socket: Duplex;
  /** The client's address for logs (`address:port`, or the forwarded address behind a trusted proxy). */
  readonly remote: string;
  /** The client's IP address (forwarded by a trusted reverse proxy, or the peer's). */
  readonly address: string;
  /** The client (its port 0 when forwarded) and the listener address, for a PROXY protocol header upstream. */
  readonly endpoints: LinkEndpoints;
  /** Scanner limits before authentication; the session raises `maxStanzaBytes` after SASL success. */
  readonly limits: ScannerLimits;
  /** The WebSocket server's `maxPayload` (the post-authentication stanza limit), named in the error when ws refuses a message. */
  readonly maxPayloadBytes: number;
  /** Milliseconds between WebSocket pings; a ping still unanswered at the next one ends the link as `lost`. 0 = no pings. */
  readonly pingIntervalMs: number;
  readonly log: Logger;
}

/**
 * What a WebSocket client may send before SASL success, in stanza limits: an opening, SASL and
 * perhaps a pipelined resume take a few hundred bytes; the rest of the budget is slack.
 */
const PRE_AUTH_BUDGET_STANZAS = 4;

/** Where a WebSocket link stands. */
type LinkPhase =
  /** Before the client's first `<open/>` (RFC 7395 §3.4): only `<open/>` or `<close/>` may come. */
  | 'awaiting-open'
  /** The XML stream is open. */
  | 'stream'
  /** The client sent `<close/>` (RFC 7395 §3.6); later messages are ignored. */
  | 'peer-closed'
  /** The client broke a rule and the session was told; later messages are ignored. */
  | 'protocol-error'
  /** The proxy closed or failed the stream and waits for the WebSocket to close. */
  | 'closing'
  /** The WebSocket is closed; `onEnd` was called. */
  | 'ended';

/**
 * A client connection over WebSocket (RFC 7395). TLS, when present, was done by the HTTPS server
 * before the upgrade; there is no STARTTLS here (RFC 7395 §3.7 restarts only after SASL).
 */
export class WebSocketClientLink implements ClientLink {
  readonly transport = 'websocket' as const;
  readonly remote: string;
  readonly address: string;
  readonly endpoints: LinkEndpoints;

  private readonly ws: WebSocket;
  /** The connection under the WebSocket (TLS already removed), where the bytes before authentication are counted. */
  private readonly socket: Duplex;
  /** Bytes the client may send before SASL success: ws holds an unfinished message whole, whatever its size within maxPayload. */
  private readonly preAuthBudget: number;
  private preAuthBytes = 0;
  private readonly log: Logger;
  private readonly maxPayloadBytes: number;
  private handler: ClientLinkHandler | undefined;
  private phase: LinkPhase = 'awaiting-open';
  private limits: ScannerLimits;
  private headerSent = false;
  /** How the link will end, decided by the first cause that happens (a WebSocket close without one is 'lost'). */
  private endCause: LinkEnd | undefined;
  /** The WebSocket close code `fail` uses instead of 1000 (binary message received). */
  private protocolCloseCode: number | undefined;
  private paused = false;
  private awaitingDrain = false;
  /** False from a ping until its pong. */
  private pongReceived = true;
  private readonly pingTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;

  constructor(options: WebSocketClientLinkOptions) {
    this.ws = options.ws;
    this.remote = options.remote;
    this.address = options.address;
    this.endpoints = options.endpoints;
    this.limits = { ...options.limits };
    this.maxPayloadBytes = options.maxPayloadBytes;
    this.log = options.log;
    this.socket = options.socket;
    this.preAuthBudget = PRE_AUTH_BUDGET_STANZAS * this.limits.maxStanzaBytes;
    this.socket.on('data', this.onPreAuthData);
    this.ws.on('message', this.onMessage);
    this.ws.on('pong', this.onPong);
    this.ws.on('error', this.onWsError);
    this.ws.on('close', this.onWsClose);
    if (options.pingIntervalMs > 0) {
      this.pingTimer = setInterval(this.onPingTimer, options.pingIntervalMs);
      this.pingTimer.unref();
    }
  }

  get ended(): boolean {
    return this.phase === 'ended';
  }

  setHandler(handler: ClientLinkHandler): void {
    this.handler = handler;
  }

  /** RFC 7395 §3.4: the server answers `<open/>` with its own `<open from id version xml:lang/>`. */
  sendHeader(attrs: StreamHeaderAttrs): void {
    this.headerSent = true;
    this.write(
      `<open xmlns='${NS.framing}'` +
        renderAttrs({ to: attrs.to, from: attrs.from, id: attrs.id, version: attrs.version, 'xml:lang': attrs.lang }) +
        '/>',
    );
  }

  send(element: Buffer | string): boolean {
    if (this.phase === 'closing' || this.phase === 'ended') return true;
    const bytes = typeof element === 'string' ? Buffer.from(element, 'utf8') : element;
    const framed = withNamespaceDeclarations(bytes);
    // COMPAT(whitespace keepalives): RFC 7395 §3.3.3 makes every message one element, so a
    // whitespace-only write has no WebSocket form; WebSocket pings do its job here (§3.8).
    if (framed === undefined) return true;
    return this.write(framed);
  }

  /**
   * RFC 7395 §3.5: a stream error is a `<stream:error/>` message followed by `<close/>`; the
   * `<open/>` comes first when none was sent (RFC 6120 §4.9.1.2). Then the WebSocket is closed.
   */
  fail(error: StreamError): void {
    if (this.phase === 'closing' || this.phase === 'ended') return;
    if (!this.headerSent) this.sendHeader({ id: newStreamId(), version: '1.0' });
    const streamError = withNamespaceDeclarations(Buffer.from(renderStreamError(error), 'utf8'));
    if (streamError !== undefined) this.write(streamError);
    this.write(FRAMING_CLOSE);
    this.beginClose(`stream error ${error.condition}`, this.protocolCloseCode ?? closeCodeFor(error));
  }

  /** RFC 7395 §3.6: `<close/>`, then the WebSocket closing handshake. */
  close(): void {
    if (this.phase === 'closing' || this.phase === 'ended') return;
    this.write(FRAMING_CLOSE);
    this.beginClose('closed by proxy', WebSocketCloseCode.NORMAL);
  }

  destroy(reason: string): void {
    if (this.phase === 'ended') return;
    this.endCause ??= { kind: 'local', reason };
    this.ws.terminate();
  }

  /**
   * SASL succeeded (RFC 7395 §3.7: the client then sends a new `<open/>`, a message of its own, so
   * nothing changes in the framing): the budget of bytes before authentication ends.
   */
  expectRestart(): void {
    this.socket.off('data', this.onPreAuthData);
  }

  setLimits(limits: Partial<ScannerLimits>): void {
    this.limits = { ...this.limits, ...limits };
  }

  pause(): void {
    this.paused = true;
    this.ws.pause();
  }

  resume(): void {
    this.paused = false;
    this.ws.resume();
  }

  // --- from the client ---

  private readonly onMessage = (data: RawData, isBinary: boolean): void => {
    if (this.phase !== 'awaiting-open' && this.phase !== 'stream') return;
    if (isBinary) {
      // RFC 7395 §3.2: messages are text (UTF-8); RFC 6455 §7.4.1 names 1003 for a text-only endpoint
      // that receives binary data. The stream error comes first so the session ends, not only the socket.
      this.protocolCloseCode = WebSocketCloseCode.UNSUPPORTED_DATA;
      this.protocolError(
        new StreamError(
          ErrorCode.XML_ENCODING,
          'unsupported-encoding',
          'binary WebSocket message: RFC 7395 §3.2 allows only text (UTF-8) messages',
        ),
      );
      return;
    }
    let element: ScannedElement;
    try {
      element = scanFragment(toBuffer(data), this.limits);
    } catch (err) {
      if (!(err instanceof StreamError)) throw err;
      this.protocolError(err);
      return;
    }
    if (element.ns === NS.framing) {
      this.onFramingElement(element);
      return;
    }
    if (this.phase === 'awaiting-open') {
      this.protocolError(
        new StreamError(
          ErrorCode.XML_INVALID_NAMESPACE,
          'invalid-namespace',
          `<${element.name}> before <open/>: RFC 7395 §3.4 opens the stream with <open xmlns='${NS.framing}'/>`,
        ),
      );
      return;
    }
    if (element.ns === undefined) {
      // COMPAT(several browser clients): RFC 7395 §3.3.3 wants xmlns='jabber:client' on every stanza,
      // but some clients leave it out. Read it as the content namespace, as a TCP stream would; the
      // bytes are forwarded unchanged, and the upstream stream's default namespace is jabber:client.
      element = { bytes: element.bytes, name: element.name, localName: element.localName, ns: NS.client };
    }
    this.handler?.onElement(element);
  };

  private onFramingElement(element: ScannedElement): void {
    switch (element.localName) {
      case 'open': {
        this.phase = 'stream';
        this.headerSent = false;
        this.handler?.onStreamOpen(openHeader(element));
        return;
      }
      case 'close':
        // RFC 7395 §3.6: the client closes the stream; the session answers with close().
        this.phase = 'peer-closed';
        this.endCause ??= { kind: 'clean' };
        this.handler?.onStreamClose();
        return;
      default:
        this.protocolError(
          new StreamError(
            ErrorCode.UNEXPECTED_ELEMENT,
            'unsupported-stanza-type',
            `<${element.name}> in the framing namespace: RFC 7395 defines only <open/> and <close/>`,
          ),
        );
    }
  }

  private readonly onPreAuthData = (chunk: Buffer): void => {
    this.preAuthBytes += chunk.length;
    if (this.preAuthBytes <= this.preAuthBudget || (this.phase !== 'awaiting-open' && this.phase !== 'stream')) return;
    this.socket.off('data', this.onPreAuthData);
    this.protocolError(
      new StreamError(
        ErrorCode.PRE_AUTH_BYTES,
        'policy-violation',
        `more than ${this.preAuthBudget} bytes before authentication (${PRE_AUTH_BUDGET_STANZAS} × limits.maxStanzaBytesPreAuth)`,
      ),
    );
  };

  private protocolError(error: StreamError): void {
    // The proxy ends this stream: whatever the session does, the link ends as 'local' (never hibernate).
    this.phase = 'protocol-error';
    this.endCause ??= { kind: 'local', reason: `protocol error ${error.condition}` };
    this.log.debug({ code: error.code, err: error.message }, 'client protocol error');
    this.handler?.onProtocolError(error);
  }

  private readonly onWsError = (err: Error & { code?: string }): void => {
    // ws reports refused frames here after it has already sent its close frame (1002, 1007, 1008, 1009).
    if (this.phase !== 'awaiting-open' && this.phase !== 'stream') {
      this.log.debug({ err: err.message, wsCode: err.code }, 'client WebSocket error after the stream ended');
      return;
    }
    switch (err.code) {
      case 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH':
        this.protocolError(
          new StreamError(
            ErrorCode.STANZA_TOO_BIG,
            'policy-violation',
            `WebSocket message exceeds the limit of ${this.maxPayloadBytes} bytes`,
            {
              appCondition: { name: 'stanza-too-big', xmlns: NS.errors },
            },
          ),
        );
        return;
      case 'WS_ERR_INVALID_UTF8':
        this.protocolError(
          new StreamError(
            ErrorCode.XML_ENCODING,
            'unsupported-encoding',
            'WebSocket text message is not valid UTF-8 (RFC 7395 §3.2, RFC 6120 §11.6)',
          ),
        );
        return;
      case undefined:
        this.log.debug({ err: err.message }, 'client WebSocket error');
        return;
      default:
        this.protocolError(
          new StreamError(ErrorCode.XML_NOT_WELL_FORMED, 'not-well-formed', `WebSocket protocol error (${err.code}): ${err.message}`),
        );
    }
  };

  private readonly onPong = (): void => {
    this.pongReceived = true;
  };

  /** RFC 7395 §3.8: WebSocket pings check the connection; a missed pong is a dead link (like a dead TCP peer). */
  private readonly onPingTimer = (): void => {
    if (this.phase === 'ended' || this.phase === 'closing') return;
    // A paused link reads nothing, pongs included: its silence is ours, not the client's.
    if (this.paused) return;
    if (!this.pongReceived) {
      this.endCause ??= { kind: 'lost', reason: 'no WebSocket pong before the next ping' };
      this.log.debug('client missed a WebSocket pong; dropping the connection');
      this.ws.terminate();
      return;
    }
    this.pongReceived = false;
    this.ws.ping();
  };

  private readonly onWsClose = (code: number): void => {
    if (this.phase === 'ended') return;
    this.phase = 'ended';
    clearInterval(this.pingTimer);
    clearTimeout(this.closeTimer);
    const end = this.endCause ?? { kind: 'lost', reason: `WebSocket closed (${code}) without <close/>` };
    this.log.debug({ end: end.kind, wsCode: code }, 'client WebSocket closed');
    this.handler?.onEnd(end);
  };

  // --- to the client ---

  /** One WebSocket text message per element (RFC 7395 §3.3.3). */
  private write(data: Buffer | string): boolean {
    if (this.ws.readyState !== this.ws.OPEN) return true;
    this.ws.send(data, { binary: false }, this.onSent);
    if (this.ws.bufferedAmount <= WEBSOCKET_HIGH_WATER_MARK_BYTES) return true;
    this.awaitingDrain = true;
    return false;
  }

  private readonly onSent = (err?: Error | null): void => {
    // The socket's write callback: null (not undefined) on success.
    if (err !== undefined && err !== null) {
      this.log.debug({ err: err.message }, 'client WebSocket write failed');
      return;
    }
    if (!this.awaitingDrain || this.ws.bufferedAmount > WEBSOCKET_HIGH_WATER_MARK_BYTES) return;
    this.awaitingDrain = false;
    this.handler?.onDrain();
  };

  private beginClose(reason: string, code: number): void {
    this.phase = 'closing';
    this.endCause ??= { kind: 'local', reason };
    // The reason of a close frame is at most 123 bytes (RFC 6455 §5.5.1); ours are short ASCII.
    this.ws.close(code, reason.slice(0, 123));
    // RFC 7395 §3.6: the client should answer the closing handshake, but not forever.
    this.closeTimer = setTimeout(() => this.ws.terminate(), CLOSE_WAIT_MS);
    this.closeTimer.unref();
  }
}

function closeCodeFor(error: StreamError): number {
  if (error.condition === 'system-shutdown') return WebSocketCloseCode.GOING_AWAY;
  if (error.code === ErrorCode.STANZA_TOO_BIG) return WebSocketCloseCode.MESSAGE_TOO_BIG;
  return WebSocketCloseCode.NORMAL;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** The stream header the session sees for an `<open/>`: its attributes, as on a TCP stream (RFC 7395 §3.4). */
function openHeader(element: ScannedElement): StreamHeader {
  // Off the hot path (once per stream and restart); the scanner already checked the bytes.
  const open = parseElement(element.bytes);
  const attrs: Record<string, string> = {};
  for (const [name, value] of Object.entries(open.attrs as Record<string, unknown>)) {
    if (typeof value === 'string') attrs[name] = value;
  }
  return { bytes: element.bytes, name: element.name, attrs };
}

const DECLARE_CLIENT = declaration(undefined, NS.client);
const DECLARE_STREAM = declaration('stream', NS.stream);

/**
 * RFC 7395 §3.3.3: every message is a standalone document, so an element relayed from a TCP stream
 * must declare the namespaces it inherited from the stream header. Adds ` xmlns='jabber:client'` to
 * an unprefixed element whose start tag declares no default namespace (stanzas, and anything else
 * unprefixed: on the TCP stream it was in jabber:client too), and
 * ` xmlns:stream='http://etherx.jabber.org/streams'` to a `stream:` element that lacks it
 * (features, error). Any other prefix the legacy server declared on its header was made explicit on
 * the element as it left the upstream scanner (InheritedNamespaces).
 *
 * Returns the bytes unchanged when nothing is missing (or when they do not start with a start tag
 * the walk understands), and `undefined` for whitespace only (nothing to send).
 */
function withNamespaceDeclarations(bytes: Buffer): Buffer | undefined {
  let start = 0;
  while (isXmlSpace(bytes[start])) start++;
  if (start === bytes.length) return undefined;
  if (start > 0) bytes = bytes.subarray(start);
  const name = startTagName(bytes);
  if (name === undefined) return bytes;
  if (name.prefix === undefined) return declareOnStartTag(bytes, [DECLARE_CLIENT]);
  if (name.prefix === 'stream') return declareOnStartTag(bytes, [DECLARE_STREAM]);
  return bytes;
}

function isXmlSpace(b: number | undefined): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}
