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
 * Incoming bytes are decoded with a StringDecoder (a UTF-8 character split between TLS records is
 * kept whole) and parsed with `sax` in strict mode into ltx `Element`s. Strict on purpose: this
 * client is the oracle for what the proxy writes, so anything not well-formed, a DOCTYPE, a comment
 * or a processing instruction after the XML declaration (RFC 6120 §11) fails every pending wait
 * instead of being skipped as ltx's lenient parser would.
 *
 * Every top-level element received is appended to `received` and, until a wait consumes it, kept in
 * an inbox; `expect()` matches the inbox first, in arrival order, then waits. Every wait has a
 * timeout whose error names what was expected, what is in the inbox and what arrived last.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Element } from 'ltx';
import sax from 'sax';

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
} as const;

export type SmNamespace = typeof NS.sm3 | typeof NS.sm2;
export type RawTransport = 'starttls' | 'directtls';
export type ElementPredicate = (element: Element) => boolean;

export interface RawConnectOptions {
  host: string;
  port: number;
  /** 'starttls': TCP, `<starttls/>`, TLS upgrade. 'directtls': TLS from the first byte (XEP-0368), ALPN xmpp-client. */
  transport: RawTransport;
  /** The stream's `to` and the TLS SNI name. */
  domain: string;
  /** Default for every wait of this client, in milliseconds. Default 5000. */
  timeoutMs?: number;
  /** Stop once TLS is up, before the (re)started stream header: call openStream() yourself. Default true. */
  openStream?: boolean;
}

export interface RawPlainOptions {
  host: string;
  port: number;
  domain: string;
  timeoutMs?: number;
}

export interface EnableSmOptions {
  resume?: boolean;
  /** Preferred maximum resumption time, in seconds. */
  max?: number;
  /** Default urn:xmpp:sm:3. */
  ns?: SmNamespace;
}

