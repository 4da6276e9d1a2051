/**
 * RetryingUpstream against in-memory links: each fake link frames what the test writes as the
 * legacy server with the real StreamScanner and keeps what is written to it as strings; the
 * connector hands out fake links when the test says so (or fails), so a reconnect can be held open.
 */
import { pino, type Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { ErrorCode, UpstreamError, type StreamError } from '../../src/errors.js';
import type { ReleasedUpstream, UpstreamHandler, UpstreamStream, UpstreamTarget } from '../../src/upstream/upstream-link.js';
import { Socket } from 'node:net';
import { MAX_REPLAY_BYTES, RetryingUpstream } from '../../src/upstream/retrying-upstream.js';
import { NS } from '../../src/xml/namespaces.js';
import { renderStreamHeader, STREAM_CLOSE, type StreamHeaderAttrs } from '../../src/xml/stream-header.js';
import { StreamScanner } from '../../src/xml/stream-scanner.js';

const DOMAIN = 'example.com';
const TARGET: UpstreamTarget = {
  domain: DOMAIN,
  host: '127.0.0.1',
  port: 5200,
  security: 'plain',
  connectTimeoutMs: 5000,
  rejectUnauthorized: true,
};
const HEADER: StreamHeaderAttrs = { to: DOMAIN, version: '1.0', lang: 'en' };

const SERVER_HEADER = `<?xml version='1.0'?><stream:stream xmlns='${NS.client}' xmlns:stream='${NS.stream}' from='${DOMAIN}' id='abc' version='1.0'>`;
const FEATURES = `<stream:features><mechanisms xmlns='${NS.sasl}'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`;
const AUTH = `<auth xmlns='${NS.sasl}' mechanism='PLAIN'>AHVzZXIAc2VjcmV0</auth>`;
const SUCCESS = `<success xmlns='${NS.sasl}'/>`;
/** What jabberd2 2.7 sends when the sm's late reply for a closed session hits the reused fd. */
const JABBERD2_ISE = `<stream:error xmlns:stream='${NS.stream}'><internal-server-error xmlns='${NS.streams}'/><text xmlns='${NS.streams}'>internal server error</text></stream:error>`;

/** Lets promise callbacks and `process.nextTick` run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => process.nextTick(resolve));
}

/** A connected link to the legacy server; the test writes as the server would. */
class FakeLink implements UpstreamStream {
  /** What was written to the server, in order: the header rendered, elements as strings. */
  readonly written: string[] = [];
  destroyed = false;
  closed = false;
  paused = false;
  keepaliveMs: number | undefined;
  restarts = 0;
  /** What the next `send` returns (a full socket says false). */
  writable = true;
  private handler: UpstreamHandler | undefined;
  private isEnded = false;
  private readonly scanner = new StreamScanner(
    {
      onStreamOpen: (header) => this.handler?.onStreamOpen(header),
      onElement: (element) => this.handler?.onElement(element),
      onStreamClose: () => this.handler?.onStreamClose(),
      onError: (error) => {
        throw error;
      },
    },
    { maxStanzaBytes: 1 << 20, maxDepth: 64 },
  );

  get ended(): boolean {
    return this.isEnded;
  }

  /** A stand-in for a released socket: what RetryingUpstream passes on is this very object. */
  readonly released = { socket: new Socket(), serverHeader: Buffer.from("<stream:stream xmlns='jabber:client'>") };

  release(): ReleasedUpstream {
    this.isEnded = true;
    return this.released;
  }

  setHandler(handler: UpstreamHandler): void {
    this.handler = handler;
  }

  sendHeader(attrs: StreamHeaderAttrs): void {
    this.written.push(renderStreamHeader(attrs));
  }

  send(element: Buffer | string): boolean {
    this.written.push(element.toString());
    return this.writable;
  }

  startKeepalive(intervalMs: number): void {
    this.keepaliveMs = intervalMs;
  }

  expectRestart(): void {
    this.restarts++;
    this.scanner.restart();
  }

  close(): void {
    this.closed = true;
    this.written.push(STREAM_CLOSE);
  }

  destroy(): void {
    this.destroyed = true;
    this.end(false);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  /** The legacy server writes `xml`. */
  write(xml: string): void {
    this.scanner.write(Buffer.from(xml));
  }

  /** The socket is gone. */
  end(clean: boolean): void {
    if (this.isEnded) return;
    this.isEnded = true;
    this.handler?.onEnd(clean);
  }

  drain(): void {
    this.handler?.onDrain();
  }
}

/** Hands out links: at once by default; `hold()` keeps the next connects pending until the test settles them. */
class FakeConnector {
  readonly links: FakeLink[] = [];
  calls = 0;
  private holding = false;
  private readonly pending: { resolve: (link: FakeLink) => void; reject: (err: unknown) => void }[] = [];

  readonly connect = (target: UpstreamTarget): Promise<UpstreamStream> => {
    expect(target).toBe(TARGET);
    this.calls++;
    if (!this.holding) return Promise.resolve(this.newLink());
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  };

  hold(): void {
    this.holding = true;
  }

  /** Completes the oldest pending connect with a new link. */
  accept(): FakeLink {
    const next = this.pending.shift();
    if (next === undefined) throw new Error('no connect is pending');
    const link = this.newLink();
    next.resolve(link);
    return link;
  }

  /** Fails the oldest pending connect. */
  refuse(err: unknown): void {
    const next = this.pending.shift();
    if (next === undefined) throw new Error('no connect is pending');
    next.reject(err);
  }

  link(index: number): FakeLink {
    const link = this.links[index];
    if (link === undefined) throw new Error(`no link #${index}; ${this.links.length} were connected`);
    return link;
  }

  private newLink(): FakeLink {
    const link = new FakeLink();
    this.links.push(link);
    return link;
  }
}

/** The session's side: every event, in order, as a short string. */
class RecordingHandler implements UpstreamHandler {
  readonly events: string[] = [];
  failure: StreamError | undefined;

  onStreamOpen(): void {
    this.events.push('open');
  }

  onElement(element: { bytes: Buffer }): void {
    this.events.push(element.bytes.toString());
  }

  onStreamClose(): void {
    this.events.push('close');
  }

  onFailure(error: UpstreamError): void {
    this.failure = error;
    this.events.push(`failure ${error.code}`);
  }

  onEnd(clean: boolean): void {
    this.events.push(`end ${clean ? 'clean' : 'unclean'}`);
  }

  onDrain(): void {
    this.events.push('drain');
  }
}

interface Rig {
  readonly connector: FakeConnector;
  readonly upstream: RetryingUpstream;
  readonly handler: RecordingHandler;
  readonly first: FakeLink;
  /** Messages of the warn lines logged. */
  readonly warnings: string[];
}

/** Connects, installs the handler and sends the client's header, as the session does. */
async function open(hold = false): Promise<Rig> {
  const connector = new FakeConnector();
  const warnings: string[] = [];
  const log: Logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push((JSON.parse(line) as { msg: string }).msg) });
  const upstream = await RetryingUpstream.connect(connector.connect, TARGET, log);
  if (hold) connector.hold();
  const handler = new RecordingHandler();
  upstream.setHandler(handler);
  upstream.sendHeader(HEADER);
  return { connector, upstream, handler, first: connector.link(0), warnings };
}

