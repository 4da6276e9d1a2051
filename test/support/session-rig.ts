/**
 * The session state machine's unit rig: in-memory peers (a fake client link and a fake legacy
 * server stream, both framing what the test writes with the real StreamScanner), a real registry,
 * event emitter and memory budget, and fake timers with the clock injected through `deps.now`.
 * A `Connection`'s verbs are the wire client's (raw-client.ts: `enableSm`, `send`, `sendMessage`,
 * `ack`, `ackRequest`, `expectMessage`, `drop`), so that one scenario runs in both
 * (sm-scenarios.ts).
 */
import { pino } from 'pino';
import { ENABLE_WAIT_MS } from '../../src/session/session-setup.js';
import { expect, vi } from 'vitest';
import type { StreamError } from '../../src/errors.js';
import type { SmEventMap } from '../../src/session/events.js';
import { BUILTIN_HOOKS } from '../../src/features/builtin-hooks.js';
import { LingeringUpstreams } from '../../src/session/lingering-upstream.js';
import { SessionHooks, type SessionHook } from '../../src/session/hooks.js';
import { SmEvents } from '../../src/session/events.js';
import { SessionRegistry } from '../../src/session/session-registry.js';
import { Session } from '../../src/session/session.js';
import { FailedLogins } from '../../src/session/failed-logins.js';
import type { SessionDeps, SessionSettings } from '../../src/session/session-deps.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { StreamManagement } from '../../src/sm/stream-management.js';
import { type HibernatedSession } from '../../src/session/hibernated-snapshot.js';
import { QueueShares } from '../../src/sm/queue-budget.js';
import type { ClientLink, ClientLinkHandler, LinkEnd } from '../../src/transport/client-link.js';
import type { ReleasedUpstream, UpstreamHandler, UpstreamStream, UpstreamTarget } from '../../src/upstream/upstream-link.js';
import { parseElement, xml, type Element } from '../../src/xml/element.js';
import { NS } from '../../src/xml/namespaces.js';
import { renderStreamError } from '../../src/xml/stream-error.js';
import { renderStreamHeader, STREAM_CLOSE, type StreamHeaderAttrs } from '../../src/xml/stream-header.js';
import { StreamScanner, type ScannerHandlers, type ScannerLimits } from '../../src/xml/stream-scanner.js';

export const T0 = 1_700_000_000_000;
export const DOMAIN = 'example.com';
export const USER = `user@${DOMAIN}`;
export const SM = NS.sm3;
const SCANNER_LIMITS: ScannerLimits = { maxStanzaBytes: 1 << 20, maxDepth: 64 };

export const SETTINGS: SessionSettings = {
  hibernationMs: 300_000,
  maxHibernationMs: 600_000,
  maxUnackedStanzas: 0,
  maxAckDelayMs: 30_000,
  ackRequestIntervalMs: 60_000,
  maxQueueStanzas: 1000,
  maxQueueBytes: 1 << 20,
  maxStanzaBytes: 1 << 18,
  maxStanzaBytesPreAuth: 1 << 14,
  authTimeoutMs: 30_000,
  upstreamKeepaliveMs: 60_000,
  expiryPolicy: 'bounce',
  // A stranded session waits out its hibernation only, unless a test says otherwise.
  strandedMs: 0,
};
export const H = SETTINGS.hibernationMs;
export const D = SETTINGS.maxAckDelayMs;

const TARGET: UpstreamTarget = {
  domain: DOMAIN,
  host: '127.0.0.1',
  port: 5222,
  security: 'plain',
  connectTimeoutMs: 5000,
  rejectUnauthorized: true,
};

/** Lets what the session deferred run: `process.nextTick` (not faked) and promise callbacks. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => process.nextTick(resolve));
}

/** Moves the fake clock (timers and `deps.now` together), then lets deferred work run. */
export async function advance(ms: number): Promise<void> {
  vi.advanceTimersByTime(ms);
  await settle();
}

function isHeader(written: string): boolean {
  return written.startsWith('<?xml') || written.startsWith('<stream:stream');
}

