/**
 * The XMPP-over-WebSocket listener (RFC 7395): an HTTP or HTTPS server that upgrades requests on
 * one path to WebSocket connections speaking the `xmpp` subprotocol, and serves XEP-0156 discovery
 * (`/.well-known/host-meta` and `host-meta.json`) on the same port.
 */
import {
  createServer as createHttpServer,
  STATUS_CODES,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { BlockList, isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { ConfigError, ErrorCode, ProxyError } from '../errors.js';
import parseForwarded from 'forwarded-parse';
import { clipped } from '../xml/sanitize.js';
import { escapeXml } from '../xml/escape.js';
import type { ScannerLimits } from '../xml/stream-scanner.js';
import type { ClientLink } from './client-link.js';
import { ConnectionGate } from './connection-gate.js';
import { addressList, isLoopbackHost, normalizeAddress } from './ip-range.js';
import type { Listener } from './listener.js';
import type { LiveCredentials } from './live-credentials.js';
import { WebSocketClientLink } from './websocket-link.js';

/** TLS handshakes that take longer than this are abandoned (slowloris before TLS). */
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;
/** HTTP requests (headers included) that take longer than this are abandoned. */
const HTTP_REQUEST_TIMEOUT_MS = 30_000;

/** RFC 7395 §3.1: the WebSocket subprotocol of XMPP. */
export const XMPP_SUBPROTOCOL = 'xmpp';
/** XEP-0156 §3: the link relation of an XMPP-over-WebSocket endpoint. */
const WEBSOCKET_LINK_REL = 'urn:xmpp:alt-connections:websocket';
/** The most frames one WebSocket message may come in (ws closes with 1008 beyond). */
const WEBSOCKET_MAX_FRAGMENTS = 128;
const HOST_META_PATH = '/.well-known/host-meta';
const HOST_META_JSON_PATH = '/.well-known/host-meta.json';

export interface WebSocketListenerOptions {
  /** Local address to bind. */
  readonly host: string;
  /** TCP port to bind; 0 = ephemeral. */
  readonly port: number;
  /** `true`: HTTPS (wss://) with `credentials`; `false`: plain HTTP (ws://), for a TLS-terminating reverse proxy in front. */
  readonly tls: boolean;
  /** Client TLS credentials; used when `tls` is true. */
  readonly credentials: LiveCredentials;
  /** URL path of the WebSocket endpoint, starting with `/` (other paths get 404). */
  readonly path: string;
  /** Allowed `Origin` values (`scheme://host[:port]`, compared case-insensitively); empty = any. A handshake without Origin is always allowed. */
  readonly allowedOrigins: readonly string[];
  /** Milliseconds between WebSocket pings to each client; 0 = none. */
  readonly pingIntervalMs: number;
  /** Reverse proxies (IP addresses, or `address/prefix` subnets) whose forwarding headers are believed. */
  readonly trustedProxies: readonly string[];
  /** Load balancers that send a PROXY protocol header before TLS and HTTP (config `proxyProtocolFrom`); empty = none. */
  readonly proxyProtocolFrom: readonly string[];
  /** Scanner limits before authentication for each new connection, read at accept (a reload may change them; the session raises `maxStanzaBytes` after SASL success). */
  readonly limits: () => ScannerLimits;
  /** Largest WebSocket message accepted at all: the post-authentication stanza limit (`limits.maxStanzaBytes` of the config). */
  readonly maxPayloadBytes: number;
  /** Told the code of each failed TLS handshake (no session sees them), for the metrics. */
  readonly refused: (code: ErrorCode) => void;
  readonly log: Logger;
  /** Called with each new client link and its session logger. */
  readonly onLink: (link: ClientLink, log: Logger) => void;
  /** Returns a fresh session id. */
  readonly newSid: () => string;
}

/** Who is at the other end of a request, as far as the listener may believe it. */
interface ClientAddress {
  /** For logs: `address:port` of the peer, or the forwarded client address. */
  readonly remote: string;
  /** The client's IP address (the peer's, or the forwarded one), for per-address limits. */
  readonly address: string;
  /** The client's port; 0 when a reverse proxy named only its address. */
  readonly port: number;
  /** The trusted reverse proxy the request came through, when a forwarded address was used. */
  readonly via: string | undefined;
}

/**
 * An XMPP-over-WebSocket listener (RFC 7395) with XEP-0156 discovery, same life cycle as
 * {@link TcpListener}: `listen()`, `stopAccepting()`, `destroyAll()`.
 */
export class WebSocketListener implements Listener {
  readonly server: Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
  /** Set once it stopped accepting (an upgrade, then the shutdown, may both ask). */
  private closing: Promise<void> | undefined;
  /** Every accepted TCP connection, from before its TLS handshake (the HTTP server tracks it only after). */
  private readonly rawSockets = new Set<Socket>();
  private readonly trusted: BlockList;
  /** Takes the server's connections: the PROXY protocol header first, when the listener has balancers. */
  private readonly gate: ConnectionGate;
  private readonly allowedOrigins: ReadonlySet<string>;

  constructor(private readonly options: WebSocketListenerOptions) {
    if (!options.path.startsWith('/')) {
      throw new ConfigError(ErrorCode.CONFIG_INVALID, `websocket path '${options.path}' does not start with '/'`);
    }
    this.trusted = addressList(options.trustedProxies, 'trustedProxies');
    this.allowedOrigins = new Set(options.allowedOrigins.map((origin) => origin.toLowerCase()));
    const httpOptions = { headersTimeout: HTTP_REQUEST_TIMEOUT_MS, requestTimeout: HTTP_REQUEST_TIMEOUT_MS };
    if (options.tls) {
      const server = createHttpsServer({
        ...options.credentials.serverOptions,
        ...httpOptions,
        handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
      });
      options.credentials.serve(server);
      this.server = server;
      this.server.on('tlsClientError', (err: Error, socket: Socket) => {
        options.log.info({ code: ErrorCode.TLS_HANDSHAKE, err: err.message, remote: socket.remoteAddress }, 'client TLS handshake failed');
        options.refused(ErrorCode.TLS_HANDSHAKE);
        socket.destroy();
      });
    } else {
      this.server = createHttpServer(httpOptions);
    }
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      // ws enforces the stanza limit on whole messages before buffering more (README, WebSocket).
      maxPayload: options.maxPayloadBytes,
      // RFC 7395 §3.3.3 asks for one complete element per *message*; how a message is cut into
      // frames is not the client's to choose alone: RFC 6455 §5.4 "Clients and servers MUST support
      // receiving both fragmented and unfragmented messages" (intermediaries may refragment), and
      // ws applies maxPayload to the whole message. Each fragment held costs a Buffer of its own
      // (about 100 bytes beyond its payload): one message in 16 000 one-byte fragments held 1.6 MB.
      // Browsers send a message in one frame; 128 fragments is far above what a client or an
      // intermediary needs, and bounds that overhead to about 13 KB per connection.
      maxFragments: WEBSOCKET_MAX_FRAGMENTS,
      // Compression over TLS invites CRIME/BREACH-style attacks and costs memory per connection.
      perMessageDeflate: false,
      handleProtocols: (protocols) => (protocols.has(XMPP_SUBPROTOCOL) ? XMPP_SUBPROTOCOL : false),
    });
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.server.on('connection', (socket: Socket) => {
      this.rawSockets.add(socket);
      socket.once('close', () => this.rawSockets.delete(socket));
    });
    this.server.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
    // Last: the gate takes over every 'connection' listener installed above (TLS's, HTTP's, ours).
    this.gate = new ConnectionGate(
      {
        proxyProtocolFrom: options.proxyProtocolFrom.length === 0 ? undefined : addressList(options.proxyProtocolFrom, 'proxyProtocolFrom'),
        refused: options.refused,
        log: options.log,
      },
      this.server,
    );
  }

  listen(inherited?: Server): Promise<{ host: string; port: number }> {
    const { host, port, log, path, tls } = this.options;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(new ProxyError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (websocket): ${err.message}`, { cause: err }));
      };
      this.server.once('error', onError);
      this.server.listen(inherited ?? { host, port }, () => {
        this.server.off('error', onError);
        const address = this.server.address();
        const bound = typeof address === 'object' && address !== null ? { host: address.address, port: address.port } : { host, port };
        log.info({ ...bound, type: 'websocket', path, tls }, 'listening');
        if (!tls && !isLoopbackHost(bound.host)) {
          log.warn(
            { ...bound, path },
            'plain ws:// listener on a non-loopback address: logins and messages cross the network unencrypted; put it on loopback behind a TLS-terminating proxy, or set "tls": true',
          );
        }
        if (!tls && this.options.trustedProxies.length === 0) {
          // XEP-0156 §3: clients fetch host-meta over HTTPS and accept only wss:// URLs.
          log.warn(
            { ...bound, path },
            'plain ws:// listener without trustedProxies: host-meta announces ws:// URLs, which XEP-0156 clients ignore',
          );
        }
        resolve(bound);
      });
    });
  }

  /** Stops accepting; existing WebSocket connections stay until the sessions close them. */
  stopAccepting(): Promise<void> {
    this.closing ??= new Promise((resolve) => this.server.close(() => resolve()));
    return this.closing;
  }

  /** Drops every connection still open (end of the shutdown grace period). */
  destroyAll(): void {
    for (const ws of this.sockets) ws.terminate();
    this.server.closeAllConnections();
    for (const socket of this.rawSockets) socket.destroy();
    for (const socket of this.gate.sockets) socket.destroy();
  }

  // --- plain HTTP: discovery, and refusals ---

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const pathname = requestPath(req);
    if (pathname === HOST_META_PATH || pathname === HOST_META_JSON_PATH) {
      this.serveHostMeta(req, res, pathname === HOST_META_JSON_PATH);
      return;
    }
    if (pathname === this.options.path) {
      if (req.method === 'GET' || req.method === 'HEAD') {
        // RFC 7231 §6.5.15: 426 names the protocol to switch to in an Upgrade header.
        respond(
          res,
          426,
          `RFC 7395 §3.1: ${this.options.path} is an XMPP WebSocket endpoint; upgrade to WebSocket with subprotocol 'xmpp'\n`,
          {
            Upgrade: 'websocket',
          },
        );
        return;
      }
      respond(res, 405, 'only GET (a WebSocket upgrade) is allowed here\n', { Allow: 'GET' });
      return;
    }
    respond(res, 404, 'not found\n');
  }

  /**
   * XEP-0156 §3: host-meta (XRD, REQUIRED) and host-meta.json (JRD) with the WebSocket endpoint.
   * The URL is built from the request's Host, so one listener serves every domain it fronts.
   */
  private serveHostMeta(req: IncomingMessage, res: ServerResponse, json: boolean): void {
    // XEP-0156 §3: "Access-Control-Allow-Origin: *" is acceptable for these files.
    const cors = { 'Access-Control-Allow-Origin': '*' };
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { ...cors, 'Access-Control-Allow-Methods': 'GET, HEAD, OPTIONS', 'Access-Control-Max-Age': '86400' }).end();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      respond(res, 405, 'only GET is allowed here\n', { ...cors, Allow: 'GET, HEAD, OPTIONS' });
      return;
    }
    const host = this.publicHost(req);
    if (host === undefined) {
      respond(res, 400, 'a valid Host header is required\n', cors);
      return;
    }
    const scheme = this.publicScheme(req);
    const href = `${scheme}://${host}${this.options.path}`;
    const body = json
      ? JSON.stringify({ links: [{ rel: WEBSOCKET_LINK_REL, href }] }) + '\n'
      : "<?xml version='1.0' encoding='utf-8'?>\n" +
        "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n" +
        `  <Link rel='${WEBSOCKET_LINK_REL}' href='${escapeXml(href)}'/>\n` +
        '</XRD>\n';
    res.writeHead(200, {
      ...cors,
      'Content-Type': json ? 'application/json' : 'application/xrd+xml',
      'Content-Length': Buffer.byteLength(body),
      // The body depends on the Host header (and on forwarding headers behind a trusted proxy).
      Vary: 'Host, X-Forwarded-Host, X-Forwarded-Proto, Forwarded',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  /** The Host the client used: X-Forwarded-Host (or Forwarded host=) from a trusted proxy, else Host. */
  private publicHost(req: IncomingMessage): string | undefined {
    let host = req.headers.host;
    if (this.isTrustedPeer(req)) {
      host = firstValue(req.headers['x-forwarded-host']) ?? lastForwardedParam(req, 'host') ?? host;
    }
    return host !== undefined && HOST_PATTERN.test(host) ? host.toLowerCase() : undefined;
  }

  /** `wss` on a TLS listener, or when a trusted proxy says the client used HTTPS; else `ws`. */
  private publicScheme(req: IncomingMessage): 'ws' | 'wss' {
    if (this.options.tls) return 'wss';
    if (!this.isTrustedPeer(req)) return 'ws';
    const proto = firstValue(req.headers['x-forwarded-proto']) ?? lastForwardedParam(req, 'proto');
    return proto?.toLowerCase() === 'https' ? 'wss' : 'ws';
  }

  // --- the WebSocket handshake ---

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const { log } = this.options;
    socket.on('error', (err) => log.debug({ err: err.message }, 'client socket error during the WebSocket handshake'));
    if (requestPath(req) !== this.options.path) {
      refuseHandshake(socket, 404, 'not found\n');
      return;
    }
    const origin = req.headers.origin;
    if (origin !== undefined && this.allowedOrigins.size > 0 && !this.allowedOrigins.has(origin.toLowerCase())) {
      log.info({ origin: clipped(origin), remote: req.socket.remoteAddress }, 'WebSocket handshake refused: origin not allowed');
      refuseHandshake(socket, 403, `origin ${clipped(origin)} is not allowed\n`);
      return;
    }
    if (!offeredProtocols(req).includes(XMPP_SUBPROTOCOL)) {
      // RFC 7395 §3.1: "the client MUST include 'xmpp' in the list of protocols"; a server that does
      // not accept the subprotocol fails the handshake (RFC 6455 §4.2.2).
      refuseHandshake(socket, 400, "RFC 7395 §3.1: the WebSocket subprotocol 'xmpp' is required (Sec-WebSocket-Protocol: xmpp)\n");
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req));
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    this.sockets.add(ws);
    ws.once('close', () => this.sockets.delete(ws));
    const { limits, log, maxPayloadBytes, pingIntervalMs } = this.options;
    const sid = this.options.newSid();
    const client = this.clientAddress(req);
    const sessionLog = log.child({
      sid,
      transport: 'websocket',
      remote: client.remote,
      ...(client.via !== undefined ? { via: client.via } : {}),
    });
    const link = new WebSocketClientLink({
      ws,
      socket: req.socket,
      remote: client.remote,
      address: client.address,
      endpoints: {
        client: { address: client.address, port: client.port },
        listener: { address: normalizeAddress(req.socket.localAddress) ?? '0.0.0.0', port: req.socket.localPort ?? 0 },
      },
      limits: limits(),
      maxPayloadBytes,
      pingIntervalMs,
      log: sessionLog,
    });
    this.options.onLink(link, sessionLog);
  }

  // --- who the client is (for logs) ---

  private isTrustedPeer(req: IncomingMessage): boolean {
    const peer = normalizeAddress(this.gate.clientOf(req.socket).address);
    return peer !== undefined && isTrusted(this.trusted, peer);
  }

  /**
   * The peer's address, or, when the peer is a trusted reverse proxy, the first untrusted hop of its
   * X-Forwarded-For (else Forwarded `for=`, RFC 7239 §5.2), read from the right: each proxy appends
   * the address it saw, so only the hops after the last trusted one can be forged by the client.
   * Never read from an untrusted peer.
   */
  private clientAddress(req: IncomingMessage): ClientAddress {
    // The TCP peer, or the client a load balancer's PROXY protocol header named (connection-gate.ts).
    const origin = this.gate.clientOf(req.socket);
    const peerRemote = `${origin.address}:${origin.port}`;
    const peer = normalizeAddress(origin.address);
    const direct = { remote: peerRemote, port: origin.port, via: undefined };
    if (peer === undefined || !isTrusted(this.trusted, peer)) return { ...direct, address: peer ?? peerRemote };
    const xff = req.headers['x-forwarded-for'];
    const hops = xff !== undefined ? splitList(Array.isArray(xff) ? xff.join(',') : xff) : forwardedParams(req, 'for');
    let client = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = normalizeAddress(hops[i]);
      // An unparsable hop ("unknown", an obfuscated identifier) ends what can be known.
      if (hop === undefined) break;
      client = hop;
      if (!isTrusted(this.trusted, hop)) break;
    }
    if (client === peer) return { ...direct, address: peer };
    return { remote: client, address: client, port: 0, via: peerRemote };
  }
}

/** A host name or IP literal with an optional port, nothing that could break a URL or the XRD. */
const HOST_PATTERN = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$/;

function requestPath(req: IncomingMessage): string | undefined {
  try {
    return new URL(req.url ?? '/', 'http://localhost').pathname;
  } catch {
    // A request target that is not a URL path matches no route (404).
    return undefined;
  }
}

function offeredProtocols(req: IncomingMessage): string[] {
  const header = req.headers['sec-websocket-protocol'];
  return header === undefined ? [] : splitList(header);
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

function firstValue(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  return splitList(Array.isArray(header) ? header.join(',') : header)[0];
}

/**
 * The values of one parameter across the elements of the Forwarded header (RFC 7239 §4), in order,
 * parsed by forwarded-parse. A header that does not parse names no one (it is ignored, as if absent).
 */
function forwardedParams(req: IncomingMessage, name: string): string[] {
  const header = req.headers.forwarded;
  if (header === undefined) return [];
  let elements: ReturnType<typeof parseForwarded>;
  try {
    elements = parseForwarded(header);
  } catch {
    return [];
  }
  return elements.flatMap((element) => {
    const value = element[name];
    return value === undefined ? [] : [value];
  });
}

/** The parameter as set by the proxy nearest to us (the last element that has it). */
function lastForwardedParam(req: IncomingMessage, name: string): string | undefined {
  const values = forwardedParams(req, name);
  return values[values.length - 1];
}

function isTrusted(list: BlockList, address: string): boolean {
  return list.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
}

function respond(res: ServerResponse, status: number, body: string, headers: OutgoingHttpHeaders = {}): void {
  res.writeHead(status, { ...headers, 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** Answers an upgrade request with an HTTP error and closes the connection (as ws's own refusals do). */
function refuseHandshake(socket: Duplex, status: number, body: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
      'Connection: close\r\n' +
      'Content-Type: text/plain; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      '\r\n' +
      body,
  );
}