describe('RetryingUpstream: jabberd2 2.7 internal-server-error on a reused fd', () => {
  it('reconnects once, replays the exact bytes in order and swallows the second header and features', async () => {
    const { connector, upstream, handler, first, warnings } = await open();
    first.write(SERVER_HEADER + FEATURES);
    // The session passes subarrays of reused buffers: the replay must be a copy.
    const reused = Buffer.from(`${AUTH}<custom xmlns='urn:example'/>`);
    upstream.send(reused.subarray(0, AUTH.length));
    upstream.send(reused.subarray(AUTH.length));
    reused.fill('x');
    first.write(JABBERD2_ISE + STREAM_CLOSE);

    expect(handler.events).toEqual(['open', FEATURES]);
    expect(first.destroyed).toBe(true);
    expect(warnings).toHaveLength(1);
    expect(upstream.ended).toBe(false);
    await settle();

    expect(connector.calls).toBe(2);
    const second = connector.link(1);
    expect(second.written).toEqual([renderStreamHeader(HEADER)]);
    second.write(SERVER_HEADER);
    expect(second.written).toHaveLength(1);
    second.write(FEATURES);
    expect(second.written).toEqual([renderStreamHeader(HEADER), AUTH, `<custom xmlns='urn:example'/>`]);

    second.write(SUCCESS);
    expect(handler.events).toEqual(['open', FEATURES, SUCCESS]);
    expect(upstream.ended).toBe(false);
    expect(upstream.send('<next/>')).toBe(true);
    expect(second.written.at(-1)).toBe('<next/>');
  });

  it('writes what the session sent during the reconnect after the replay, in order, and then owes it a drain', async () => {
    const { connector, upstream, handler, first } = await open(true);
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    expect(upstream.send('<a1/>')).toBe(false);
    const second = connector.accept();
    await settle();
    expect(upstream.send(Buffer.from('<a2/>'))).toBe(false);
    // Its socket drained the header: the client stays held until the replay is written.
    second.drain();
    second.write(SERVER_HEADER + FEATURES);

    expect(second.written).toEqual([renderStreamHeader(HEADER), AUTH, '<a1/>', '<a2/>']);
    expect(handler.events).toEqual(['open', FEATURES, 'drain']);
  });

  it('leaves the drain to the second link when the replay fills it', async () => {
    const { connector, upstream, handler, first } = await open(true);
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    upstream.send('<a1/>');
    const second = connector.accept();
    await settle();
    second.writable = false;
    second.write(SERVER_HEADER + FEATURES);
    expect(handler.events).toEqual(['open', FEATURES]);
    second.drain();
    expect(handler.events).toEqual(['open', FEATURES, 'drain']);
  });

  it('passes the second stream features on when the first stream ended before its features', async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    await settle();
    const second = connector.link(1);
    second.write(SERVER_HEADER);
    expect(second.written).toEqual([renderStreamHeader(HEADER), AUTH]);
    second.write(FEATURES);
    expect(handler.events).toEqual(['open', FEATURES]);
  });

  it('retries a second time never: the second link error reaches the handler', async () => {
    const { connector, upstream, handler, first, warnings } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    await settle();
    const second = connector.link(1);
    second.write(SERVER_HEADER + FEATURES + JABBERD2_ISE + STREAM_CLOSE);

    expect(handler.events).toEqual(['open', FEATURES, JABBERD2_ISE, 'close']);
    expect(connector.calls).toBe(2);
    expect(warnings).toHaveLength(1);
  });

  it('applies pause and resume to the link there is, and a pause during the reconnect to the new link', async () => {
    const { connector, upstream, first } = await open(true);
    upstream.pause();
    expect(first.paused).toBe(true);
    first.write(SERVER_HEADER + FEATURES + JABBERD2_ISE);
    upstream.resume();
    upstream.pause();
    const second = connector.accept();
    await settle();
    expect(second.paused).toBe(true);
    upstream.resume();
    expect(second.paused).toBe(false);
  });
});

