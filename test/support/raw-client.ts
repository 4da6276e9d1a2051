/**
 * A scripted XMPP client for integration tests: it speaks raw XML and checks exact behaviour.
 *
 *   const client = await RawClient.connect({ host, port, transport: 'starttls', domain: 'localhost' });
 *   await client.authenticatePlain('alice', 'secret');      // → post-auth features
 *   const jid = await client.bind('phone');
 *   const enabled = await client.enableSm({ resume: true });
 *   await client.sendMessage('bob@localhost', 'hi');
 *   const h = await client.ackRequest();
 *   client.drop();                                           // a network cut
 *
 * The same verbs work over every transport the proxy serves: 'starttls', 'directtls' and
 * 'websocket' (RFC 7395, wss:// with subprotocol `xmpp`). Only the framing differs, and the client
 * hides it: over WebSocket the stream header is `<open/>`, the stream close is `<close/>`, and every
 * element travels in its own text message as a standalone document (RFC 7395 §3.3.3), so `send()`
 * splits what it is given into elements and declares the namespaces they inherited from the stream
 * (`jabber:client`, the `stream:` prefix). `sendRaw()` writes its bytes unchanged (one message over
 * WebSocket) and `sendBinary()` sends a binary WebSocket message, for testing refusals.
 *
 * Incoming TCP bytes are decoded with a StringDecoder (a UTF-8 character split between TLS records is
 * kept whole) and parsed with `sax` in strict mode into ltx `Element`s; each incoming WebSocket
 * message is parsed the same way as a document of its own. Strict on purpose: this client is the
 * oracle for what the proxy writes, so anything not well-formed, a DOCTYPE, a comment or a
 * processing instruction after the XML declaration (RFC 6120 §11) fails every pending wait instead of
 * being skipped as ltx's lenient parser would; over WebSocket so does a binary message, a message
 * that is not exactly one element starting with '<', or an element without a namespace.
 *
 * Every top-level element received is appended to `received` and, until a wait consumes it, kept in
 * an inbox; `expect()` matches the inbox first, in arrival order, then waits. Every wait has a
 * timeout whose error names what was expected, what is in the inbox and what arrived last.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Element } from 'ltx';
import sax from 'sax';
import { WebSocket, type RawData } from 'ws';

export { Element };

export const NS = {
  client: 'jabber:client',
  stream: 'http://etherx.jabber.org/streams',
  streamErrors: 'urn:ietf:params:xml:ns:xmpp-streams',
  tls: 'urn:ietf:params:xml:ns:xmpp-tls',
  sasl: 'urn:ietf:params:xml:ns:xmpp-sasl',
  bind: 'urn:ietf:params:xml:ns:xmpp-bind',
  stanzas: 'urn:ietf:params:xml:ns:xmpp-stanzas',
  sm3: 'urn:xmpp:sm:3',
  sm2: 'urn:xmpp:sm:2',
  delay: 'urn:xmpp:delay',
  /** RFC 7395 §3.4, §3.6: the namespace of `<open/>` and `<close/>` over WebSocket. */
  framing: 'urn:ietf:params:xml:ns:xmpp-framing',
} as const;

export type SmNamespace = typeof NS.sm3 | typeof NS.sm2;
/** 'starttls' and 'directtls': RFC 6120 over TCP; 'websocket': RFC 7395 over wss://. */
export type RawTransport = 'starttls' | 'directtls' | 'websocket';
export type ElementPredicate = (element: Element) => boolean;

export interface RawConnectOptions {
  host: string;
  port: number;
  /**
   * 'starttls': TCP, `<starttls/>`, TLS upgrade. 'directtls': TLS from the first byte (XEP-0368),
   * ALPN xmpp-client. 'websocket': TLS, then a WebSocket handshake (RFC 7395 §3.1) on `path`.
   */
  transport: RawTransport;
  /** The stream's `to` and the TLS SNI name. */
  domain: string;
  /** Default for every wait of this client, in milliseconds. Default 5000. */
  timeoutMs?: number;
  /** Stop once TLS (or the WebSocket handshake) is done, before the stream header: call openStream() yourself. Default true. */
  openStream?: boolean;
  /** WebSocket only: the endpoint's URL path. Default '/xmpp-websocket'. */
  path?: string;
  /** WebSocket only: the subprotocols offered (Sec-WebSocket-Protocol). Default ['xmpp']. */
  protocols?: string[];
  /** WebSocket only: the Origin header, as a browser would send it. Default none. */
  origin?: string;
  /** WebSocket only: more request headers (X-Forwarded-For, as a reverse proxy would add). */
  headers?: Record<string, string>;
  /** The local address to connect from (another loopback address, `127.0.0.2`, to be told apart from the load balancer). */
  localAddress?: string;
}

/** The WebSocket handshake was answered with an HTTP response other than 101 (RFC 6455 §4.1). */
export class WebSocketHandshakeError extends Error {
  constructor(
    readonly url: string,
    /** The HTTP status code of the refusal. */
    readonly status: number,
    /** The response body (its first 4 KiB). */
    readonly body: string,
  ) {
    super(`WebSocket handshake with ${url} refused: HTTP ${status} ${JSON.stringify(body.slice(0, 200))}`);
    this.name = 'WebSocketHandshakeError';
  }
}

export interface RawPlainOptions {
  host: string;
  port: number;
  domain: string;
  timeoutMs?: number;
  /** The local address to connect from. */
  localAddress?: string;
}

/**
 * Bytes some clients send after `<starttls/>` besides TLS, to test the proxy's tolerance
 * (RFC 6120 §5.3.3 forbids whitespace there; some clients send it anyway).
 */
export interface StartTlsOptions {
  /** Written after `<starttls/>`, before the ClientHello (e.g. a whitespace keepalive). Default none. */
  trailing?: string;
  /**
   * How `trailing` travels: 'same-write' in one write with `<starttls/>`; 'own-write' alone, once
   * `<proceed/>` arrived, 50 ms before the ClientHello (so that it reaches the peer in a segment
   * of its own); 'with-client-hello' in one write with `<starttls/>` and the ClientHello, without
   * waiting for `<proceed/>` (which is then consumed below TLS, not added to `received`).
   * Default 'same-write'.
   */
  mode?: 'same-write' | 'own-write' | 'with-client-hello';
}

