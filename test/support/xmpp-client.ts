/**
 * A real client library, `@xmpp/client` 0.14 (xmpp.js), connected for end-to-end tests.
 *
 *   const alice = await connectXmppJs({ service: `xmpp://127.0.0.1:${port}`, domain, username, password });
 *   await alice.send(new Element('presence'));
 *   const message = await bob.expectStanza((s) => s.is('message'), 'a message from alice');
 *   alice.cut();                        // network cut: xmpp.js reconnects and resumes (XEP-0198)
 *   await alice.waitForResumed();
 *   await alice.stop();
 *
 * TLS: the proxy's certificate is self-signed, and xmpp.js has no option for TLS settings. Per
 * client (never through NODE_TLS_REJECT_UNAUTHORIZED, which would weaken every connection of the
 * process), this module
 *  - for `xmpps://` overrides the instance's `socketParameters()`, whose result xmpp.js passes to
 *    `tls.connect()`, adding `rejectUnauthorized: false`, `servername` and ALPN `xmpp-client`;
 *  - for `xmpp://` with STARTTLS answers a `<starttls/>` feature itself, on the instance's
 *    `_onElement()`, with the same steps as @xmpp/starttls (`<starttls/>`, `<proceed/>`,
 *    `upgrade()`, `_attachSocket()`, `restart()`) but passing those TLS options to `upgrade()`.
 *    @xmpp/starttls's own handler never sees that features element, so it never runs.
 * Both touch xmpp.js internals of 0.14; re-check them when upgrading.
 *
 * Stream management: @xmpp/client includes @xmpp/stream-management and enables it by itself when
 * the post-auth features carry `<sm xmlns='urn:xmpp:sm:3'/>` (never sm:2), always with
 * resume='true', after resource binding. On a lost connection its reconnect module reconnects
 * (after `reconnectDelayMs`) and sends `<resume/>`; on `<resumed/>` it re-sends its unacked stanzas
 * (with a `<delay/>` added to messages) and emits 'resumed' on `client.streamManagement`, not
 * 'online'. If resumption fails it binds a new session and emits 'online'.
 *
 * COMPAT(@xmpp/client 0.14): SASL PLAIN base64-encodes with btoa(), i.e. Latin-1, not UTF-8: a
 * password with 'ü' is sent as one byte 0xFC and refused (malformed-request), one with a character
 * above U+00FF throws. Its SCRAM-SHA-1 encodes UTF-8 correctly, but runs PBKDF2 in JavaScript:
 * about 0.7 s per login with Prosody's 10000 iterations. Tests that log in often pick PLAIN.
 *
 * COMPAT(@xmpp/client 0.14): it decodes every socket chunk on its own (`data.toString('utf8')`), so a
 * multi-byte UTF-8 character split between two reads is corrupted: keep that in mind before blaming
 * the proxy for a mangled non-ASCII body.
 */
// @ts-expect-error -- @xmpp/client 0.14 ships no type declarations (@types/xmpp__client would add them).
import { client as createXmppClient } from '@xmpp/client';
// @ts-expect-error -- no type declarations: the STARTTLS upgrade helpers of @xmpp/starttls 0.14.
import { canUpgrade, upgrade } from '@xmpp/starttls/starttls.js';
import type { Socket } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Element } from 'ltx';

export type SaslMechanism = 'PLAIN' | 'SCRAM-SHA-1';

export interface XmppJsOptions {
  /** `xmpp://127.0.0.1:PORT` (TCP, STARTTLS when offered) or `xmpps://127.0.0.1:PORT` (direct TLS). */
  service: string;
  domain: string;
  username: string;
  password: string;
  resource?: string;
  /** Default: xmpp.js's choice (SCRAM-SHA-1 when offered; never PLAIN before TLS). */
  mechanism?: SaslMechanism;
  /** Milliseconds for start() to reach 'online' (and SM to be enabled when offered). Default 10000. */
  timeoutMs?: number;
  /** Delay before xmpp.js reconnects after a lost connection. Default 100 (xmpp.js: 1000). */
  reconnectDelayMs?: number;
}