describe('RetryingUpstream: no retry outside the narrow case', () => {
  it.each([
    ['another condition', `<stream:error xmlns:stream='${NS.stream}'><host-gone xmlns='${NS.streams}'/></stream:error>`],
    [
      'internal-server-error in another namespace',
      `<stream:error xmlns:stream='${NS.stream}'><internal-server-error xmlns='urn:example'/></stream:error>`,
    ],
    ['an error element that is no stream error', `<error xmlns='urn:example'><internal-server-error xmlns='${NS.streams}'/></error>`],
  ])('relays %s', async (_label, error) => {
    const { connector, upstream, handler, first, warnings } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(error + STREAM_CLOSE);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, error, 'close']);
    expect(connector.calls).toBe(1);
    expect(first.destroyed).toBe(false);
    expect(warnings).toEqual([]);
  });

  it('relays internal-server-error once the server answered anything', async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(`<challenge xmlns='${NS.sasl}'>abc=</challenge>`);
    upstream.send(`<response xmlns='${NS.sasl}'/>`);
    first.write(JABBERD2_ISE);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, `<challenge xmlns='${NS.sasl}'>abc=</challenge>`, JABBERD2_ISE]);
    expect(connector.calls).toBe(1);
  });

  it('relays internal-server-error after expectRestart()', async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.expectRestart();
    expect(first.restarts).toBe(1);
    first.write(SERVER_HEADER + JABBERD2_ISE);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, 'open', JABBERD2_ISE]);
    expect(connector.calls).toBe(1);
  });

  it('relays internal-server-error after close()', async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.close();
    expect(first.closed).toBe(true);
    first.write(JABBERD2_ISE);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, JABBERD2_ISE]);
    expect(connector.calls).toBe(1);
  });

  it(`relays internal-server-error when the client sent more than ${MAX_REPLAY_BYTES} bytes before it`, async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(`<big>${'x'.repeat(MAX_REPLAY_BYTES)}</big>`);
    first.write(JABBERD2_ISE);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, JABBERD2_ISE]);
    expect(connector.calls).toBe(1);
  });

  it('passes everything through once the server answered', async () => {
    const { upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES + SUCCESS);
    upstream.expectRestart();
    first.write(SERVER_HEADER + FEATURES);
    upstream.startKeepalive(60_000);
    first.drain();
    first.write(STREAM_CLOSE);
    first.end(true);
    expect(handler.events).toEqual(['open', FEATURES, SUCCESS, 'open', FEATURES, 'drain', 'close', 'end clean']);
    expect(first.keepaliveMs).toBe(60_000);
    expect(upstream.ended).toBe(true);
  });

  it('hands its stream over only once it relays: a stream still logging in stays', async () => {
    const { upstream, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    expect(upstream.release(), 'recording').toBeUndefined();
    expect(first.ended).toBe(false);
    first.write(SUCCESS);
    upstream.expectRestart();
    expect(upstream.release()).toBe(first.released);
    expect(upstream.ended).toBe(true);
  });
});