export interface EnableSmOptions {
  resume?: boolean;
  /** Preferred maximum resumption time, in seconds. */
  max?: number;
  /** Default urn:xmpp:sm:3. */
  ns?: SmNamespace;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_WEBSOCKET_PATH = '/xmpp-websocket';
/** RFC 7395 §3.1. */
const XMPP_SUBPROTOCOL = 'xmpp';
const MAX_REFUSAL_BODY_CHARS = 4096;
const SHOWN_ELEMENTS = 5;
const SHOWN_CHARS = 300;
const STANZA_NAMES = new Set(['message', 'presence', 'iq']);

interface Waiter {
  predicate: ElementPredicate;
  what: string;
  resolve: (element: Element) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/** What carries the XML stream. */
type Connection =
  /** RFC 6120 over TCP: `socket` is `tcp`, then the TLS socket over it once TLS is up. */
  | { readonly kind: 'tcp'; readonly tcp: Socket; socket: Socket; tls: TLSSocket | undefined }
  /** RFC 7395: a WebSocket over TLS over `tcp`; one element per text message. */
  | { readonly kind: 'websocket'; readonly tcp: Socket; readonly tls: TLSSocket; readonly ws: WebSocket };

/** One stream's parse state: a restart (RFC 6120 §4.3.3) replaces it. */
interface StreamParser {
  sax: sax.SAXParser;
  /** The element being built below the stream header; undefined between top-level elements. */
  cursor: Element | undefined;
  depth: number;
  seenRoot: boolean;
}

export class RawClient {
  /** Every top-level element received, in order, on every stream of this connection. */
  readonly received: Element[] = [];
  /** The latest stream header from the peer (`<stream:stream>`, without children). */
  streamHeader: Element | undefined;
  /** The latest `<stream:features/>` returned by openStream() and the authenticate verbs. */
  features: Element | undefined;
  /** Stanzas (message, presence, iq) received since `<enabled/>` or `<resumed/>`: our `h`. */
  stanzasReceived = 0;
  /** Stanzas sent on this connection since `<enable/>` or `<resume/>`: what the peer's `<a h/>` should reach. */
  stanzasSent = 0;
  /** True once the peer sent `</stream:stream>` (over WebSocket: `<close/>`). */
  streamClosedByPeer = false;
  readonly defaultTimeoutMs: number;

  private readonly connection: Connection;
  /** What connect() was asked for; 'starttls' for a connectPlain() connection (plain TCP so far). */
  private transportName: RawTransport;
  /** WebSocket only: the close code and reason once the WebSocket is closed (1006: no close frame). */
  private wsClose: { code: number; reason: string } | undefined;
  private readonly domain: string;
  private decoder = new StringDecoder('utf8');
  private parser: StreamParser;
  private readonly inbox: Element[] = [];
  private waiters: Waiter[] = [];
  private headerWaiter: { resolve: (header: Element) => void; reject: (error: Error) => void } | undefined;
  /** Called once the socket has closed. */
  private closeWaiters: Array<() => void> = [];
  /** Called once nothing more can arrive: the peer's `</stream:stream>`, or the socket closed. */
  private streamEndWaiters: Array<() => void> = [];
  private closed = false;
  /** Why no more elements can arrive: a stream error, the peer's close, bad XML, the socket's close. */
  private ended: string | undefined;
  private smNs: SmNamespace = NS.sm3;
  private countingReceived = false;
  private countingSent = false;
  /** The `h` sent in `<resume/>`: our counter continues from it once `<resumed/>` arrives. */
  private resumeH = 0;
  private nextId = 1;

  private constructor(connection: Connection, transport: RawTransport, domain: string, timeoutMs: number) {
    this.connection = connection;
    this.transportName = transport;
    this.domain = domain;
    this.defaultTimeoutMs = timeoutMs;
    this.parser = this.newParser();
    if (connection.kind === 'tcp') this.attach(connection.socket);
    else this.attachWebSocket(connection.ws);
  }

  /**
   * Connects with TLS (STARTTLS, direct TLS, or wss:// with subprotocol `xmpp`) and, unless
   * `openStream: false`, opens the stream. A refused WebSocket handshake rejects with a
   * {@link WebSocketHandshakeError} carrying the HTTP status.
   */
  static async connect(options: RawConnectOptions): Promise<RawClient> {
    if (options.transport === 'websocket') return RawClient.connectWebSocket(options);
    const client = await RawClient.connectPlain({ ...options, timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS });
    client.transportName = options.transport;
    try {
      if (options.transport === 'starttls') {
        await client.openStream();
        await client.starttls();
      } else {
        // XEP-0368: TLS from the first byte, ALPN "xmpp-client".
        await client.upgradeToTls({ ALPNProtocols: ['xmpp-client'] }, `direct TLS handshake with ${options.host}:${options.port}`);
      }
      if (options.openStream ?? true) await client.openStream();
    } catch (err) {
      client.drop();
      throw err;
    }
    return client;
  }

  /**
   * A plain TCP connection, nothing sent yet: for pre-TLS behaviour of the proxy, or to talk to a
   * legacy server's plaintext c2s port directly.
   */
  static async connectPlain(options: RawPlainOptions): Promise<RawClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const tcp = netConnect({
      host: options.host,
      port: options.port,
      ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
    });
    await waitForSocketEvent(tcp, 'connect', timeoutMs, `TCP connect to ${options.host}:${options.port}`);
    return new RawClient({ kind: 'tcp', tcp, socket: tcp, tls: undefined }, 'starttls', options.domain, timeoutMs);
  }