/** The parts of an @xmpp/client 0.14 entity these tests use (the package has no types). */
export interface XmppJsClient {
  status: string;
  jid: { toString(): string } | null;
  /** A net.Socket subclass over TCP; under TLS a wrapper (an EventEmitter) holding the TLSSocket as `.socket`. */
  socket: unknown;
  options: { domain: string; service: string };
  start(): Promise<unknown>;
  stop(): Promise<unknown>;
  send(element: Element): Promise<void>;
  isSecure(): boolean;
  on(event: string, listener: (...args: never[]) => void): unknown;
  once(event: string, listener: (...args: never[]) => void): unknown;
  removeListener(event: string, listener: (...args: never[]) => void): unknown;
  emit(event: string, ...args: unknown[]): boolean;
  iqCaller: {
    get(child: Element, to?: string, timeoutMs?: number): Promise<Element>;
    set(child: Element, to?: string, timeoutMs?: number): Promise<Element>;
    request(iq: Element, timeoutMs?: number): Promise<Element>;
  };
  reconnect: { delay: number; stop(): void; start(): void };
  streamManagement: {
    enabled: boolean;
    id: string;
    /** Stanzas received since enable: the h it acks with. */
    inbound: number;
    /** Stanzas the server has acked. */
    outbound: number;
    outbound_q: Array<{ stanza: Element; stamp: string }>;
    /** Milliseconds between its own `<r/>`s. Default 30000. */
    requestAckInterval: number;
    on(event: 'resumed' | 'ack' | 'fail', listener: (...args: never[]) => void): unknown;
    removeListener(event: string, listener: (...args: never[]) => void): unknown;
  };
  // Internals used for STARTTLS (see the module comment).
  _onElement(element: Element): void;
  _attachSocket(socket: unknown): void;
  restart(): Promise<unknown>;
  sendReceive(element: Element, timeoutMs?: number): Promise<Element>;
  socketParameters(service: string): Record<string, unknown> | undefined;
}

const NS_STREAM = 'http://etherx.jabber.org/streams';
const NS_TLS = 'urn:ietf:params:xml:ns:xmpp-tls';
const NS_SM3 = 'urn:xmpp:sm:3';
const NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind';
const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_WAIT_MS = 5_000;
const SHOWN_ELEMENTS = 5;

/** A started @xmpp/client with what tests need around it. */
export interface XmppJsSession {
  /** The @xmpp/client entity itself. */
  readonly client: XmppJsClient;
  /** Full JID after bind. */
  readonly jid: string;
  /** The features that offered resource binding (after SASL): check `<sm/>` here. */
  readonly postAuthFeatures: Element | undefined;
  /** Every stanza received, in order. */
  readonly stanzas: Element[];
  /** Every nonza received (features, SASL, SM), in order. */
  readonly nonzas: Element[];
  /** Every element the client sent, in order (stanzas and nonzas; not stream headers). */
  readonly sent: Element[];
  /** Every 'error' the client emitted (recorded, so none crashes the test). */
  readonly errors: Error[];
  send(element: Element): Promise<void>;
  /** The first stanza not yet consumed that matches (received ones first), within `timeoutMs`. */
  expectStanza(predicate: (stanza: Element) => boolean, what: string, timeoutMs?: number): Promise<Element>;
  /** A network cut: destroys the TCP socket (under TLS, if any) without closing the stream. */
  cut(): void;
  /** Resolves on XEP-0198 'resumed'; rejects if a new session came 'online' instead, or on timeout. */
  waitForResumed(timeoutMs?: number): Promise<void>;
  /** Stops reconnecting, closes the stream (xmpp.js waits for the peer's close), destroys what is left. */
  stop(): Promise<void>;
}