const DEFAULT_TIMEOUT_MS = 5_000;
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
  /** True once the peer sent `</stream:stream>`. */
  streamClosedByPeer = false;
  readonly defaultTimeoutMs: number;

  /** The TCP connection, under TLS once TLS is up. */
  private readonly tcp: Socket;
  /** What we read and write: `tcp`, then the TLS socket over it. */
  private socket: Socket;
  private tlsSocket: TLSSocket | undefined;
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

  private constructor(tcp: Socket, domain: string, timeoutMs: number) {
    this.tcp = tcp;
    this.socket = tcp;
    this.domain = domain;
    this.defaultTimeoutMs = timeoutMs;
    this.parser = this.newParser();
    this.attach(tcp);
  }

  /** Connects with TLS (STARTTLS or direct TLS) and, unless `openStream: false`, opens the stream. */
  static async connect(options: RawConnectOptions): Promise<RawClient> {
    const client = await RawClient.connectPlain({ ...options, timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS });
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
    const tcp = netConnect({ host: options.host, port: options.port });
    await waitForSocketEvent(tcp, 'connect', timeoutMs, `TCP connect to ${options.host}:${options.port}`);
    return new RawClient(tcp, options.domain, timeoutMs);
  }

  /** The TLS socket once TLS is up (peer certificate, ALPN, protocol), else undefined. */
  get tls(): TLSSocket | undefined {
    return this.tlsSocket;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- sending -------------------------------------------------------------------------------

  /** Sends one or more well-formed elements (checked: use sendRaw() for anything that is not). */
  send(data: string | Element): void {
    const text = typeof data === 'string' ? data : data.toString();
    const names = topLevelNames(text);
    if (this.countingSent) this.stanzasSent += names.filter((name) => STANZA_NAMES.has(name)).length;
    this.write(text);
  }

  /** Writes bytes as they are: no framing, no counting. */
  sendRaw(bytes: Buffer | string): void {
    this.write(bytes);
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
    this.restartParser();
    const header = new Promise<Element>((resolve, reject) => (this.headerWaiter = { resolve, reject }));
    const headerAttrs = { to: this.domain, version: '1.0', 'xml:lang': 'en', ...attrs };
    const attrText = Object.entries(headerAttrs)
      .map(([name, value]) => ` ${name}='${escapeAttr(value)}'`)
      .join('');
    this.write(`<?xml version='1.0'?><stream:stream${attrText} xmlns='${NS.client}' xmlns:stream='${NS.stream}'>`);
    await withTimeout(header, this.defaultTimeoutMs, () => this.waitError("the peer's stream header", 'timed out'));
    this.features = await this.expectFeatures();
    return this.features;
  }

  /**
   * The next bytes from the peer start a new stream (RFC 6120 §4.3.3): a fresh parser. openStream()
   * does this itself; call it when you write the new header yourself with sendRaw(), e.g. to
   * pipeline a header with `<resume/>`.
   */
  restartParser(): void {
    this.parser = this.newParser();
  }

  /** RFC 6120 §5.4.2: `<starttls/>`, `<proceed/>`, then TLS over this socket. The stream must be restarted next. */
  async starttls(): Promise<void> {
    this.send(`<starttls xmlns='${NS.tls}'/>`);
    const answer = await this.expect((el) => el.getNS() === NS.tls && (el.name === 'proceed' || el.name === 'failure'), '<proceed/>');
    if (answer.name !== 'proceed') throw new Error(`STARTTLS refused: ${show(answer)}`);
    await this.upgradeToTls({}, 'TLS handshake after <proceed/>');
  }

  /** TLS over the TCP socket; the proxy's certificate is self-signed, so it is not verified. */
  private async upgradeToTls(options: Pick<ConnectionOptions, 'ALPNProtocols'>, what: string): Promise<void> {
    this.detach(this.socket);
    const tlsSocket = tlsConnect({ ...options, socket: this.tcp, servername: this.domain, rejectUnauthorized: false });
    await waitForSocketEvent(tlsSocket, 'secureConnect', this.defaultTimeoutMs, what);
    this.tlsSocket = tlsSocket;
    this.socket = tlsSocket;
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
   * A network cut: the socket is destroyed without `</stream:stream>`. 'fin' closes TCP normally,
   * 'reset' sends a TCP RST.
   */
  drop(how: 'fin' | 'reset' = 'fin'): void {
    this.closed = true;
    if (how === 'reset') this.tcp.resetAndDestroy();
    this.socket.destroy();
    this.tcp.destroy();
  }

  /** RFC 6120 §4.4: sends `</stream:stream>`, waits for the peer's close or the socket's end, then ends the socket. */
  async close(timeoutMs = this.defaultTimeoutMs): Promise<void> {
    if (this.closed) return;
    this.write('</stream:stream>');
    const streamEnd = new Promise<void>((resolve) => {
      if (this.streamClosedByPeer || this.closed) resolve();
      else this.streamEndWaiters.push(resolve);
    });
    await withTimeout(streamEnd, timeoutMs, () =>
      this.waitError("the peer's </stream:stream> or the socket's end", `timed out after ${timeoutMs} ms`),
    );
    this.socket.end();
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
    const iq = await this.expect((el) => el.name === 'iq' && el.attrs.id === id && (el.attrs.type === 'result' || el.attrs.type === 'error'), what);
    if (iq.attrs.type === 'error') throw new Error(`${what}: got an error ${show(iq)}`);
    return iq;
  }

  private write(data: Buffer | string): void {
    if (this.closed) throw new Error(`cannot send ${JSON.stringify(String(data).slice(0, 100))}: the connection is closed`);
    this.socket.write(data);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.feed(this.decoder.write(chunk));
  };

  private readonly onClose = (): void => {
    this.feed(this.decoder.end());
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
    if (!header.is('stream', NS.stream)) {
      this.end(`expected a stream header, got <${header.name}>`);
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
    const state = this.closed ? 'closed' : this.streamClosedByPeer ? 'stream closed by peer' : 'open';
    return new Error(
      `expected ${what}: ${reason} (connection ${state}, ${this.received.length} elements received)` +
        `\n  unconsumed inbox:\n    ${inbox}\n  last received:\n    ${last}`,
    );
  }
}

// ---- helpers -----------------------------------------------------------------------------------

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
function scramFields(message: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return fields;
}
