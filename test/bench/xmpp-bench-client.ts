/**
 * A minimal XMPP client for the benchmarks: TCP or direct TLS, SASL PLAIN or SCRAM-SHA-1 (with the
 * salted password cached, as Conversations and other mobile clients do), resource binding, XEP-0198
 * enable / resume / acks. Framing uses the proxy's own StreamScanner (split UTF-8 and elements split
 * across reads are handled). For raw throughput runs, `rawMode()` detaches the scanner once the
 * session is set up and hands the bytes to a cheap counter instead.
 *
 * Not a general client: it trusts any certificate, and it knows only what the benchmarks need.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { StreamScanner, type ScannedElement } from '../../src/xml/stream-scanner.js';

export const NS_CLIENT = 'jabber:client';
export const NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
export const NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind';
export const NS_SM3 = 'urn:xmpp:sm:3';

export interface XmppClientOptions {
  readonly host: string;
  readonly port: number;
  /** TLS from the first byte (XEP-0368 direct TLS, as the proxy's `directtls` listener). */
  readonly tls: boolean;
  readonly domain: string;
  readonly username: string;
  readonly password: string;
  /** Default PLAIN. */
  readonly mechanism?: 'PLAIN' | 'SCRAM-SHA-1';
  /** A TLS session from an earlier connection, for TLS session resumption. */
  readonly tlsSession?: Buffer | undefined;
  readonly localAddress?: string | undefined;
  readonly timeoutMs?: number;
}

/** The client's XEP-0198 state; carried from one connection to the next across a resume. */
export interface SmState {
  id: string | undefined;
  /** Inbound count: stanzas received since `<enabled/>` (modulo 2^32 is irrelevant at bench sizes). */
  h: number;
}

interface Waiter {
  readonly match: (element: ScannedElement) => boolean;
  readonly resolve: (element: ScannedElement) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** Salted passwords by password/salt/iterations: the expensive PBKDF2 is done once per account. */
const saltedPasswords = new Map<string, Buffer>();

function streamHeader(domain: string): string {
  return `<?xml version='1.0'?><stream:stream to='${domain}' version='1.0' xmlns='${NS_CLIENT}' xmlns:stream='http://etherx.jabber.org/streams'>`;
}

/** Value of attribute `name` in the start tag of an element's bytes (bench-grade, no entity decoding). */
export function attr(bytes: Buffer, name: string): string | undefined {
  const text = bytes.toString('latin1', 0, Math.min(bytes.length, 512));
  const end = text.indexOf('>');
  const match = new RegExp(`\\s${name}=(?:'([^']*)'|"([^"]*)")`).exec(end === -1 ? text : text.slice(0, end));
  return match === null ? undefined : (match[1] ?? match[2]);
}

/** Text between `<tag>` (or `<tag ...>`) and `</tag>` in an element's bytes. */
export function childText(bytes: Buffer, tag: string): string | undefined {
  const text = bytes.toString('utf8');
  const start = new RegExp(`<${tag}(?:\\s[^>]*)?>`).exec(text);
  if (start === null) return undefined;
  const from = start.index + start[0].length;
  const to = text.indexOf(`</${tag}>`, from);
  return to === -1 ? undefined : text.slice(from, to);
}

export function isStanza(element: ScannedElement): boolean {
  const n = element.localName;
  return (n === 'message' || n === 'presence' || n === 'iq') && element.ns === NS_CLIENT;
}

export class BenchXmpp {
  readonly socket: Socket | TLSSocket;
  /** performance.now() when the connect began, the TCP connection and the TLS handshake completed. */
  readonly times: { start: number; tcp: number; secure: number } = { start: 0, tcp: 0, secure: 0 };
  jid: string | undefined;
  /** XEP-0198 state once enabled or resumed; `undefined` when SM is off. */
  sm: SmState | undefined;
  /** Answer `<r/>` with `<a/>` at once (default true). */
  autoAck = true;
  /** Stanzas no waiter claimed. */
  onStanza: ((element: ScannedElement) => void) | undefined;
  /** The TLS session ticket received, for a later resumption. */
  tlsSession: Buffer | undefined;
  /** Every stanza received (SM or not). */
  stanzasReceived = 0;
  readonly closed: Promise<void>;