  /**
   * RFC 7395 §3.1: TLS to host:port (SNI `domain`, certificate not verified: the proxy's is
   * self-signed), then the WebSocket handshake on `path` offering `protocols`.
   */
  private static async connectWebSocket(options: RawConnectOptions): Promise<RawClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const host = options.host.includes(':') ? `[${options.host}]` : options.host;
    const url = `wss://${host}:${options.port}${options.path ?? DEFAULT_WEBSOCKET_PATH}`;
    const tcp = netConnect({
      host: options.host,
      port: options.port,
      ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
    });
    // Our own TCP socket under the TLS one, so that drop('reset') can reset it.
    const tls = tlsConnect({ socket: tcp, servername: options.domain, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    const ws = new WebSocket(url, options.protocols ?? [XMPP_SUBPROTOCOL], {
      createConnection: () => tls,
      perMessageDeflate: false,
      handshakeTimeout: timeoutMs,
      ...(options.origin !== undefined ? { origin: options.origin } : {}),
      ...(options.headers !== undefined ? { headers: options.headers } : {}),
    });
    const client = new RawClient({ kind: 'websocket', tcp, tls, ws }, 'websocket', options.domain, timeoutMs);
    try {
      await waitForHandshake(ws, url, timeoutMs);
      if (options.openStream ?? true) await client.openStream();
    } catch (err) {
      client.drop();
      throw err;
    }
    return client;
  }

  /** The TLS socket once TLS is up (peer certificate, ALPN, protocol), else undefined. */
  get tls(): TLSSocket | undefined {
    return this.connection.tls;
  }

  /** The transport this client was connected with. */
  get transport(): RawTransport {
    return this.transportName;
  }

  /** WebSocket only: the close code and reason once the WebSocket closed (1006 when it closed without a close frame). */
  get webSocketClose(): { code: number; reason: string } | undefined {
    return this.wsClose;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- sending -------------------------------------------------------------------------------

  /**
   * Sends one or more well-formed elements (checked: use sendRaw() for anything that is not). Over
   * TCP the text is written unchanged; over WebSocket each element goes in a message of its own,
   * re-serialised with the namespaces it inherited from the stream declared (RFC 7395 §3.3.3).
   */
  send(data: string | Element): void {
    const text = typeof data === 'string' ? data : data.toString();
    if (this.connection.kind === 'websocket') {
      const elements = standaloneElements(text);
      if (this.countingSent) this.stanzasSent += elements.filter((el) => STANZA_NAMES.has(el.name)).length;
      for (const element of elements) this.write(element.toString());
      return;
    }
    const names = topLevelNames(text);
    if (this.countingSent) this.stanzasSent += names.filter((name) => STANZA_NAMES.has(name)).length;
    this.write(text);
  }

  /** Writes bytes as they are (over WebSocket: one text message, even if not valid UTF-8): no framing, no counting. */
  sendRaw(bytes: Buffer | string): void {
    this.write(bytes);
  }

  /** WebSocket only: sends `bytes` as one binary message (RFC 7395 §3.2 allows only text). */
  sendBinary(bytes: Buffer | string): void {
    const connection = this.connection;
    if (connection.kind !== 'websocket') throw new Error(`sendBinary() needs a WebSocket connection, not ${this.transport}`);
    if (this.closed) throw new Error('cannot send a binary message: the connection is closed');
    connection.ws.send(bytes, { binary: true });
  }

  // ---- waiting -------------------------------------------------------------------------------

  /** The first element (inbox first, then arrivals) matching `predicate`; consumes it. */
  expect(predicate: ElementPredicate, what: string, timeoutMs = this.defaultTimeoutMs): Promise<Element> {
    const index = this.inbox.findIndex(predicate);
    if (index >= 0) return Promise.resolve(this.inbox.splice(index, 1)[0]!);
    if (this.ended !== undefined) return Promise.reject(this.waitError(what, this.ended));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        what,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(this.waitError(what, `timed out after ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Fails if an element matching `predicate` is in the inbox or arrives within `ms` (and is not consumed meanwhile). */
  async expectNone(predicate: ElementPredicate, what: string, ms: number): Promise<void> {
    const check = (): void => {
      const found = this.inbox.find(predicate);
      if (found !== undefined) throw new Error(`expected no ${what} within ${ms} ms, got ${show(found)}`);
    };
    check();
    await new Promise((resolve) => setTimeout(resolve, ms));
    check();
  }

  /** The next `<stream:features/>`. */
  expectFeatures(timeoutMs = this.defaultTimeoutMs): Promise<Element> {
    return this.expect((el) => el.is('features', NS.stream), '<stream:features/>', timeoutMs);
  }

  /** A `<stream:error/>` carrying `condition` (RFC 6120 §4.9.3), e.g. 'policy-violation'. */
  expectStreamError(condition: string, timeoutMs = this.defaultTimeoutMs): Promise<Element> {
    return this.expect(
      (el) => el.is('error', NS.stream) && el.getChild(condition, NS.streamErrors) !== undefined,
      `<stream:error> with <${condition}/>`,
      timeoutMs,
    );
  }

  /** Resolves once the socket is closed (by either side). */
  expectClosed(timeoutMs = this.defaultTimeoutMs): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onClose = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.closeWaiters = this.closeWaiters.filter((w) => w !== onClose);
        reject(this.waitError('the connection to close', `timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.closeWaiters.push(onClose);
    });
  }

  // ---- stream --------------------------------------------------------------------------------

  /**
   * Sends a stream header (RFC 6120 §4.2) on a fresh parser, waits for the peer's header and
   * `<stream:features/>`, and returns the features.
   */
  async openStream(attrs: Record<string, string> = {}): Promise<Element> {
    const header = new Promise<Element>((resolve, reject) => (this.headerWaiter = { resolve, reject }));
    this.sendStreamHeader({ to: this.domain, version: '1.0', 'xml:lang': 'en', ...attrs });
    await withTimeout(header, this.defaultTimeoutMs, () => this.waitError("the peer's stream header", 'timed out'));
    this.features = await this.expectFeatures();
    return this.features;
  }

  /**
   * Starts a new stream (a fresh parser) with a stream header carrying exactly `attrs` (an
   * undefined value leaves the attribute out), in this transport's framing: `<stream:stream>`
   * over TCP (RFC 6120 §4.2), `<open/>` over WebSocket (RFC 7395 §3.4). Waits for nothing: for
   * headers the peer must refuse (unknown `to`, no `version`); openStream() sends the usual one
   * and waits for the answer.
   */
  sendStreamHeader(attrs: Record<string, string | undefined>): void {
    this.restartParser();
    const attrText = Object.entries(attrs)
      .filter((entry): entry is [string, string] => entry[1] !== undefined)
      .map(([name, value]) => ` ${name}='${escapeAttr(value)}'`)
      .join('');
    if (this.connection.kind === 'websocket') {
      // RFC 7395 §3.4: the stream header is an <open/> element in the framing namespace.
      this.write(`<open xmlns='${NS.framing}'${attrText}/>`);
    } else {
      this.write(`<?xml version='1.0'?><stream:stream${attrText} xmlns='${NS.client}' xmlns:stream='${NS.stream}'>`);
    }
  }

  /**
   * The next bytes from the peer start a new stream (RFC 6120 §4.3.3): a fresh parser. openStream()
   * does this itself; call it when you write the new header yourself with sendRaw(), e.g. to
   * pipeline a header with `<resume/>`. Over WebSocket every message is parsed on its own anyway.
   */
  restartParser(): void {
    this.parser = this.newParser();
  }

  /**
   * RFC 6120 §5.4.2: `<starttls/>`, `<proceed/>`, then TLS over this socket. The stream must be
   * restarted next. `options` adds the stray bytes some clients send (see StartTlsOptions).
   */
  async starttls(options: StartTlsOptions = {}): Promise<void> {
    const starttls = `<starttls xmlns='${NS.tls}'/>`;
    const trailing = options.trailing ?? '';
    const mode = options.mode ?? 'same-write';
    const connection = this.connection;
    if (mode === 'with-client-hello') {
      if (connection.kind !== 'tcp') throw new Error('starttls(): there is no STARTTLS over WebSocket');
      const pipelined = new PipelinedStartTls(connection.tcp, Buffer.from(starttls + trailing, 'utf8'));
      await this.upgradeToTls({}, 'TLS handshake pipelined with <starttls/>', pipelined);
      return;
    }
    this.send(mode === 'same-write' ? starttls + trailing : starttls);
    const answer = await this.expect((el) => el.getNS() === NS.tls && (el.name === 'proceed' || el.name === 'failure'), '<proceed/>');
    if (answer.name !== 'proceed') throw new Error(`STARTTLS refused: ${show(answer)}`);
    if (mode === 'own-write' && trailing !== '') {
      this.sendRaw(trailing);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await this.upgradeToTls({}, 'TLS handshake after <proceed/>');
  }

  /**
   * TLS over the TCP socket (or over `over`, a stream on top of it); the proxy's certificate is
   * self-signed, so it is not verified.
   */
  private async upgradeToTls(options: Pick<ConnectionOptions, 'ALPNProtocols'>, what: string, over?: Duplex): Promise<void> {
    const connection = this.connection;
    if (connection.kind !== 'tcp') throw new Error(`${what}: there is no TLS upgrade over WebSocket (wss:// is TLS from the start)`);
    this.detach(connection.socket);
    const tlsSocket = tlsConnect({ ...options, socket: over ?? connection.tcp, servername: this.domain, rejectUnauthorized: false });
    await waitForSocketEvent(tlsSocket, 'secureConnect', this.defaultTimeoutMs, what);
    connection.tls = tlsSocket;
    connection.socket = tlsSocket;
    this.decoder = new StringDecoder('utf8');
    this.attach(tlsSocket);
  }

  // ---- SASL (RFC 6120 §6) ---------------------------------------------------------------------

  /** SASL PLAIN (RFC 4616), then the stream restart: returns the post-auth features. */
  async authenticatePlain(username: string, password: string): Promise<Element> {
    const message = Buffer.from(`\0${username}\0${password}`, 'utf8').toString('base64');
    this.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${message}</auth>`);
    await this.expectSaslSuccess('PLAIN');
    return this.openStream();
  }

  /**
   * SASL SCRAM-SHA-1 (RFC 5802) without channel binding ('n,,'), verifying the server signature,
   * then the stream restart: returns the post-auth features. The password is used as given (no SASLprep).
   */
  async authenticateScramSha1(username: string, password: string): Promise<Element> {
    const clientNonce = randomBytes(18).toString('base64');
    const gs2Header = 'n,,';
    const clientFirstBare = `n=${saslName(username)},r=${clientNonce}`;
    this.send(`<auth xmlns='${NS.sasl}' mechanism='SCRAM-SHA-1'>${b64(gs2Header + clientFirstBare)}</auth>`);

    const challenge = await this.expectSasl(['challenge', 'failure'], 'SCRAM-SHA-1 server-first-message');
    if (challenge.name === 'failure') throw new Error(`SASL SCRAM-SHA-1 failed: ${show(challenge)}`);
    const serverFirst = unb64(challenge.getText());
    const fields = scramFields(serverFirst);
    const nonce = fields.get('r');
    const salt = fields.get('s');
    const iterations = Number(fields.get('i'));
    if (nonce === undefined || !nonce.startsWith(clientNonce) || salt === undefined || !Number.isInteger(iterations) || iterations < 1) {
      throw new Error(`SCRAM-SHA-1: bad server-first-message ${JSON.stringify(serverFirst)}`);
    }

    const saltedPassword = pbkdf2Sync(password, Buffer.from(salt, 'base64'), iterations, 20, 'sha1');
    const clientKey = hmac(saltedPassword, 'Client Key');
    const storedKey = createHash('sha1').update(clientKey).digest();
    const clientFinalWithoutProof = `c=${b64(gs2Header)},r=${nonce}`;
    const authMessage = `${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i]! ^ clientSignature[i]!;
    const serverSignature = hmac(hmac(saltedPassword, 'Server Key'), authMessage);
    this.send(`<response xmlns='${NS.sasl}'>${b64(`${clientFinalWithoutProof},p=${proof.toString('base64')}`)}</response>`);

    // RFC 6120 §6.3.10: the server-final-message comes as additional data in <success/>, or (older
    // servers) in one more <challenge/> answered by an empty <response/>.
    let outcome = await this.expectSasl(['success', 'failure', 'challenge'], 'SCRAM-SHA-1 <success/>');
    let serverFinal = outcome.name === 'failure' ? '' : unb64(outcome.getText());
    if (outcome.name === 'challenge') {
      this.send(`<response xmlns='${NS.sasl}'/>`);
      outcome = await this.expectSasl(['success', 'failure'], 'SCRAM-SHA-1 <success/>');
    }
    if (outcome.name === 'failure') throw new Error(`SASL SCRAM-SHA-1 failed: ${show(outcome)}`);
    const verifier = scramFields(serverFinal).get('v');
    const expected = serverSignature.toString('base64');
    if (verifier === undefined || verifier.length !== expected.length || !timingSafeEqual(Buffer.from(verifier), Buffer.from(expected))) {
      throw new Error(`SCRAM-SHA-1: server signature ${JSON.stringify(serverFinal)} does not prove the server knows the password`);
    }
    return this.openStream();
  }

  /**
   * SASL DIGEST-MD5 (RFC 2831, obsoleted by RFC 6331 but still offered by jabberd2 2.7), qop=auth,
   * verifying the server's rspauth, then the stream restart: returns the post-auth features.
   */
  async authenticateDigestMd5(username: string, password: string): Promise<Element> {
    this.send(`<auth xmlns='${NS.sasl}' mechanism='DIGEST-MD5'/>`);
    const challenge = await this.expectSasl(['challenge', 'failure'], 'DIGEST-MD5 digest-challenge');
    if (challenge.name === 'failure') throw new Error(`SASL DIGEST-MD5 failed: ${show(challenge)}`);
    const fields = digestFields(unb64(challenge.getText()));
    const nonce = fields.get('nonce');
    if (nonce === undefined) throw new Error(`DIGEST-MD5: no nonce in ${JSON.stringify(unb64(challenge.getText()))}`);
    const realm = fields.get('realm') ?? this.domain;
    const cnonce = randomBytes(16).toString('hex');
    const nc = '00000001';
    const digestUri = `xmpp/${this.domain}`;
    // RFC 2831 §2.1.2.1: A1 = { H( { username-value, ":", realm-value, ":", passwd } ), ":", nonce-value, ":", cnonce-value }
    const a1 = Buffer.concat([createHash('md5').update(`${username}:${realm}:${password}`).digest(), Buffer.from(`:${nonce}:${cnonce}`)]);
    const md5Hex = (data: Buffer | string) => createHash('md5').update(data).digest('hex');
    const kd = (a2: string) => md5Hex(`${md5Hex(a1)}:${nonce}:${nc}:${cnonce}:auth:${md5Hex(a2)}`);
    const response =
      `charset=utf-8,username="${username}",realm="${realm}",nonce="${nonce}",nc=${nc},cnonce="${cnonce}",` +
      `digest-uri="${digestUri}",response=${kd(`AUTHENTICATE:${digestUri}`)},qop=auth`;
    this.send(`<response xmlns='${NS.sasl}'>${b64(response)}</response>`);
    // RFC 2831 §2.1.3: the server proves it knows the password with rspauth (A2 without "AUTHENTICATE").
    const expectedRspauth = kd(`:${digestUri}`);
    let outcome = await this.expectSasl(['success', 'failure', 'challenge'], 'DIGEST-MD5 rspauth');
    const rspauth = outcome.name === 'failure' ? undefined : digestFields(unb64(outcome.getText())).get('rspauth');
    if (outcome.name === 'challenge') {
      this.send(`<response xmlns='${NS.sasl}'/>`);
      outcome = await this.expectSasl(['success', 'failure'], 'DIGEST-MD5 <success/>');
    }
    if (outcome.name === 'failure') throw new Error(`SASL DIGEST-MD5 failed: ${show(outcome)}`);
    if (rspauth !== expectedRspauth) throw new Error(`DIGEST-MD5: rspauth ${String(rspauth)} does not prove the server knows the password`);
    return this.openStream();
  }

  // ---- session -------------------------------------------------------------------------------

  /** Resource binding (RFC 6120 §7): returns the full JID the server assigned. */
  async bind(resource?: string): Promise<string> {
    const id = this.id('bind');
    const bind = new Element('bind', { xmlns: NS.bind });
    if (resource !== undefined) bind.c('resource').t(resource);
    this.send(new Element('iq', { type: 'set', id }).cnode(bind).root());
    const result = await this.expectIqResult(id, 'the bind result');
    const jid = result.getChild('bind', NS.bind)?.getChildText('jid');
    if (!jid) throw new Error(`bind result without a JID: ${show(result)}`);
    return jid;
  }

  /** authenticatePlain or authenticateScramSha1, then bind: returns the full JID. */
  async login(
    username: string,
    password: string,
    options: { resource?: string; mechanism?: 'PLAIN' | 'SCRAM-SHA-1' } = {},
  ): Promise<string> {
    if (options.mechanism === 'SCRAM-SHA-1') await this.authenticateScramSha1(username, password);
    else await this.authenticatePlain(username, password);
    return this.bind(options.resource);
  }

  // ---- stream management (XEP-0198) -----------------------------------------------------------

  /** Sends `<enable/>` and returns the `<enabled/>` or `<failed/>` that answers it. */
  async enableSm(options: EnableSmOptions = {}): Promise<Element> {
    const ns = options.ns ?? NS.sm3;
    this.smNs = ns;
    const attrs: Record<string, string> = { xmlns: ns };
    if (options.resume) attrs.resume = 'true';
    if (options.max !== undefined) attrs.max = String(options.max);
    this.send(new Element('enable', attrs));
    // XEP-0198 §4: "The counter for an entity's own sent stanzas is set to zero and started after
    // sending either <enable/> or <enabled/>."
    this.stanzasSent = 0;
    this.countingSent = true;
    return this.expect((el) => el.getNS() === ns && (el.name === 'enabled' || el.name === 'failed'), `<enabled/> or <failed/> (${ns})`);
  }

  /** Sends `<resume previd h/>` and returns the `<resumed/>` or `<failed/>` that answers it. */
  async resume(previd: string, h: number, ns: SmNamespace = NS.sm3): Promise<Element> {
    this.smNs = ns;
    this.resumeH = h;
    this.send(new Element('resume', { xmlns: ns, previd, h: String(h) }));
    // Counted on this connection only: after <resumed h/>, the peer acks from where that h left off.
    this.stanzasSent = 0;
    this.countingSent = true;
    return this.expect((el) => el.getNS() === ns && (el.name === 'resumed' || el.name === 'failed'), `<resumed/> or <failed/> (${ns})`);
  }

  /** Sends `<r/>` and returns the `h` of the `<a/>` that answers it. */
  async ackRequest(): Promise<number> {
    this.send(new Element('r', { xmlns: this.smNs }));
    const answer = await this.expect((el) => el.is('a', this.smNs), `<a/> (${this.smNs})`);
    const h = Number(answer.attrs.h);
    if (!Number.isInteger(h)) throw new Error(`<a/> without a numeric h: ${show(answer)}`);
    return h;
  }

  /** Sends `<a h/>` with the number of stanzas received since SM was enabled or resumed. */
  ack(h = this.stanzasReceived): void {
    this.send(new Element('a', { xmlns: this.smNs, h: String(h) }));
  }

  // ---- stanzas -------------------------------------------------------------------------------

  /** Sends a chat message and returns its id. */
  sendMessage(to: string, body: string, id = this.id('msg')): string {
    const message = new Element('message', { to, type: 'chat', id });
    message.c('body').t(body);
    this.send(message);
    return id;
  }

  /**
   * A round trip to the server itself (a XEP-0030 disco#info query of the stream's domain): once
   * it is answered, the server has handled everything this client sent before it.
   */
  async syncWithServer(): Promise<void> {
    const id = this.id('sync');
    this.send(
      new Element('iq', { type: 'get', id, to: this.domain }).c('query', { xmlns: 'http://jabber.org/protocol/disco#info' }).root(),
    );
    await this.expectIqResult(id, "the server's answer to a disco#info query");
  }

  /** The next `<message/>` (inbox first) that satisfies `predicate`. */
  expectMessage(predicate: ElementPredicate = () => true, timeoutMs = this.defaultTimeoutMs): Promise<Element> {
    return this.expect((el) => el.name === 'message' && predicate(el), '<message/>', timeoutMs);
  }

  /** Sends `<presence/>` with these attributes (none: initial available presence). */
  presence(attrs: Record<string, string> = {}): void {
    this.send(new Element('presence', attrs));
  }

  // ---- ending --------------------------------------------------------------------------------

  /**
   * A network cut: the socket is destroyed without `</stream:stream>` (over WebSocket: without
   * `<close/>` and without a WebSocket close frame). 'fin' closes TCP normally, 'reset' sends a TCP RST.
   */
  drop(how: 'fin' | 'reset' = 'fin'): void {
    this.closed = true;
    const connection = this.connection;
    if (how === 'reset') connection.tcp.resetAndDestroy();
    if (connection.kind === 'websocket') connection.ws.terminate();
    else connection.socket.destroy();
    connection.tcp.destroy();
  }

  /**
   * RFC 6120 §4.4: sends `</stream:stream>`, waits for the peer's close or the socket's end, then ends
   * the socket. Over WebSocket (RFC 7395 §3.6): `<close/>`, the peer's `<close/>`, then the
   * WebSocket closing handshake.
   */
  async close(timeoutMs = this.defaultTimeoutMs): Promise<void> {
    if (this.closed) return;
    this.write(this.connection.kind === 'websocket' ? `<close xmlns='${NS.framing}'/>` : '</stream:stream>');
    const streamEnd = new Promise<void>((resolve) => {
      if (this.streamClosedByPeer || this.closed) resolve();
      else this.streamEndWaiters.push(resolve);
    });
    await withTimeout(streamEnd, timeoutMs, () =>
      this.waitError("the peer's </stream:stream> or the socket's end", `timed out after ${timeoutMs} ms`),
    );
    const connection = this.connection;
    if (connection.kind === 'websocket') {
      if (connection.ws.readyState === WebSocket.OPEN) connection.ws.close(1000);
    } else {
      connection.socket.end();
    }
    await this.expectClosed(timeoutMs);
  }

  // ---- internals -----------------------------------------------------------------------------

  private id(prefix: string): string {
    return `${prefix}-${this.nextId++}`;
  }

  private async expectSaslSuccess(mechanism: string): Promise<void> {
    const outcome = await this.expectSasl(['success', 'failure'], `SASL ${mechanism} <success/>`);
    if (outcome.name !== 'success') throw new Error(`SASL ${mechanism} failed: ${show(outcome)}`);
  }

  private expectSasl(names: string[], what: string): Promise<Element> {
    return this.expect((el) => el.getNS() === NS.sasl && names.includes(el.name), what);
  }

  private async expectIqResult(id: string, what: string): Promise<Element> {
    const iq = await this.expect(
      (el) => el.name === 'iq' && el.attrs.id === id && (el.attrs.type === 'result' || el.attrs.type === 'error'),
      what,
    );
    if (iq.attrs.type === 'error') throw new Error(`${what}: got an error ${show(iq)}`);
    return iq;
  }

  private write(data: Buffer | string): void {
    if (this.closed) throw new Error(`cannot send ${JSON.stringify(String(data).slice(0, 100))}: the connection is closed`);
    const connection = this.connection;
    if (connection.kind === 'tcp') {
      connection.socket.write(data);
      return;
    }
    if (connection.ws.readyState !== WebSocket.OPEN) {
      throw new Error(
        `cannot send ${JSON.stringify(String(data).slice(0, 100))}: the WebSocket is ${WS_STATES[connection.ws.readyState] ?? connection.ws.readyState}`,
      );
    }
    // RFC 7395 §3.3.3: one element per message, always a text message.
    connection.ws.send(data, { binary: false });
  }

  private readonly onData = (chunk: Buffer): void => {
    this.feed(this.decoder.write(chunk));
  };

  private readonly onClose = (): void => {
    if (this.connection.kind === 'tcp') this.feed(this.decoder.end());
    this.closed = true;
    this.end('the connection closed');
    for (const resolve of this.closeWaiters) resolve();
    this.closeWaiters = [];
  };

  private readonly onError = (err: Error): void => {
    this.end(`socket error: ${err.message}`);
  };

  private feed(text: string): void {
    if (text === '') return;
    try {
      this.parser.sax.write(text);
    } catch (err) {
      this.end(`not well-formed XML from the peer: ${(err as Error).message}`);
    }
  }

  /**
   * Nothing more can arrive on this stream: fails every pending wait with `reason`, and every later
   * wait that the inbox cannot satisfy. The first reason is kept.
   */
  private end(reason: string): void {
    this.ended ??= reason;
    for (const waiter of this.waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(this.waitError(waiter.what, this.ended));
    }
    this.waiters = [];
    this.headerWaiter?.reject(this.waitError("the peer's stream header", this.ended));
    this.headerWaiter = undefined;
    for (const resolve of this.streamEndWaiters) resolve();
    this.streamEndWaiters = [];
  }

  private attach(socket: Socket): void {
    socket.on('data', this.onData);
    socket.on('close', this.onClose);
    socket.on('error', this.onError);
  }

  private detach(socket: Socket): void {
    socket.off('data', this.onData);
    socket.off('close', this.onClose);
    socket.off('error', this.onError);
  }

  private attachWebSocket(ws: WebSocket): void {
    ws.on('message', this.onWebSocketMessage);
    ws.on('close', (code: number, reason: Buffer) => {
      this.wsClose = { code, reason: reason.toString('utf8') };
      this.onClose();
    });
    // Handshake errors are reported by waitForHandshake(); later ones end the stream.
    ws.on('error', (err) => {
      if (ws.readyState !== WebSocket.CONNECTING) this.onError(err);
    });
  }

  /**
   * RFC 7395 §3.3.3: each message is one standalone element: `<open/>` (the stream header),
   * `<close/>` (the stream close), or a top-level element of the stream.
   */
  private readonly onWebSocketMessage = (data: RawData, isBinary: boolean): void => {
    if (isBinary) {
      this.end('a binary WebSocket message from the peer: RFC 7395 §3.2 allows only text messages');
      return;
    }
    // ws has checked that a text message is valid UTF-8 (RFC 6455 §8.1) before emitting it.
    const text = rawDataToBuffer(data).toString('utf8');
    let element: Element;
    try {
      element = parseWebSocketMessage(text);
    } catch (err) {
      this.end(`a bad WebSocket message from the peer: ${(err as Error).message}: ${JSON.stringify(text.slice(0, SHOWN_CHARS))}`);
      return;
    }
    if (element.getNS() !== NS.framing) {
      this.onElement(element);
    } else if (element.name === 'open') {
      this.onHeader(element);
    } else if (element.name === 'close') {
      this.streamClosedByPeer = true;
      this.end("the peer closed the stream (<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>)");
    } else {
      this.end(`<${element.name}/> in the framing namespace: RFC 7395 defines only <open/> and <close/>`);
    }
  };

  private newParser(): StreamParser {
    const parser: StreamParser = { sax: sax.parser(true, { xmlns: false }), cursor: undefined, depth: 0, seenRoot: false };
    const p = parser.sax;
    p.onopentag = (tag) => {
      const element = new Element(tag.name, { ...(tag.attributes as Record<string, string>) });
      if (parser.depth === 0) {
        parser.seenRoot = true;
        this.onHeader(element);
      } else if (parser.cursor === undefined) {
        element.parent = this.streamHeader ?? null;
        parser.cursor = element;
      } else {
        parser.cursor = parser.cursor.cnode(element);
      }
      parser.depth++;
    };
    p.onclosetag = () => {
      parser.depth--;
      if (parser.depth === 0) {
        this.streamClosedByPeer = true;
        this.end('the peer closed the stream (</stream:stream>)');
      } else if (parser.depth === 1) {
        const element = parser.cursor!;
        parser.cursor = undefined;
        this.onElement(element);
      } else {
        parser.cursor = parser.cursor!.parent ?? undefined;
      }
    };
    p.ontext = (text) => {
      if (parser.cursor !== undefined) parser.cursor.t(text);
      // RFC 6120 §4.6.1: between elements only whitespace (keepalives) may appear.
      else if (text.trim() !== '') this.end(`text outside any element from the peer: ${JSON.stringify(text.slice(0, 50))}`);
    };
    p.oncdata = (text) => {
      if (parser.cursor !== undefined) parser.cursor.t(text);
      else this.end('CDATA outside any element from the peer');
    };
    // RFC 6120 §11.1: no comments, DOCTYPE or processing instructions (the XML declaration aside).
    p.oncomment = (comment) => this.end(`restricted XML from the peer: a comment <!--${comment.slice(0, 50)}-->`);
    p.ondoctype = (doctype) => this.end(`restricted XML from the peer: a DOCTYPE ${doctype.slice(0, 50)}`);
    p.onprocessinginstruction = (pi) => {
      if (pi.name !== 'xml' || parser.seenRoot) {
        this.end(`restricted XML from the peer: a processing instruction <?${pi.name} ${pi.body.slice(0, 50)}?>`);
      }
    };
    // sax reports the error here, then throws it from every later write(); end() keeps the first.
    p.onerror = (err) => this.end(`not well-formed XML from the peer: ${err.message.replaceAll('\n', ' ')}`);
    return parser;
  }

  private onHeader(header: Element): void {
    const [name, ns] = this.connection.kind === 'websocket' ? ['open', NS.framing] : ['stream', NS.stream];
    if (!header.is(name, ns)) {
      this.end(`expected a stream header <${name} xmlns='${ns}'>, got <${header.name}>`);
      return;
    }
    this.streamHeader = header;
    this.headerWaiter?.resolve(header);
    this.headerWaiter = undefined;
  }

  private onElement(element: Element): void {
    this.received.push(element);
    // XEP-0198 §4: "the counter for the received stanzas ('h') is set to zero and started after
    // receiving either <enable/> or <enabled/>"; after <resumed/> it continues from the h we sent.
    if (element.is('enabled', this.smNs)) {
      this.stanzasReceived = 0;
      this.countingReceived = true;
    } else if (element.is('resumed', this.smNs)) {
      this.stanzasReceived = this.resumeH;
      this.countingReceived = true;
    } else if (this.countingReceived && STANZA_NAMES.has(element.name)) {
      this.stanzasReceived++;
    }
    const waiter = this.waiters.find((w) => w.predicate(element));
    if (waiter === undefined) {
      this.inbox.push(element);
    } else {
      clearTimeout(waiter.timer);
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.resolve(element);
    }
    // RFC 6120 §4.9.1.1: a stream error is followed by the close of the stream; nothing else comes.
    if (element.is('error', NS.stream)) this.end(`the peer sent a stream error ${show(element)}`);
  }

  private waitError(what: string, reason: string): Error {
    const inbox = this.inbox.length === 0 ? '(empty)' : this.inbox.slice(-SHOWN_ELEMENTS).map(show).join('\n    ');
    const last = this.received.length === 0 ? '(nothing)' : this.received.slice(-SHOWN_ELEMENTS).map(show).join('\n    ');
    const wsClose =
      this.wsClose === undefined
        ? ''
        : `, WebSocket close ${this.wsClose.code}${this.wsClose.reason === '' ? '' : ` '${this.wsClose.reason}'`}`;
    const state = (this.closed ? 'closed' : this.streamClosedByPeer ? 'stream closed by peer' : 'open') + wsClose;
    return new Error(
      `expected ${what}: ${reason} (connection ${state}, ${this.received.length} elements received)` +
        `\n  unconsumed inbox:\n    ${inbox}\n  last received:\n    ${last}`,
    );
  }
}

// ---- helpers -----------------------------------------------------------------------------------

/** The SASL mechanisms RawClient speaks. */
export type SaslMechanism = 'PLAIN' | 'SCRAM-SHA-1' | 'DIGEST-MD5';

/** SASL with `mechanism`, then the stream restart: returns the post-auth features. */
export function authenticate(client: RawClient, mechanism: SaslMechanism, username: string, password: string): Promise<Element> {
  switch (mechanism) {
    case 'PLAIN':
      return client.authenticatePlain(username, password);
    case 'SCRAM-SHA-1':
      return client.authenticateScramSha1(username, password);
    case 'DIGEST-MD5':
      return client.authenticateDigestMd5(username, password);
  }
}

function show(element: Element): string {
  const text = element.toString();
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text;
}

function waitForSocketEvent(socket: Socket, event: 'connect' | 'secureConnect', timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      socket.destroy();
      reject(new Error(`${what}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const onEvent = (): void => {
      cleanup();
      resolve();
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new Error(`${what}: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error(`${what}: the connection closed`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off(event, onEvent);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    socket.once(event, onEvent);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}

/**
 * A client that does not wait for `<proceed/>`: the first bytes TLS writes (the ClientHello) go out
 * in one TCP write after `prefix` (`<starttls/>` and stray bytes), and the peer's `<proceed/>` is
 * taken off the front of what arrives before TLS sees it.
 */
class PipelinedStartTls extends Duplex {
  private prefix: Buffer | undefined;
  /** Bytes received while `<proceed/>` is not complete yet; undefined once it was taken off. */
  private beforeProceed: Buffer | undefined = Buffer.alloc(0);

  constructor(
    private readonly tcp: Socket,
    prefix: Buffer,
  ) {
    super();
    this.prefix = prefix;
    tcp.on('data', (chunk: Buffer) => this.fromPeer(chunk));
    tcp.on('end', () => this.push(null));
    tcp.on('error', (err) => this.destroy(err));
    tcp.on('close', () => this.destroy());
  }

  override _read(): void {
    // Data is pushed as it arrives.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const prefix = this.prefix;
    this.prefix = undefined;
    this.tcp.write(prefix === undefined ? chunk : Buffer.concat([prefix, chunk]), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.tcp.end(callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.tcp.destroy();
    callback(error);
  }

  private fromPeer(chunk: Buffer): void {
    if (this.beforeProceed === undefined) {
      this.push(chunk);
      return;
    }
    const held = Buffer.concat([this.beforeProceed, chunk]);
    const text = held.toString('latin1');
    const end = text.indexOf('/>');
    if (end < 0) {
      this.beforeProceed = held;
      return;
    }
    if (!/^\s*<proceed\s[^>]*xmlns=['"]urn:ietf:params:xml:ns:xmpp-tls['"]/.test(text.slice(0, end))) {
      this.destroy(new Error(`expected <proceed/> before TLS, got ${JSON.stringify(text.slice(0, 200))}`));
      return;
    }
    this.beforeProceed = undefined;
    if (end + 2 < held.length) this.push(held.subarray(end + 2));
  }
}

const WS_STATES = ['connecting', 'open', 'closing', 'closed'];

/** Resolves once the WebSocket is open; a refusal rejects with a WebSocketHandshakeError. */
function waitForHandshake(ws: WebSocket, url: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err === undefined) resolve();
      else reject(err);
    };
    const timer = setTimeout(() => settle(new Error(`WebSocket handshake with ${url}: timed out after ${timeoutMs} ms`)), timeoutMs);
    ws.once('open', () => {
      // RFC 7395 §3.1: the server accepts by echoing the 'xmpp' subprotocol (ws checks it was offered).
      if (ws.protocol === '' || ws.protocol === undefined)
        settle(new Error(`WebSocket handshake with ${url}: the server selected no subprotocol`));
      else settle();
    });
    ws.once('unexpected-response', (request, response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        if (body.length < MAX_REFUSAL_BODY_CHARS) body += chunk;
      });
      const refuse = (): void => {
        settle(new WebSocketHandshakeError(url, response.statusCode ?? 0, body.slice(0, MAX_REFUSAL_BODY_CHARS)));
        request.destroy();
      };
      response.once('end', refuse);
      response.once('error', refuse);
      response.once('close', refuse);
    });
    ws.once('error', (err) => settle(new Error(`WebSocket handshake with ${url}: ${err.message}`, { cause: err })));
    ws.once('close', (code) => settle(new Error(`WebSocket handshake with ${url}: the connection closed (${code})`)));
  });
}

function rawDataToBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Builds ltx elements from sax events in strict mode: `onRoot` gets each element opened at depth 0,
 * `onTopLevel` each element completed at depth 1 (`onRoot` and depth-0 closes are the caller's).
 * Comments, DOCTYPEs, CDATA outside elements and processing instructions other than a leading XML
 * declaration are refused (RFC 6120 §11.1).
 */
function strictDocumentParser(
  rootDepth: 0 | 1,
  onElement: (element: Element) => void,
): { parser: sax.SAXParser; errors: string[]; roots: () => number } {
  const parser = sax.parser(true, { xmlns: false });
  const errors: string[] = [];
  let depth = 0;
  let roots = 0;
  let seenStart = false;
  let cursor: Element | undefined;
  parser.onopentag = (tag) => {
    seenStart = true;
    const element = new Element(tag.name, { ...(tag.attributes as Record<string, string>) });
    if (depth === rootDepth) {
      roots++;
      cursor = element;
    } else if (depth > rootDepth) {
      cursor = cursor!.cnode(element);
    }
    depth++;
  };
  parser.onclosetag = () => {
    depth--;
    if (depth === rootDepth) {
      onElement(cursor!);
      cursor = undefined;
    } else if (depth > rootDepth) {
      cursor = cursor!.parent ?? undefined;
    }
  };
  parser.ontext = (text) => {
    if (cursor !== undefined) cursor.t(text);
    else if (text.trim() !== '') errors.push(`text outside any element: ${JSON.stringify(text.slice(0, 50))}`);
  };
  parser.oncdata = (text) => {
    if (cursor !== undefined) cursor.t(text);
    else errors.push('CDATA outside any element');
  };
  parser.oncomment = (comment) => errors.push(`restricted XML: a comment <!--${comment.slice(0, 50)}-->`);
  parser.ondoctype = (doctype) => errors.push(`restricted XML: a DOCTYPE ${doctype.slice(0, 50)}`);
  parser.onprocessinginstruction = (pi) => {
    if (pi.name !== 'xml' || seenStart) errors.push(`restricted XML: a processing instruction <?${pi.name} ${pi.body.slice(0, 50)}?>`);
  };
  parser.onerror = (err) => {
    errors.push(`not well-formed: ${err.message.replaceAll('\n', ' ')}`);
  };
  return { parser, errors, roots: () => roots };
}

/**
 * RFC 7395 §3.3.3: every message is one complete element starting with '<', a standalone document,
 * so it declares its own namespace. Throws saying which rule the message breaks.
 */
function parseWebSocketMessage(text: string): Element {
  if (!text.startsWith('<')) throw new Error("RFC 7395 §3.3.3: a message must start with '<'");
  const elements: Element[] = [];
  const { parser, errors, roots } = strictDocumentParser(0, (element) => elements.push(element));
  try {
    parser.write(text).close();
  } catch {
    // sax reported the error to onerror first; it is in `errors`.
  }
  if (errors.length > 0) throw new Error(errors[0]);
  if (roots() !== 1 || elements.length !== 1)
    throw new Error(`RFC 7395 §3.3.3: a message must hold exactly one element, this one holds ${roots()}`);
  const element = elements[0]!;
  if (element.getNS() === undefined) {
    throw new Error(`RFC 7395 §3.3.3: <${element.name}> declares no namespace, but every message is a standalone document`);
  }
  return element;
}

/**
 * Splits a fragment of well-formed XML into its top-level elements and makes each a standalone
 * document (RFC 7395 §3.3.3): an unprefixed element without xmlns gets `jabber:client` (its
 * namespace on a TCP stream), and `xmlns:stream` is declared where the `stream:` prefix is used.
 */
function standaloneElements(fragment: string): Element[] {
  const elements: Element[] = [];
  const { parser, errors } = strictDocumentParser(1, (element) => elements.push(element));
  try {
    parser.write(`<fragment xmlns:stream='${NS.stream}'>`).write(fragment).write('</fragment>').close();
  } catch {
    // In `errors`.
  }
  if (errors.length > 0)
    throw new Error(`send(): ${errors[0]} in ${JSON.stringify(fragment.slice(0, 100))}; use sendRaw() for bytes that are not`);
  for (const element of elements) {
    if (!element.name.includes(':') && element.attrs.xmlns === undefined) element.attrs.xmlns = NS.client;
    if (element.attrs['xmlns:stream'] === undefined && usesPrefix(element, 'stream')) element.attrs['xmlns:stream'] = NS.stream;
  }
  return elements;
}

function usesPrefix(element: Element, prefix: string): boolean {
  const marker = `${prefix}:`;
  if (element.name.startsWith(marker) || Object.keys(element.attrs).some((name) => name.startsWith(marker))) return true;
  return element.getChildElements().some((child) => child.attrs[`xmlns:${prefix}`] === undefined && usesPrefix(child, prefix));
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, error: () => Error): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(error()), timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** Names of the top-level elements in a fragment of well-formed XML (for counting sent stanzas). */
function topLevelNames(fragment: string): string[] {
  const names: string[] = [];
  const parser = sax.parser(true, { xmlns: false });
  let depth = 0;
  parser.onopentag = (tag) => {
    if (depth === 1) names.push(tag.name);
    depth++;
  };
  parser.onclosetag = () => {
    depth--;
  };
  parser.write(`<fragment xmlns:stream='${NS.stream}'>`).write(fragment).write('</fragment>').close();
  return names;
}

function escapeAttr(value: string): string {
  return value.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll("'", '&apos;').replaceAll('"', '&quot;');
}

function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

function unb64(text: string): string {
  return Buffer.from(text.trim(), 'base64').toString('utf8');
}

function hmac(key: Buffer, data: string): Buffer {
  return createHmac('sha1', key).update(data, 'utf8').digest();
}

/** RFC 5802 §5.1: saslname escapes ',' and '='. */
function saslName(username: string): string {
  return username.replaceAll('=', '=3D').replaceAll(',', '=2C');
}

/** `a=1,b=2` → Map; values may contain '='. */
/** The directives of a DIGEST-MD5 challenge (RFC 2831 §2.1.1): `key=value` or `key="quoted"`, comma-separated. */
function digestFields(message: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const match of message.matchAll(/([a-zA-Z-]+)=(?:"((?:[^"\\]|\\.)*)"|([^,]*))/g)) {
    fields.set(match[1]!, match[2] === undefined ? match[3]! : match[2].replace(/\\(.)/g, '$1'));
  }
  return fields;
}

function scramFields(message: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return fields;
}