/**
 * What both fakes share: the test writes XML as the peer would and a real StreamScanner frames it
 * (stream restarts included) for the session's handler; what the session writes is kept, in
 * order, as strings.
 */
abstract class ScriptedPeer<H extends Pick<ScannerHandlers, 'onStreamOpen' | 'onElement' | 'onStreamClose'>> {
  paused = false;
  protected readonly written: string[] = [];
  protected handler: H | undefined;
  protected isEnded = false;
  protected readonly scanner = new StreamScanner(
    {
      onStreamOpen: (header) => this.handler?.onStreamOpen(header),
      onElement: (element) => this.handler?.onElement(element),
      onStreamClose: () => this.handler?.onStreamClose(),
      onError: (error) => this.onScanError(error),
    },
    SCANNER_LIMITS,
  );

  get ended(): boolean {
    return this.isEnded;
  }

  setHandler(handler: H): void {
    this.handler = handler;
  }

  sendHeader(attrs: StreamHeaderAttrs): void {
    this.written.push(renderStreamHeader(attrs));
  }

  send(element: Buffer | string): boolean {
    if (!this.isEnded) this.written.push(element.toString());
    return true;
  }

  expectRestart(): void {
    this.scanner.restart();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  /** The peer writes `xml` to the session. */
  write(xml: string): void {
    this.scanner.write(Buffer.from(xml));
  }

  protected abstract onScanError(error: StreamError): void;
}

/**
 * A client connection as the session sees it. The test writes XML as the client would; a real
 * StreamScanner frames it (stream restarts included). What the session sends is kept as strings;
 * a stream error is rendered as the real links render it. Links the proxy ends report `onEnd`
 * later, as a socket's `close` event does.
 */
class FakeClientLink extends ScriptedPeer<ClientLinkHandler> implements ClientLink {
  readonly transport = 'directtls' as const;
  readonly remote = '192.0.2.1:50000';
  readonly address = '192.0.2.1';
  readonly endpoints = { client: { address: '192.0.2.1', port: 50000 }, listener: { address: '198.51.100.1', port: 5223 } };
  failure: StreamError | undefined;
  closed = false;
  destroyedBecause: string | undefined;

  /** Everything written to the client, in order. */
  get received(): string[] {
    return this.written;
  }

  fail(error: StreamError): void {
    if (this.isEnded) return;
    this.failure = error;
    this.received.push(renderStreamError(error) + STREAM_CLOSE);
    this.endLater({ kind: 'local', reason: `stream error ${error.condition}` });
  }

  close(): void {
    if (this.isEnded) return;
    this.closed = true;
    this.received.push(STREAM_CLOSE);
    this.endLater({ kind: 'local', reason: 'closed by proxy' });
  }

  destroy(reason: string): void {
    this.destroyedBecause ??= reason;
    this.endLater({ kind: 'local', reason });
  }

  setLimits(limits: Partial<ScannerLimits>): void {
    this.scanner.setLimits(limits);
  }

  protected onScanError(error: StreamError): void {
    this.handler?.onProtocolError(error);
  }

  // --- what the client does ---

  openStream(): void {
    this.write(`<?xml version='1.0'?><stream:stream xmlns='${NS.client}' xmlns:stream='${NS.stream}' to='${DOMAIN}' version='1.0'>`);
  }

  /** The connection is gone without a stream close (a phone losing its network). */
  drop(): void {
    if (this.isEnded) return;
    this.isEnded = true;
    this.handler?.onEnd({ kind: 'lost', reason: 'connection lost without stream close' });
  }

  // --- what the client got ---

  /** The elements written to the client (stream headers left out), parsed. */
  elements(): Element[] {
    return this.received.filter((written) => !isHeader(written) && written !== STREAM_CLOSE).map((written) => parseElement(written));
  }

  last(): string | undefined {
    return this.received.at(-1);
  }

  /** How many `<r/>` the proxy sent to this client. */
  requests(): number {
    return this.received.filter((written) => written === `<r xmlns='${SM}'/>`).length;
  }