  private scanner: StreamScanner;
  /** The state a `<resume/>` in flight carries on, once `<resumed/>` arrives. */
  private resuming: SmState | undefined;
  private waiters: Waiter[] = [];
  private error: Error | undefined;
  private readonly timeoutMs: number;

  private constructor(
    socket: Socket | TLSSocket,
    private readonly options: XmppClientOptions,
  ) {
    this.socket = socket;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.scanner = this.newScanner();
    socket.on('data', this.onData);
    socket.on('error', (err) => this.failAll(err));
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.failAll(new Error('connection closed'));
        resolve();
      }),
    );
    (socket as TLSSocket).on('session', (session: Buffer) => {
      this.tlsSession = session;
    });
  }

  /** Opens the TCP (and TLS) connection. */
  static connect(options: XmppClientOptions): Promise<BenchXmpp> {
    const start = performance.now();
    const timeoutMs = options.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let socket: Socket | TLSSocket;
      let tcpAt = 0;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no connection to ${options.host}:${options.port} within ${timeoutMs} ms`));
      }, timeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(err);
      };
      if (options.tls) {
        socket = tlsConnect({
          host: options.host,
          port: options.port,
          servername: options.domain,
          rejectUnauthorized: false,
          ALPNProtocols: ['xmpp-client'],
          ...(options.tlsSession === undefined ? {} : { session: options.tlsSession }),
          // Passed on to net.connect; the TLS typings leave it out.
          ...(options.localAddress === undefined ? {} : ({ localAddress: options.localAddress } as object)),
        });
        socket.once('connect', () => {
          tcpAt = performance.now();
          socket.setNoDelay(true);
        });
        socket.once('secureConnect', () => {
          clearTimeout(timer);
          socket.off('error', onError);
          const client = new BenchXmpp(socket, options);
          client.times.start = start;
          client.times.tcp = tcpAt;
          client.times.secure = performance.now();
          resolve(client);
        });
      } else {
        socket = netConnect({ host: options.host, port: options.port, localAddress: options.localAddress });
        socket.once('connect', () => {
          clearTimeout(timer);
          socket.setNoDelay(true);
          socket.off('error', onError);
          const client = new BenchXmpp(socket, options);
          client.times.start = start;
          client.times.tcp = client.times.secure = performance.now();
          resolve(client);
        });
      }
      socket.once('error', onError);
    });
  }

  /** connect + open + login + bind: a bound session. */
  static async login(options: XmppClientOptions, resource?: string): Promise<BenchXmpp> {
    const client = await BenchXmpp.connect(options);
    try {
      await client.open();
      await client.authenticate();
      await client.bind(resource);
      return client;
    } catch (err) {
      client.destroy();
      throw err;
    }
  }

  send(data: string | Buffer): boolean {
    return this.socket.write(data);
  }

  /** Waits for the next element `match` accepts; other elements go on to the default handling. */
  expect(match: (element: ScannedElement) => boolean, what: string, timeoutMs = this.timeoutMs): Promise<ScannedElement> {
    if (this.error !== undefined) return Promise.reject(new Error(`${what}: ${this.error.message}`));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        match,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error(`expected ${what} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Sends the stream header; resolves with the features. */
  async open(): Promise<ScannedElement> {
    const features = this.expect((e) => e.localName === 'features', '<stream:features/>');
    this.send(streamHeader(this.options.domain));
    return features;
  }

  /** SASL (PLAIN or SCRAM-SHA-1), the stream restart, the new features. */
  async authenticate(): Promise<ScannedElement> {
    const outcome = (): Promise<ScannedElement> =>
      this.expect(
        (e) => e.ns === NS_SASL && (e.localName === 'success' || e.localName === 'failure' || e.localName === 'challenge'),
        'SASL answer',
      );
    const { username, password } = this.options;
    let answer: ScannedElement;
    if ((this.options.mechanism ?? 'PLAIN') === 'PLAIN') {
      const pending = outcome();
      const payload = Buffer.from(`\0${username}\0${password}`).toString('base64');
      this.send(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${payload}</auth>`);
      answer = await pending;
    } else {
      const nonce = randomBytes(18).toString('base64');
      const clientFirstBare = `n=${username},r=${nonce}`;
      let pending = outcome();
      this.send(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-1'>${Buffer.from(`n,,${clientFirstBare}`).toString('base64')}</auth>`);
      const challenge = await pending;
      if (challenge.localName !== 'challenge') throw new Error(`SCRAM: expected a challenge, got <${challenge.localName}/>`);
      const serverFirst = Buffer.from(childText(challenge.bytes, 'challenge') ?? '', 'base64').toString();
      const fields = new Map(serverFirst.split(',').map((f) => [f[0], f.slice(2)] as const));
      const serverNonce = fields.get('r') ?? '';
      const salt = Buffer.from(fields.get('s') ?? '', 'base64');
      const iterations = Number(fields.get('i'));
      const key = `${password}\0${salt.toString('base64')}\0${iterations}`;
      let salted = saltedPasswords.get(key);
      if (salted === undefined) {
        salted = pbkdf2Sync(password, salt, iterations, 20, 'sha1');
        saltedPasswords.set(key, salted);
      }
      const clientKey = createHmac('sha1', salted).update('Client Key').digest();
      const storedKey = createHash('sha1').update(clientKey).digest();
      const withoutProof = `c=biws,r=${serverNonce}`;
      const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
      const signature = createHmac('sha1', storedKey).update(authMessage).digest();
      const proof = Buffer.alloc(clientKey.length);
      for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i]! ^ signature[i]!;
      pending = outcome();
      this.send(
        `<response xmlns='${NS_SASL}'>${Buffer.from(`${withoutProof},p=${proof.toString('base64')}`).toString('base64')}</response>`,
      );
      answer = await pending;
    }
    if (answer.localName !== 'success') throw new Error(`SASL failed: ${answer.bytes.toString()}`);
    // The scanner restarted itself on <success/> (see onElement); RFC 6120 §6.4.6: a new stream.
    return this.open();
  }

  /** Binds a resource (RFC 6120 §7); resolves with the full JID. */
  async bind(resource?: string): Promise<string> {
    const id = `bind-${randomBytes(4).toString('hex')}`;
    const pending = this.expect((e) => e.localName === 'iq' && attr(e.bytes, 'id') === id, 'bind result');
    const inner = resource === undefined ? '' : `<resource>${resource}</resource>`;
    this.send(`<iq type='set' id='${id}'><bind xmlns='${NS_BIND}'>${inner}</bind></iq>`);
    const result = await pending;
    const jid = childText(result.bytes, 'jid');
    if (attr(result.bytes, 'type') !== 'result' || jid === undefined) throw new Error(`bind failed: ${result.bytes.toString()}`);
    this.jid = jid;
    return jid;
  }

  /** XEP-0198 `<enable/>`; resolves with the SM-ID (undefined when not resumable). */
  async enableSm(resume: boolean): Promise<string | undefined> {
    const pending = this.expect((e) => e.ns === NS_SM3 && (e.localName === 'enabled' || e.localName === 'failed'), '<enabled/>');
    this.send(`<enable xmlns='${NS_SM3}'${resume ? " resume='true'" : ''}/>`);
    const answer = await pending;
    if (answer.localName !== 'enabled') throw new Error(`enable failed: ${answer.bytes.toString()}`);
    return attr(answer.bytes, 'id');
  }

  /**
   * XEP-0198 `<resume/>` with the state of the earlier connection; resolves with `<resumed/>` (the
   * state is taken over) or rejects with the `<failed/>`.
   */
  async resumeSm(state: SmState): Promise<ScannedElement> {
    const pending = this.expect((e) => e.ns === NS_SM3 && (e.localName === 'resumed' || e.localName === 'failed'), '<resumed/>');
    this.resuming = state;
    this.send(`<resume xmlns='${NS_SM3}' previd='${state.id ?? ''}' h='${state.h}'/>`);
    const answer = await pending;
    if (answer.localName !== 'resumed') throw new Error(`resume failed: ${answer.bytes.toString()}`);
    return answer;
  }

  /** Sends `<a h/>` with the inbound count. */
  ack(): void {
    if (this.sm !== undefined) this.send(`<a xmlns='${NS_SM3}' h='${this.sm.h}'/>`);
  }

  /**
   * Hands every further byte to `onData` instead of the scanner (after setup, for throughput runs).
   * Call only when nothing is in flight towards this client.
   */
  rawMode(onData: (chunk: Buffer) => void): void {
    this.socket.off('data', this.onData);
    this.socket.on('data', onData);
  }

  /** Closes the stream cleanly (`</stream:stream>`), then the socket. */
  close(): void {
    if (this.socket.destroyed) return;
    this.socket.end('</stream:stream>');
  }

  /** Drops the connection without a stream close (what a phone losing its network looks like). */
  destroy(): void {
    this.socket.destroy();
  }

  private newScanner(): StreamScanner {
    return new StreamScanner(
      {
        onStreamOpen: () => undefined,
        onElement: (element) => this.onElement(element),
        onStreamClose: () => this.socket.end(),
        onError: (error) => {
          this.failAll(new Error(`bad XML from the server: ${error.message}`));
          this.socket.destroy();
        },
      },
      { maxStanzaBytes: 1 << 20, maxDepth: 64 },
    );
  }

  private readonly onData = (chunk: Buffer): void => {
    this.scanner.write(chunk);
  };

  private onElement(element: ScannedElement): void {
    if (element.localName === 'success' && element.ns === NS_SASL) this.scanner.restart();
    // The SM state starts here, not when the waiter runs: stanzas in the same read come right after.
    if (element.ns === NS_SM3 && element.localName === 'enabled') this.sm = { id: attr(element.bytes, 'id'), h: 0 };
    if (element.ns === NS_SM3 && element.localName === 'resumed') this.sm = this.resuming;
    if (isStanza(element)) {
      this.stanzasReceived++;
      if (this.sm !== undefined) this.sm.h++;
    } else if (element.ns === NS_SM3 && element.localName === 'r') {
      if (this.autoAck) this.ack();
      return;
    }
    for (let i = 0; i < this.waiters.length; i++) {
      const waiter = this.waiters[i]!;
      if (!waiter.match(element)) continue;
      this.waiters.splice(i, 1);
      clearTimeout(waiter.timer);
      waiter.resolve(element);
      return;
    }
    if (isStanza(element)) this.onStanza?.(element);
  }

  private failAll(err: Error): void {
    this.error ??= err;
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
    }
  }
}