export async function connectXmppJs(options: XmppJsOptions): Promise<XmppJsSession> {
  const { service, domain, username, password, resource, mechanism } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const client = createXmppClient({
    service,
    domain,
    username,
    password,
    resource,
    credentials: async (
      authenticate: (credentials: { username: string; password: string }, mechanism: string) => Promise<void>,
      offered: string[],
      _fast: unknown,
      entity: XmppJsClient,
    ) => {
      const chosen = mechanism ?? (entity.isSecure() ? offered[0] : offered.find((m) => m !== 'PLAIN'));
      if (chosen === undefined || !offered.includes(chosen)) {
        throw new Error(`SASL mechanism ${chosen ?? '(none usable)'} not offered; offered: ${offered.join(', ')}`);
      }
      await authenticate({ username, password }, chosen);
    },
  }) as XmppJsClient;
  client.reconnect.delay = options.reconnectDelayMs ?? 100;
  acceptSelfSignedCertificates(client, domain);

  const stanzas: Element[] = [];
  const nonzas: Element[] = [];
  const sent: Element[] = [];
  const errors: Error[] = [];
  const consumed = new Set<Element>();
  const stanzaWaiters = new Set<(stanza: Element) => void>();
  let postAuthFeatures: Element | undefined;
  let smAnswered: () => void = () => {};
  const smAnswer = new Promise<void>((resolve) => (smAnswered = resolve));

  client.on('error', (err: Error) => errors.push(err));
  client.on('send', (element: Element) => sent.push(element));
  client.on('stanza', (stanza: Element) => {
    stanzas.push(stanza);
    for (const waiter of stanzaWaiters) waiter(stanza);
  });
  client.on('nonza', (nonza: Element) => {
    nonzas.push(nonza);
    if (nonza.is('features', NS_STREAM) && nonza.getChild('bind', NS_BIND) !== undefined) postAuthFeatures = nonza;
    if (nonza.getNS() === NS_SM3 && (nonza.name === 'enabled' || nonza.name === 'failed')) smAnswered();
  });

  const describe = (): string =>
    `errors: [${errors.map((e) => e.message).join('; ')}]; last nonzas: ${nonzas
      .slice(-SHOWN_ELEMENTS)
      .map((n) => n.toString().slice(0, 300))
      .join(' ')}`;

  try {
    await withTimeout(client.start(), timeoutMs, `@xmpp/client to come online at ${service} as ${username}@${domain}`, describe);
    if (postAuthFeatures?.getChild('sm', NS_SM3) !== undefined) {
      await withTimeout(smAnswer, timeoutMs, '<enabled/> or <failed/> after @xmpp/client sent <enable/>', describe);
    }
  } catch (err) {
    client.reconnect.stop();
    destroySocket(client);
    throw err;
  }

  const session: XmppJsSession = {
    client,
    jid: client.jid?.toString() ?? '',
    get postAuthFeatures() {
      return postAuthFeatures;
    },
    stanzas,
    nonzas,
    sent,
    errors,
    send: (element) => client.send(element),
    expectStanza(predicate, what, waitMs = DEFAULT_WAIT_MS) {
      const earlier = stanzas.find((s) => !consumed.has(s) && predicate(s));
      if (earlier !== undefined) {
        consumed.add(earlier);
        return Promise.resolve(earlier);
      }
      return new Promise((resolve, reject) => {
        const waiter = (stanza: Element): void => {
          if (consumed.has(stanza) || !predicate(stanza)) return;
          consumed.add(stanza);
          clearTimeout(timer);
          stanzaWaiters.delete(waiter);
          resolve(stanza);
        };
        const timer = setTimeout(() => {
          stanzaWaiters.delete(waiter);
          const last = stanzas.slice(-SHOWN_ELEMENTS).map((s) => s.toString().slice(0, 300));
          reject(new Error(`expected ${what}: timed out after ${waitMs} ms; last stanzas: ${last.join(' ') || '(none)'}; ${describe()}`));
        }, waitMs);
        stanzaWaiters.add(waiter);
      });
    },
    cut: () => destroySocket(client),
    waitForResumed(waitMs = DEFAULT_WAIT_MS) {
      return new Promise((resolve, reject) => {
        const cleanup = (): void => {
          clearTimeout(timer);
          client.streamManagement.removeListener('resumed', onResumed);
          client.removeListener('online', onOnline);
        };
        const onResumed = (): void => {
          cleanup();
          resolve();
        };
        const onOnline = (): void => {
          cleanup();
          reject(new Error(`expected XEP-0198 resumption, but @xmpp/client bound a new session; ${describe()}`));
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`expected XEP-0198 resumption within ${waitMs} ms (status ${client.status}); ${describe()}`));
        }, waitMs);
        client.streamManagement.on('resumed', onResumed);
        client.on('online', onOnline);
      });
    },
    async stop() {
      client.reconnect.stop();
      if (client.status !== 'offline' && client.status !== 'disconnect') {
        try {
          await withTimeout(client.stop(), DEFAULT_WAIT_MS, '@xmpp/client to stop', describe);
        } catch (err) {
          // The peer did not close in time or the socket was already gone: force it below.
          errors.push(err as Error);
        }
      }
      destroySocket(client);
    },
  };
  return session;
}

/** See the module comment: per-client TLS options for both direct TLS and STARTTLS. */
function acceptSelfSignedCertificates(client: XmppJsClient, domain: string): void {
  const tlsOptions: ConnectionOptions = { rejectUnauthorized: false, servername: domain };

  const socketParameters = client.socketParameters.bind(client);
  client.socketParameters = (service: string) => {
    const parameters = socketParameters(service);
    return parameters !== undefined && service.startsWith('xmpps:')
      ? { ...parameters, ...tlsOptions, ALPNProtocols: ['xmpp-client'] }
      : parameters;
  };

  const onElement = client._onElement.bind(client);
  client._onElement = (element: Element) => {
    if (element.is('features', NS_STREAM) && element.getChild('starttls', NS_TLS) !== undefined && canUpgrade(client.socket)) {
      startTls(client, { host: domain, ...tlsOptions }).catch((err: unknown) => client.emit('error', err));
      return;
    }
    onElement(element);
  };
}

/** RFC 6120 §5.4, as @xmpp/starttls 0.14 does it, with our TLS options. */
async function startTls(client: XmppJsClient, tlsOptions: ConnectionOptions): Promise<void> {
  const answer = await client.sendReceive(new Element('starttls', { xmlns: NS_TLS }));
  if (!answer.is('proceed', NS_TLS)) throw new Error(`STARTTLS refused: ${answer.toString()}`);
  const tlsSocket: unknown = await upgrade(client.socket, tlsOptions);
  client._attachSocket(tlsSocket);
  await client.restart();
}

/** Destroys the connection (destroying a TLSSocket also closes the TCP socket under it). */
function destroySocket(client: XmppJsClient): void {
  const socket = client.socket as { socket?: Socket | null; destroy?: () => void } | null;
  if (socket === null) return;
  if ('socket' in socket) socket.socket?.destroy();
  else socket.destroy?.();
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string, describe: () => string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`expected ${what}: timed out after ${timeoutMs} ms; ${describe()}`)), timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(new Error(`expected ${what}: ${(err as Error).message}; ${describe()}`, { cause: err }));
      },
    );
  });
}