  private endLater(end: LinkEnd): void {
    if (this.isEnded) return;
    this.isEnded = true;
    process.nextTick(() => this.handler?.onEnd(end));
  }
}

/**
 * The legacy server's stream as the session sees it. The test writes XML as the server would;
 * a real StreamScanner frames it. What the session sends upstream is kept as strings.
 */
export class FakeUpstream extends ScriptedPeer<UpstreamHandler> implements UpstreamStream {
  closed = false;
  destroyed = false;
  keepaliveMs: number | undefined;

  /** Everything written to the legacy server, in order (headers and `</stream:stream>` included). */
  get sent(): string[] {
    return this.written;
  }

  startKeepalive(intervalMs: number): void {
    this.keepaliveMs = intervalMs;
  }

  /** What `release` hands over (an upgrade); undefined, the default, refuses as a hop over TLS does. */
  releasable: ReleasedUpstream | undefined;

  release(): ReleasedUpstream | undefined {
    const released = this.releasable;
    if (released !== undefined) this.isEnded = true;
    return released;
  }

  close(): void {
    if (this.closed || this.isEnded) return;
    this.sent.push(STREAM_CLOSE);
    this.closed = true;
  }

  destroy(): void {
    this.destroyed = true;
    this.isEnded = true;
  }

  /** The test's own XML from the legacy server is well-formed; anything else is a bug in the test. */
  protected onScanError(error: StreamError): void {
    throw error;
  }

  // --- what the legacy server does ---

  openStream(): void {
    this.write(
      `<?xml version='1.0'?><stream:stream xmlns='${NS.client}' xmlns:stream='${NS.stream}' from='${DOMAIN}' id='up-${this.sent.length}' version='1.0'>`,
    );
  }

  /** The server closes its stream, then the connection (RFC 6120 §4.4). */
  closeStream(): void {
    this.write(STREAM_CLOSE);
    this.isEnded = true;
    this.handler?.onEnd(true);
  }

  /** Answers the last bind request written to it with `jid` (RFC 6120 §7.6.1). */
  answerBind(jid: string): void {
    const request = this.sent.findLast((written) => written.startsWith('<iq') && written.includes(NS.bind));
    if (request === undefined) throw new Error(`no bind request was sent upstream; sent: ${this.sent.join(' ')}`);
    const id = parseElement(request).attrs.id as string;
    this.write(`<iq type='result' id='${id}'><bind xmlns='${NS.bind}'><jid>${jid}</jid></bind></iq>`);
  }

  /** Answers the proxy's round trip on this (hibernated) stream, as a legacy server answers a ping. */
  answerProbe(): void {
    const request = this.sent.findLast((written) => written.includes("id='smacks-probe-"));
    if (request === undefined) throw new Error(`no probe was sent upstream; sent: ${this.sent.join(' ')}`);
    this.write(`<iq type='result' id='${parseElement(request).attrs.id as string}'/>`);
  }
}

type SeenEvents = { [K in keyof SmEventMap]: SmEventMap[K][0][] };

/** What every session of one test shares: the SessionDeps, with the events recorded. */
export class Rig {
  readonly registry = new SessionRegistry({ rememberEndedMs: 3_600_000, maxRememberedEnded: 100 });
  readonly events = new SmEvents();
  readonly budget = new MemoryBudget(Infinity);
  readonly queueShares = new QueueShares(this.budget, { perAccountBytes: Infinity, perAddressBytes: 0 });
  readonly failedLogins = new FailedLogins({ maxFailedLogins: 5, backoffMs: 60_000 });
  readonly lingering = new LingeringUpstreams();
  readonly seen: SeenEvents = {
    ackDelayed: [],
    hibernationStarted: [],
    hibernationEnded: [],
    stanzaQueuedWhileHibernating: [],
    resumed: [],
    smFailed: [],
    sessionEnded: [],
  };
  /** What the sessions counted for the metrics (session-meter.ts). */
  readonly metered = { fromClient: 0, fromClientBytes: 0, toClient: 0, toClientBytes: 0, ackRoundTrips: [] as number[] };
  /** Lines the sessions logged at error level (a session that caught a bug of its own). */
  readonly errors: string[] = [];
  /** Every line the sessions logged at info level and above, parsed. */
  readonly lines: Record<string, unknown>[] = [];
  readonly deps: SessionDeps;
  private sessions = 0;
  private pendingUpstreams: FakeUpstream[] = [];