/**
 * Counts occurrences of a byte pattern in a stream of chunks, including occurrences split between
 * chunks. For the throughput client: `</message>` per echo, `<r xmlns` per ack request.
 */
export class PatternCounter {
  private tail: Buffer = Buffer.alloc(0);
  private readonly pattern: Buffer;

  constructor(pattern: string) {
    this.pattern = Buffer.from(pattern);
  }

  count(chunk: Buffer): number {
    const p = this.pattern;
    const L = p.length;
    let n = 0;
    if (this.tail.length > 0) {
      const joined = Buffer.concat([this.tail, chunk.subarray(0, L - 1)]);
      for (let i = joined.indexOf(p); i !== -1 && i < this.tail.length; i = joined.indexOf(p, i + 1)) n++;
    }
    for (let i = chunk.indexOf(p); i !== -1; i = chunk.indexOf(p, i + L)) n++;
    this.tail = chunk.length >= L - 1 ? chunk.subarray(chunk.length - (L - 1)) : Buffer.concat([this.tail, chunk]).subarray(-(L - 1));
    return n;
  }
}

/** A `<message/>` of exactly `bytes` bytes (body padded), addressed to `to`. */
export function fixedSizeMessage(bytes: number, to: string, bodyPrefix = ''): string {
  const head = `<message to='${to}'><body>${bodyPrefix}`;
  const tail = '</body></message>';
  const pad = bytes - Buffer.byteLength(head) - tail.length;
  if (pad < 0) throw new Error(`a message to ${to} cannot be as small as ${bytes} bytes`);
  return head + 'x'.repeat(pad) + tail;
}