describe('RetryingUpstream: the reconnect ends early', () => {
  it('reports a failed reconnect as a failed link: onFailure with the connect error, then onEnd', async () => {
    const { connector, upstream, handler, first } = await open(true);
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    const refused = new UpstreamError(ErrorCode.UPSTREAM_CONNECT, 'cannot connect to legacy server 127.0.0.1:5200: ECONNREFUSED', {
      text: 'legacy server unreachable',
    });
    connector.refuse(refused);
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, `failure ${ErrorCode.UPSTREAM_CONNECT}`, 'end unclean']);
    expect(handler.failure).toBe(refused);
    expect(handler.failure?.condition).toBe('remote-connection-failed');
    expect(upstream.ended).toBe(true);
    upstream.destroy();
    upstream.close();
    await settle();
    expect(handler.events).toHaveLength(4);
  });

  it('wraps a connect failure that is no UpstreamError', async () => {
    const { connector, upstream, handler, first } = await open(true);
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    connector.refuse(new Error('boom'));
    await settle();
    expect(handler.failure).toBeInstanceOf(UpstreamError);
    expect(handler.failure?.code).toBe(ErrorCode.UPSTREAM_CONNECT);
  });

  it.each(['close', 'destroy'] as const)(
    '%s() during the reconnect ends the stream and destroys the link that arrives later',
    async (how) => {
      const { connector, upstream, handler, first } = await open(true);
      first.write(SERVER_HEADER + FEATURES);
      upstream.send(AUTH);
      first.write(JABBERD2_ISE);
      upstream[how]();
      expect(upstream.ended).toBe(true);
      expect(upstream.send('<late/>')).toBe(true);
      await settle();
      expect(handler.events).toEqual(['open', FEATURES, 'end unclean']);

      const second = connector.accept();
      await settle();
      expect(second.destroyed).toBe(true);
      expect(second.written).toEqual([]);
      expect(handler.events).toHaveLength(3);
    },
  );

  it.each(['close', 'destroy'] as const)('%s() during the reconnect: a connect failing later reports nothing more', async (how) => {
    const { connector, upstream, handler, first } = await open(true);
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    upstream[how]();
    connector.refuse(new UpstreamError(ErrorCode.UPSTREAM_CONNECT, 'refused'));
    await settle();
    expect(handler.events).toEqual(['open', FEATURES, 'end unclean']);
  });

  it.each(['close', 'destroy'] as const)('%s() while the second stream opens destroys it without a replay', async (how) => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    await settle();
    const second = connector.link(1);
    second.write(SERVER_HEADER);
    upstream[how]();
    expect(second.destroyed).toBe(true);
    await settle();
    expect(second.written).toEqual([renderStreamHeader(HEADER)]);
    expect(handler.events).toEqual(['open', FEATURES, 'end unclean']);
  });

  it('reports the second link ending before its features once, without a replay', async () => {
    const { connector, upstream, handler, first } = await open();
    first.write(SERVER_HEADER + FEATURES);
    upstream.send(AUTH);
    first.write(JABBERD2_ISE);
    await settle();
    const second = connector.link(1);
    second.write(SERVER_HEADER + STREAM_CLOSE);
    second.end(true);
    upstream.destroy();
    await settle();
    expect(second.written).toEqual([renderStreamHeader(HEADER)]);
    expect(handler.events).toEqual(['open', FEATURES, 'close', 'end clean']);
    expect(upstream.ended).toBe(true);
  });
});