  constructor(settings: Partial<SessionSettings> = {}, features: readonly SessionHook[] = []) {
    for (const name of Object.keys(this.seen) as (keyof SmEventMap)[]) {
      this.events.on(name, (event: unknown) => {
        (this.seen[name] as unknown[]).push(event);
      });
    }
    this.deps = {
      settings: { ...SETTINGS, ...settings },
      registry: this.registry,
      events: this.events,
      queueShares: this.queueShares,
      failedLogins: this.failedLogins,
      lingering: this.lingering,
      meter: {
        fromClient: (bytes) => {
          this.metered.fromClient++;
          this.metered.fromClientBytes += bytes;
        },
        toClient: (bytes) => {
          this.metered.toClient++;
          this.metered.toClientBytes += bytes;
        },
        ackRoundTrip: (ms) => this.metered.ackRoundTrips.push(ms),
      },
      hooks: new SessionHooks([...BUILTIN_HOOKS, ...features]),
      upstreamFor: (domain) => (domain === DOMAIN ? TARGET : undefined),
      connectUpstream: async () => {
        const upstream = new FakeUpstream();
        this.pendingUpstreams.push(upstream);
        return upstream;
      },
      reportFindings: () => undefined,
      now: () => Date.now(),
    };
  }

  /** A client connects: a new session on a fresh link. */
  connect(): Connection {
    const client = new FakeClientLink();
    const session = new Session(this.deps, { sid: `s${++this.sessions}`, link: client, addressKey: client.address, log: this.logger() });
    return new Connection(this, client, session);
  }

  /**
   * A hibernated session another process handed over (an upgrade), as proxy.ts adopts it: its
   * queue restored under this rig's limits, its upstream stream already inside the server's stream.
   */
  adopt(handed: HibernatedSession): { session: Session; upstream: FakeUpstream } {
    const upstream = new FakeUpstream();
    upstream.openStream();
    const sm = StreamManagement.restore(handed.sm, this.deps.settings, this.queueShares.forSession(USER, handed.addressKey));
    if (!(sm instanceof StreamManagement)) throw new Error(`restore refused: ${sm.reason}`);
    const session = new Session(this.deps, { session: handed, upstream, sm, log: this.logger() });
    return { session, upstream };
  }

  private logger() {
    return pino(
      { level: 'info' },
      {
        write: (line: string) => {
          const parsed = JSON.parse(line) as Record<string, unknown>;
          this.lines.push(parsed);
          if ((parsed.level as number) >= 50) this.errors.push(line);
        },
      },
    );
  }

  /** The upstream stream the last connect asked for. */
  takeUpstream(): FakeUpstream {
    const upstream = this.pendingUpstreams.shift();
    if (upstream === undefined) throw new Error('the session did not connect upstream');
    return upstream;
  }
}

/** One client connection, its session, and that session's upstream: the protocol verbs. */
export class Connection {
  upstream!: FakeUpstream;
  jid = '';
  private sentMessages = 0;
  /** The messages written to the client (by their index) that `expectMessage` handed out. */
  private readonly messagesRead = new Set<number>();

  constructor(
    private readonly rig: Rig,
    readonly client: FakeClientLink,
    readonly session: Session,
  ) {}

  /**
   * Stream open and SASL through the proxy, up to the stream restart after `<success/>`. PLAIN as
   * `user` names USER's account (a resume is then confirmed without an identity bind); `as`
   * another name, or EXTERNAL (which names no account), leaves the identity to the bind check.
   */
  async authenticate(options: { mechanism?: 'PLAIN' | 'EXTERNAL'; as?: string } = {}): Promise<void> {
    const initial = options.mechanism === 'EXTERNAL' ? '=' : Buffer.from(`\0${options.as ?? 'user'}\0secret`).toString('base64');
    this.client.openStream();
    await settle();
    this.upstream = this.rig.takeUpstream();
    this.upstream.openStream();
    this.upstream.write(`<stream:features><mechanisms xmlns='${NS.sasl}'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`);
    this.client.write(`<auth xmlns='${NS.sasl}' mechanism='${options.mechanism ?? 'PLAIN'}'>${initial}</auth>`);
    this.upstream.write(`<success xmlns='${NS.sasl}'/>`);
    this.client.openStream();
    this.upstream.openStream();
    this.upstream.write(`<stream:features><bind xmlns='${NS.bind}'/></stream:features>`);
    expect(this.session.stateName).toBe('authenticated');
  }

  /** Authenticates and binds `resource`: the session is active. */
  async openAndBind(resource = 'phone'): Promise<this> {
    await this.authenticate();
    this.client.write(`<iq type='set' id='bind_1'><bind xmlns='${NS.bind}'><resource>${resource}</resource></bind></iq>`);
    this.jid = `${USER}/${resource}`;
    this.upstream.answerBind(this.jid);
    expect(this.session.stateName).toBe('active');
    return this;
  }

  /**
   * The legacy server grants this connection's bind of `jid`, and the client sends no `<enable/>`:
   * what a new login is handed reaches it ENABLE_WAIT_MS later (session-setup.ts).
   */
  async boundWithoutEnable(jid: string): Promise<void> {
    this.upstream.answerBind(jid);
    await advance(ENABLE_WAIT_MS);
  }

  /** `<enable/>`; returns the `<enabled/>` answer. */
  enableSm(options: { resume?: boolean; max?: number } = {}): Element {
    const max = options.max === undefined ? '' : ` max='${options.max}'`;
    this.client.write(`<enable xmlns='${SM}'${options.resume === true ? " resume='true'" : ''}${max}/>`);
    const enabled = parseElement(this.client.last() ?? '');
    expect(enabled.name).toBe('enabled');
    return enabled;
  }

  /** `<resume/>` on this (authenticated) connection; an identity bind, if the session asks one, is answered for USER. */
  resume(previd: string, h: number): void {
    this.client.write(`<resume xmlns='${SM}' previd='${previd}' h='${h}'/>`);
    if (this.session.stateName === 'resuming') this.upstream.answerBind(`${USER}/identity-check`);
  }

  stanzaFromServer(xml: string): void {
    this.upstream.write(xml);
  }

  /** The client writes `xml` (a stanza, or any element). */
  send(xml: string): void {
    this.client.write(xml);
  }

  /** `<r/>`; returns the `h` of the `<a/>` that answers it. */
  ackRequest(): number {
    this.client.write(`<r xmlns='${SM}'/>`);
    const answer = parseElement(this.client.last() ?? '');
    if (answer.name !== 'a') throw new Error(`<r/> was answered with ${this.client.last() ?? 'nothing'}`);
    return Number(answer.attrs.h);
  }

  /** `<a h/>`. */
  ack(h: number): void {
    this.client.write(`<a xmlns='${SM}' h='${h}'/>`);
  }

  /** A chat message to `to`; returns its id. */
  sendMessage(to: string, body: string, id = `m${++this.sentMessages}`): string {
    this.send(xml('message', { to, id, type: 'chat' }, xml('body', {}, body)).toString());
    return id;
  }

  /** The first message written to this client that satisfies `predicate` and was not handed out before. */
  expectMessage(predicate: (message: Element) => boolean = () => true): Element {
    const messages = this.client.elements().filter((element) => element.name === 'message');
    const index = messages.findIndex((message, i) => !this.messagesRead.has(i) && predicate(message));
    if (index === -1) throw new Error(`no such message came; got ${messages.length}: ${this.client.received.join(' ')}`);
    this.messagesRead.add(index);
    return messages[index]!;
  }

  /** The connection is gone without a stream close (a phone losing its network). */
  drop(): void {
    this.client.drop();
  }

  /** A message from `from` to this connection's JID. */
  messageTo(id: string, from = `alice@${DOMAIN}/desk`, body = id): string {
    return `<message from='${from}' to='${this.jid}' id='${id}' type='chat'><body>${body}</body></message>`;
  }
}
