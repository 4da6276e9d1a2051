/**
 * The WebSocket transport (RFC 7395) over real sockets on loopback: the listener, the handshake
 * rules, XEP-0156 discovery, and the link's mapping of messages to ClientLinkHandler events. No
 * proxy and no legacy server: a recording handler stands in for the session.
 */
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ErrorCode, StreamError } from '../../src/errors.js';
import type { ClientLink, ClientLinkHandler, LinkEnd } from '../../src/transport/client-link.js';
import { LiveCredentials } from '../../src/transport/live-credentials.js';
import { createTlsCredentials } from '../../src/transport/tls-credentials.js';
import { WebSocketListener, type WebSocketListenerOptions } from '../../src/transport/websocket-listener.js';
import type { ScannedElement, StreamHeader } from '../../src/xml/stream-scanner.js';

const FRAMING = 'urn:ietf:params:xml:ns:xmpp-framing';
const PATH = '/xmpp-websocket';
const PRE_AUTH_BYTES = 4096;
const MAX_PAYLOAD_BYTES = 64 * 1024;
const WAIT_MS = 3000;
const silentLog = pino({ level: 'silent' });

// --- waiting, always with a timeout that says what was expected ---

function within<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- a handler that records what the link reports ---

type LinkEvent =
  | { type: 'open'; header: StreamHeader }
  | { type: 'element'; element: ScannedElement; text: string }
  | { type: 'close' }
  | { type: 'protocol-error'; error: StreamError }
  | { type: 'end'; end: LinkEnd }
  | { type: 'drain' };

class RecordingHandler implements ClientLinkHandler {
  readonly events: LinkEvent[] = [];
  private waiters: Array<() => void> = [];

  /** Like the session: a protocol error ends the stream with that error. */
  constructor(
    private readonly link: ClientLink,
    private readonly failOnProtocolError = true,
  ) {}

  onStreamOpen(header: StreamHeader): void {
    this.record({ type: 'open', header });
  }
  onElement(element: ScannedElement): void {
    this.record({ type: 'element', element, text: element.bytes.toString('utf8') });
  }
  onStreamClose(): void {
    this.record({ type: 'close' });
  }
  onProtocolError(error: StreamError): void {
    this.record({ type: 'protocol-error', error });
    if (this.failOnProtocolError) this.link.fail(error);
  }
  onEnd(end: LinkEnd): void {
    this.record({ type: 'end', end });
  }
  onDrain(): void {
    this.record({ type: 'drain' });
  }

  /** Waits for the next event of a type that has not been consumed yet by a previous wait. */
  async next<T extends LinkEvent['type']>(type: T, ms = WAIT_MS): Promise<Extract<LinkEvent, { type: T }>> {
    const found = (): Extract<LinkEvent, { type: T }> | undefined =>
      this.events.find((e): e is Extract<LinkEvent, { type: T }> => e.type === type);
    await within(
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (found() !== undefined) resolve();
          else this.waiters.push(check);
        };
        check();
      }),
      `the link to report '${type}' (got: ${this.events.map((e) => e.type).join(', ') || 'nothing'})`,
      ms,
    );
    return found() as Extract<LinkEvent, { type: T }>;
  }

  ofType<T extends LinkEvent['type']>(type: T): Array<Extract<LinkEvent, { type: T }>> {
    return this.events.filter((e): e is Extract<LinkEvent, { type: T }> => e.type === type);
  }

  /** Waits for onEnd, gives it a moment to be repeated, and checks it came exactly once. */
  async endedOnce(ms = WAIT_MS): Promise<LinkEnd> {
    const { end } = await this.next('end', ms);
    await delay(50);
    expect(this.ofType('end'), 'onEnd is called exactly once').toHaveLength(1);
    expect(this.link.ended).toBe(true);
    return end;
  }

  private record(event: LinkEvent): void {
    this.events.push(event);
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }
}

// --- a listener under test ---

interface Accepted {
  readonly link: ClientLink;
  readonly handler: RecordingHandler;
}

interface Harness {
  readonly port: number;
  readonly url: string;
  /** The next link the listener accepts (in order). */
  nextLink(): Promise<Accepted>;
}

const listeners: WebSocketListener[] = [];
const clients: WebSocket[] = [];

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate();
  for (const listener of listeners.splice(0)) {
    listener.destroyAll();
    await within(listener.stopAccepting(), 'the listener to stop');
  }
});

const noCredentials = {} as LiveCredentials;

async function startListener(
  patch: Partial<WebSocketListenerOptions> = {},
  handlerOptions: { failOnProtocolError?: boolean } = {},
): Promise<Harness> {
  const accepted: Accepted[] = [];
  let notify: (() => void) | undefined;
  const listener = new WebSocketListener({
    host: '127.0.0.1',
    port: 0,
    tls: false,
    credentials: noCredentials,
    path: PATH,
    allowedOrigins: [],
    pingIntervalMs: 60_000,
    trustedProxies: [],
    proxyProtocolFrom: [],
    limits: () => ({ maxStanzaBytes: PRE_AUTH_BYTES, maxDepth: 16 }),
    maxPayloadBytes: MAX_PAYLOAD_BYTES,
    refused: () => undefined,
    log: silentLog,
    newSid: () => 'sid',
    onLink: (link) => {
      const handler = new RecordingHandler(link, handlerOptions.failOnProtocolError ?? true);
      link.setHandler(handler);
      accepted.push({ link, handler });
      notify?.();
    },
    ...patch,
  });
  listeners.push(listener);
  const { port } = await listener.listen();
  let taken = 0;
  return {
    port,
    url: `${patch.tls === true ? 'wss' : 'ws'}://127.0.0.1:${port}${PATH}`,
    nextLink: async () => {
      await within(
        new Promise<void>((resolve) => {
          const check = (): void => {
            if (accepted.length > taken) resolve();
            else notify = check;
          };
          check();
        }),
        'the listener to accept a WebSocket link',
      );
      return accepted[taken++] as Accepted;
    },
  };
}

// --- a WebSocket client that records what it receives ---

interface Client {
  readonly ws: WebSocket;
  /** Text of each message received, in order. */
  readonly messages: string[];
  /** Waits until `count` messages have arrived and returns them all. */
  received(count: number, what: string): Promise<string[]>;
  /** Resolves with the close code and reason once the WebSocket is closed. */
  readonly closed: Promise<{ code: number; reason: string }>;
}

async function connect(
  url: string,
  options: {
    protocols?: string[];
    origin?: string;
    headers?: Record<string, string>;
    autoPong?: boolean;
    rejectUnauthorized?: boolean;
  } = {},
): Promise<Client> {
  const ws = new WebSocket(url, options.protocols ?? ['xmpp'], {
    ...(options.origin !== undefined ? { origin: options.origin } : {}),
    headers: options.headers ?? {},
    autoPong: options.autoPong ?? true,
    rejectUnauthorized: options.rejectUnauthorized ?? true,
  });
  clients.push(ws);
  const messages: string[] = [];
  let notify: (() => void) | undefined;
  ws.on('message', (data, isBinary) => {
    messages.push(isBinary ? `(binary ${String(data)})` : String(data));
    notify?.();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') }));
  });
  ws.on('error', () => {});
  await within(
    new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => reject(new Error(`handshake refused with HTTP ${res.statusCode ?? '?'}`)));
      ws.once('error', reject);
    }),
    `the WebSocket handshake with ${url}`,
  );
  expect(ws.protocol).toBe('xmpp');
  return {
    ws,
    messages,
    closed,
    received: async (count, what) => {
      await within(
        new Promise<void>((resolve) => {
          const check = (): void => {
            if (messages.length >= count) resolve();
            else notify = check;
          };
          check();
        }),
        `${count} message(s) from the proxy: ${what} (got ${JSON.stringify(messages)})`,
      );
      return messages.slice(0, count);
    },
  };
}

/** A handshake the listener is expected to refuse: its HTTP status, headers and body. */
function refusedHandshake(
  url: string,
  protocols: string[] | undefined,
  options: { origin?: string } = {},
): Promise<{ status: number; body: string }> {
  const ws = protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, protocols, options);
  clients.push(ws);
  ws.on('error', () => {});
  return within(
    new Promise((resolve, reject) => {
      ws.once('open', () => reject(new Error('the handshake was accepted')));
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
    }),
    `the handshake with ${url} to be refused`,
  );
}

function httpGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  options: { tls?: boolean; method?: string } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  const request = options.tls === true ? httpsRequest : httpRequest;
  return within(
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, method: options.method ?? 'GET', headers, rejectUnauthorized: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      });
      req.on('error', reject);
      req.end();
    }),
    `an HTTP answer to ${options.method ?? 'GET'} ${path}`,
  );
}

const OPEN = `<open xmlns='${FRAMING}' to='example.org' version='1.0' xml:lang='en'/>`;
const CLOSE = `<close xmlns='${FRAMING}'/>`;

/** Connects and opens the stream; returns the client and the accepted link. */
async function openStream(harness: Harness, options: Parameters<typeof connect>[1] = {}): Promise<Client & Accepted> {
  const client = await connect(harness.url, options);
  const accepted = await harness.nextLink();
  client.ws.send(OPEN);
  await accepted.handler.next('open');
  return { ...client, ...accepted };
}

describe('WebSocket link: framing (RFC 7395 §3.3-§3.6)', () => {
  it('maps <open/> to onStreamOpen with its attributes and answers with an <open/> header', async () => {
    const harness = await startListener();
    const { handler, link, received } = await openStream(harness);
    const { header } = await handler.next('open');
    expect(header.attrs).toMatchObject({ xmlns: FRAMING, to: 'example.org', version: '1.0', 'xml:lang': 'en' });
    expect(header.bytes.toString('utf8')).toBe(OPEN);
    expect(link.transport).toBe('websocket');
    expect(link.remote).toMatch(/^127\.0\.0\.1:\d+$/);

    link.sendHeader({ from: 'example.org', id: 'abc', version: '1.0', lang: 'en' });
    const [open] = await received(1, 'the <open/> answer');
    expect(open).toBe(`<open xmlns='${FRAMING}' from='example.org' id='abc' version='1.0' xml:lang='en'/>`);
  });

  it('delivers elements in order, giving stanzas without xmlns the jabber:client namespace and unchanged bytes', async () => {
    const harness = await startListener();
    const { ws, handler } = await openStream(harness);
    const bare = `<message to='a@example.org' id='1'><body>hi</body></message>`;
    const declared = `<iq xmlns='jabber:client' type='get' id='2'><ping xmlns='urn:xmpp:ping'/></iq>`;
    const nonza = `<enable xmlns='urn:xmpp:sm:3' resume='true'/>`;
    ws.send(bare);
    ws.send(declared);
    ws.send(nonza);
    await within(
      (async () => {
        while (handler.ofType('element').length < 3 && handler.ofType('protocol-error').length === 0) await delay(10);
      })(),
      'three elements',
    );
    expect(handler.ofType('protocol-error').map((e) => e.error.message)).toEqual([]);
    const elements = handler.ofType('element');
    expect(elements.map((e) => [e.element.localName, e.element.ns, e.text])).toEqual([
      ['message', 'jabber:client', bare],
      ['iq', 'jabber:client', declared],
      ['enable', 'urn:xmpp:sm:3', nonza],
    ]);
  });

  it('takes a message that arrives in several frames as the one element it is (RFC 6455 §5.4)', async () => {
    const harness = await startListener();
    const { ws, handler } = await openStream(harness);
    ws.send(`<message id='f'><body>one `, { fin: false });
    ws.send(`frame, `, { fin: false });
    ws.send(`three</body></message>`, { fin: true });
    await within(
      (async () => {
        while (handler.ofType('element').length < 1 && handler.ofType('protocol-error').length === 0) await delay(10);
      })(),
      'the fragmented message as one element',
    );
    expect(handler.ofType('protocol-error').map((e) => e.error.message)).toEqual([]);
    expect(handler.ofType('element').map((e) => e.text)).toEqual([`<message id='f'><body>one frame, three</body></message>`]);
  });

  it('takes a message in 128 frames, and closes with 1008 one that comes in more (the memory of each held frame)', async () => {
    const harness = await startListener();
    const first = await openStream(harness);
    const body = (frames: number): string[] => [`<message id='m'><body>`, ...new Array<string>(frames - 2).fill('x'), `</body></message>`];
    const sendInFrames = (ws: WebSocket, parts: string[]): void =>
      parts.forEach((part, i) => ws.send(part, { fin: i === parts.length - 1 }));
    sendInFrames(first.ws, body(128));
    await within(
      (async () => {
        while (first.handler.ofType('element').length < 1) await delay(10);
      })(),
      'the message in 128 frames',
    );
    const second = await openStream(harness);
    const closed = new Promise<number>((resolve) => second.ws.once('close', (code: number) => resolve(code)));
    sendInFrames(second.ws, body(129));
    expect(await within(closed, 'the close of a message in 129 frames')).toBe(1008);
    expect(second.handler.ofType('element')).toEqual([]);
  });

  it('ends a stream whose client sends more than 4 × the pre-authentication stanza limit before SASL success, whatever the framing', async () => {
    const harness = await startListener();
    const { ws, handler } = await openStream(harness);
    // One unfinished message, never an element: only the byte count can see it.
    for (let i = 0; i < 5; i++) ws.send('z'.repeat(PRE_AUTH_BYTES), { fin: false });
    await within(
      (async () => {
        while (handler.ofType('protocol-error').length === 0) await delay(10);
      })(),
      'the protocol error',
    );
    const [error] = handler.ofType('protocol-error').map((e) => e.error);
    expect([error?.condition, error?.code]).toEqual(['policy-violation', 'PROXY_ERR_PRE_AUTH_BYTES']);
    expect(error?.message).toContain(`more than ${4 * PRE_AUTH_BYTES} bytes before authentication`);
  });

  it('lifts that budget at SASL success (expectRestart)', async () => {
    const harness = await startListener();
    const { ws, handler, link } = await openStream(harness);
    link.expectRestart();
    for (let i = 0; i < 6; i++) ws.send(`<message id='m${i}'><body>${'z'.repeat(PRE_AUTH_BYTES - 100)}</body></message>`);
    await within(
      (async () => {
        while (handler.ofType('element').length < 6 && handler.ofType('protocol-error').length === 0) await delay(10);
      })(),
      'six messages',
    );
    expect(handler.ofType('protocol-error')).toEqual([]);
  });

  it('maps a restart <open/> after SASL to a second onStreamOpen (expectRestart is a no-op)', async () => {
    const harness = await startListener();
    const { ws, handler, link } = await openStream(harness);
    link.expectRestart();
    ws.send(`<open xmlns='${FRAMING}' to='example.org' version='1.0'/>`);
    await within(
      (async () => {
        while (handler.ofType('open').length < 2) await delay(10);
      })(),
      'a second onStreamOpen',
    );
    expect(handler.ofType('open')[1]?.header.attrs.to).toBe('example.org');
  });

  it('a client <close/> is onStreamClose; close() answers <close/> and closes with 1000; onEnd is clean, once', async () => {
    const harness = await startListener();
    const { ws, handler, link, received, closed } = await openStream(harness);
    ws.send(CLOSE);
    await handler.next('close');
    link.close();
    expect(await received(1, 'the <close/> answer')).toEqual([CLOSE]);
    expect((await within(closed, 'the WebSocket to close')).code).toBe(1000);
    expect(await handler.endedOnce()).toEqual({ kind: 'clean' });
  });

  it('a WebSocket closed without <close/> ends as lost (the session hibernates)', async () => {
    const harness = await startListener();
    const { ws, handler } = await openStream(harness);
    ws.close(1001);
    const end = await handler.endedOnce();
    expect(end.kind).toBe('lost');
  });

  it('close() by the proxy ends as local; destroy() ends as local', async () => {
    const harness = await startListener();
    const first = await openStream(harness);
    first.link.close();
    expect(await first.received(1, '<close/>')).toEqual([CLOSE]);
    expect(await first.handler.endedOnce()).toEqual({ kind: 'local', reason: 'closed by proxy' });

    const second = await openStream(harness);
    second.link.destroy('takeover');
    expect(await second.handler.endedOnce()).toEqual({ kind: 'local', reason: 'takeover' });
    expect((await within(second.closed, 'the WebSocket to drop')).code).toBe(1006);
  });

  it('fail() before any header sends <open/>, the stream error with xmlns:stream, <close/>, then closes with 1000', async () => {
    const harness = await startListener();
    const client = await connect(harness.url);
    const { link, handler } = await harness.nextLink();
    link.fail(new StreamError(ErrorCode.HOST_UNKNOWN, 'host-unknown', 'no such domain'));
    const [open, error, close] = await client.received(3, 'open, stream error, close');
    expect(open).toMatch(new RegExp(`^<open xmlns='${FRAMING}' id='[^']+' version='1.0'/>$`));
    expect(error).toBe(
      "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" +
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>no such domain</text></stream:error>",
    );
    expect(close).toBe(CLOSE);
    expect((await within(client.closed, 'the WebSocket to close')).code).toBe(1000);
    expect(await handler.endedOnce()).toEqual({ kind: 'local', reason: 'stream error host-unknown' });
  });
});

describe('WebSocket link: namespaces on send (RFC 7395 §3.3.3)', () => {
  const cases: Array<[string, string, string]> = [
    [
      'a stanza without xmlns',
      `<message to='a@b' id='1'><body>x</body></message>`,
      `<message xmlns='jabber:client' to='a@b' id='1'><body>x</body></message>`,
    ],
    ['a self-closed stanza', `<presence/>`, `<presence xmlns='jabber:client'/>`],
    ['an iq with whitespace before its attributes', `<iq\n type='result' id='7'/>`, `<iq xmlns='jabber:client'\n type='result' id='7'/>`],
    [
      'stream features',
      `<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>`,
      `<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>`,
    ],
    ['a stanza that declares jabber:client', `<message xmlns='jabber:client' id='1'/>`, `<message xmlns='jabber:client' id='1'/>`],
    [
      'features that declare the stream prefix',
      `<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>`,
      `<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>`,
    ],
    ['a nonza with its own namespace', `<r xmlns='urn:xmpp:sm:3'/>`, `<r xmlns='urn:xmpp:sm:3'/>`],
    [
      'an attribute value containing >',
      `<message id='a>b' to="c@d"><body>e</body></message>`,
      `<message xmlns='jabber:client' id='a>b' to="c@d"><body>e</body></message>`,
    ],
    [
      'a value containing xmlns= text, not a declaration',
      `<iq id="xmlns='x'>" type='get'/>`,
      `<iq xmlns='jabber:client' id="xmlns='x'>" type='get'/>`,
    ],
    [
      'a declaration after a value containing > and a quote',
      `<message id="q'>" xmlns='jabber:client'/>`,
      `<message id="q'>" xmlns='jabber:client'/>`,
    ],
    ['a prefixed element of another namespace', `<sm:a xmlns:sm='urn:xmpp:sm:3' h='1'/>`, `<sm:a xmlns:sm='urn:xmpp:sm:3' h='1'/>`],
  ];

  it.each(cases)('%s', async (_what, sent, expected) => {
    const harness = await startListener();
    const { link, received } = await openStream(harness);
    expect(link.send(sent)).toBe(true);
    expect(link.send(Buffer.from(sent))).toBe(true);
    expect(await received(2, 'the element, twice')).toEqual([expected, expected]);
  });

  it('sends nothing for a whitespace-only write (a TCP keepalive has no WebSocket form)', async () => {
    const harness = await startListener();
    const { link, messages, received } = await openStream(harness);
    expect(link.send(' ')).toBe(true);
    link.send(`<r xmlns='urn:xmpp:sm:3'/>`);
    await received(1, 'the <r/> after the whitespace');
    expect(messages).toEqual([`<r xmlns='urn:xmpp:sm:3'/>`]);
  });

  it('returns false above the high-water mark and calls onDrain once the buffer empties', async () => {
    const harness = await startListener();
    const { ws, link, handler, received } = await openStream(harness);
    // A client that stops reading: the kernel buffers fill, then ws's and the socket's queues.
    ws.pause();
    const big = Buffer.from(`<message xmlns='jabber:client'><body>${'x'.repeat(1024 * 1024)}</body></message>`);
    let accepted = 0;
    while (link.send(big)) {
      accepted++;
      expect(accepted, 'send() to return false before 64 MiB are buffered').toBeLessThan(64);
    }
    expect(handler.ofType('drain')).toHaveLength(0);
    ws.resume();
    await handler.next('drain', 10_000);
    const messages = await received(accepted + 1, 'every stanza sent');
    expect(messages.every((m) => m.length === big.length)).toBe(true);
  }, 20_000);
});

describe('WebSocket link: refused input', () => {
  it('refuses a binary message: unsupported-encoding, then WebSocket close 1003 (RFC 7395 §3.2, RFC 6455 §7.4.1)', async () => {
    const harness = await startListener();
    const { ws, handler, link, received, closed } = await openStream(harness);
    link.sendHeader({ from: 'example.org', id: 'x', version: '1.0' });
    ws.send(Buffer.from(`<presence/>`), { binary: true });
    const { error } = await handler.next('protocol-error');
    expect(error.condition).toBe('unsupported-encoding');
    const messages = await received(3, 'open, stream error, close');
    expect(messages[1]).toContain('<unsupported-encoding ');
    expect(messages[2]).toBe(CLOSE);
    expect((await within(closed, 'the WebSocket to close')).code).toBe(1003);
    expect((await handler.endedOnce()).kind).toBe('local');
    expect(handler.ofType('element')).toHaveLength(0);
  });

  // Refused by ws itself, which closes before the proxy could answer with a stream error; the session
  // still learns why, and the link ends as 'local' (never hibernation, so the input is not replayed).
  it.each([
    [
      'invalid UTF-8 in a text message (RFC 6455 §8.1)',
      (ws: WebSocket) => ws.send(Buffer.from([0x3c, 0x61, 0xc0, 0x80, 0x2f, 0x3e]), { binary: false }),
      'unsupported-encoding',
      1007,
    ],
    ['an unmasked client frame (RFC 6455 §5.1)', (ws: WebSocket) => ws.send(`<presence/>`, { mask: false }), 'not-well-formed', 1002],
  ] as const)('refuses %s: the session sees %s, ws closes with %i', async (_what, send, condition, closeCode) => {
    const harness = await startListener();
    const { ws, handler, closed } = await openStream(harness);
    send(ws);
    const { error } = await handler.next('protocol-error');
    expect(error.condition).toBe(condition);
    expect((await within(closed, 'the WebSocket to close')).code).toBe(closeCode);
    expect((await handler.endedOnce()).kind).toBe('local');
    expect(handler.ofType('element')).toHaveLength(0);
  });

  const malformed: Array<[string, string, string]> = [
    ['two elements in one message', `<presence/><presence/>`, 'not-well-formed'],
    ['text only', `hello`, 'not-well-formed'],
    ['an unclosed element', `<message><body>hi</message>`, 'not-well-formed'],
    ['a comment (RFC 6120 §11.1)', `<message><!-- no --></message>`, 'restricted-xml'],
  ];

  it.each(malformed)('reports %s as %s and ends the stream', async (_what, message, condition) => {
    const harness = await startListener();
    const { ws, handler, received, closed } = await openStream(harness);
    ws.send(message);
    const { error } = await handler.next('protocol-error');
    expect(error).toBeInstanceOf(StreamError);
    expect(error.condition).toBe(condition);
    const messages = await received(3, 'open, stream error, close');
    expect(messages[1]).toContain(`<${condition} `);
    expect((await within(closed, 'the WebSocket to close')).code).toBe(1000);
    expect((await handler.endedOnce()).kind).toBe('local');
    expect(handler.ofType('element')).toHaveLength(0);
  });

  it('refuses an element before <open/> with invalid-namespace', async () => {
    const harness = await startListener();
    const client = await connect(harness.url);
    const { handler } = await harness.nextLink();
    client.ws.send(`<message/>`);
    const { error } = await handler.next('protocol-error');
    expect(error.condition).toBe('invalid-namespace');
    expect(handler.ofType('element')).toHaveLength(0);
    expect((await handler.endedOnce()).kind).toBe('local');
  });

  it('a message over maxPayload (ws closes 1009) reaches the session as policy-violation + stanza-too-big', async () => {
    const harness = await startListener({}, { failOnProtocolError: true });
    const { ws, handler, closed, link } = await openStream(harness);
    // After SASL success: before it, the budget of bytes before authentication stops far smaller messages.
    link.expectRestart();
    ws.send(`<message><body>${'y'.repeat(MAX_PAYLOAD_BYTES)}</body></message>`);
    const { error } = await handler.next('protocol-error');
    expect(error.condition).toBe('policy-violation');
    expect(error.code).toBe(ErrorCode.STANZA_TOO_BIG);
    expect(error.appCondition).toEqual({ name: 'stanza-too-big', xmlns: 'urn:xmpp:errors' });
    expect((await within(closed, 'the WebSocket to close')).code).toBe(1009);
    // Ended by the proxy: never 'lost', so the session does not hibernate and the client cannot replay it.
    expect((await handler.endedOnce()).kind).toBe('local');
  });

  it('applies the pre-auth limit itself, and the raised limit after setLimits', async () => {
    const harness = await startListener();
    const stanza = `<message><body>${'z'.repeat(PRE_AUTH_BYTES)}</body></message>`;

    const raised = await openStream(harness);
    raised.link.setLimits({ maxStanzaBytes: MAX_PAYLOAD_BYTES });
    raised.ws.send(stanza);
    const { element } = await raised.handler.next('element');
    expect(element.bytes.length).toBe(stanza.length);

    const preAuth = await openStream(harness);
    preAuth.ws.send(stanza);
    const { error } = await preAuth.handler.next('protocol-error');
    expect(error.condition).toBe('policy-violation');
    expect(error.appCondition?.name).toBe('stanza-too-big');
    const messages = await preAuth.received(3, 'open, stream error, close');
    expect(messages[1]).toContain(`<stanza-too-big xmlns='urn:xmpp:errors'/>`);
    expect((await within(preAuth.closed, 'the WebSocket to close')).code).toBe(1009);
    expect((await preAuth.handler.endedOnce()).kind).toBe('local');
  });
});

describe('WebSocket listener: handshake (RFC 7395 §3.1)', () => {
  it('refuses a handshake without the xmpp subprotocol with HTTP 400 naming the rule', async () => {
    const harness = await startListener();
    const missing = await refusedHandshake(harness.url, undefined);
    expect(missing.status).toBe(400);
    expect(missing.body).toContain("subprotocol 'xmpp' is required");
    const wrong = await refusedHandshake(harness.url, ['mqtt']);
    expect(wrong.status).toBe(400);
    expect(wrong.body).toContain('RFC 7395 §3.1');
  });

  it('accepts xmpp among several offered subprotocols', async () => {
    const harness = await startListener();
    const client = await connect(harness.url, { protocols: ['chat', 'xmpp'] });
    expect(client.ws.protocol).toBe('xmpp');
  });

  it('answers 404 on another path', async () => {
    const harness = await startListener();
    const refused = await refusedHandshake(`ws://127.0.0.1:${harness.port}/other`, ['xmpp']);
    expect(refused.status).toBe(404);
  });

  it('checks Origin against allowedOrigins: 403 for others, ok for listed ones and for no Origin', async () => {
    const harness = await startListener({ allowedOrigins: ['https://chat.example.org'] });
    const refused = await refusedHandshake(harness.url, ['xmpp'], { origin: 'https://evil.example' });
    expect(refused.status).toBe(403);
    await connect(harness.url, { origin: 'https://Chat.Example.org' });
    await connect(harness.url);
  });

  it('accepts any Origin when allowedOrigins is empty', async () => {
    const harness = await startListener();
    await connect(harness.url, { origin: 'https://anywhere.example' });
  });

  it('answers a plain GET on the endpoint with 426 Upgrade Required, and other requests with 404', async () => {
    const harness = await startListener();
    const get = await httpGet(harness.port, PATH);
    expect(get.status).toBe(426);
    expect(get.headers.upgrade).toBe('websocket');
    expect((await httpGet(harness.port, '/')).status).toBe(404);
    expect((await httpGet(harness.port, '/favicon.ico')).status).toBe(404);
  });
});

describe('WebSocket listener: XEP-0156 discovery', () => {
  it('serves host-meta (XRD) with the request Host and CORS', async () => {
    const harness = await startListener();
    const res = await httpGet(harness.port, '/.well-known/host-meta', { Host: 'chat.example.org' });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/xrd+xml');
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(res.body).toContain("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>");
    expect(res.body).toContain(`<Link rel='urn:xmpp:alt-connections:websocket' href='ws://chat.example.org${PATH}'/>`);
  });

  it('serves host-meta.json (JRD) with the same link', async () => {
    const harness = await startListener();
    const res = await httpGet(harness.port, '/.well-known/host-meta.json', { Host: 'chat.example.org:5443' });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(JSON.parse(res.body)).toEqual({
      links: [{ rel: 'urn:xmpp:alt-connections:websocket', href: `ws://chat.example.org:5443${PATH}` }],
    });
  });

  it('believes X-Forwarded-Proto/-Host only from a trusted proxy', async () => {
    const forwarded = { Host: 'internal:8080', 'X-Forwarded-Proto': 'https', 'X-Forwarded-Host': 'chat.example.org' };
    const untrusted = await startListener();
    const plain = await httpGet(untrusted.port, '/.well-known/host-meta.json', forwarded);
    expect(JSON.parse(plain.body).links[0].href).toBe(`ws://internal:8080${PATH}`);

    const trusted = await startListener({ trustedProxies: ['127.0.0.1'] });
    const behindProxy = await httpGet(trusted.port, '/.well-known/host-meta.json', forwarded);
    expect(JSON.parse(behindProxy.body).links[0].href).toBe(`wss://chat.example.org${PATH}`);
  });

  it('refuses a Host header that would break the URL', async () => {
    const harness = await startListener();
    const res = await httpGet(harness.port, '/.well-known/host-meta', { Host: "x'/><evil" });
    expect(res.status).toBe(400);
  });

  it('announces wss:// on a TLS listener, where the WebSocket works too', async () => {
    const credentials = new LiveCredentials(
      await createTlsCredentials(
        { certificates: [], defaultCertificate: 0, selfSigned: true, minVersion: 'TLSv1.2', ciphers: 'ECDHE+AESGCM' },
        ['example.org'],
        silentLog,
      ),
    );
    const harness = await startListener({ tls: true, credentials });
    const res = await httpGet(harness.port, '/.well-known/host-meta', { Host: 'example.org' }, { tls: true });
    expect(res.body).toContain(`href='wss://example.org${PATH}'`);
    const client = await connect(harness.url, { rejectUnauthorized: false });
    const { handler } = await harness.nextLink();
    client.ws.send(OPEN);
    await handler.next('open');
  }, 20_000);
});

describe('WebSocket listener: client address for logs', () => {
  it('ignores X-Forwarded-For from an untrusted peer', async () => {
    const harness = await startListener();
    await connect(harness.url, { headers: { 'X-Forwarded-For': '203.0.113.7' } });
    const { link } = await harness.nextLink();
    expect(link.remote).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('takes the first untrusted hop of X-Forwarded-For from a trusted proxy', async () => {
    const harness = await startListener({ trustedProxies: ['127.0.0.1', '10.0.0.0/8'] });
    await connect(harness.url, { headers: { 'X-Forwarded-For': '198.51.100.1, 203.0.113.7, 10.1.2.3' } });
    expect((await harness.nextLink()).link.remote).toBe('203.0.113.7');
  });

  it('reads Forwarded: for= from a trusted proxy when there is no X-Forwarded-For', async () => {
    const harness = await startListener({ trustedProxies: ['127.0.0.1'] });
    await connect(harness.url, { headers: { Forwarded: 'for="[2001:db8:cafe::17]:4711";proto=https' } });
    expect((await harness.nextLink()).link.remote).toBe('2001:db8:cafe::17');
  });

  it('ignores a Forwarded header that does not parse (RFC 7239 §4): the peer is the client', async () => {
    const harness = await startListener({ trustedProxies: ['127.0.0.1'] });
    await connect(harness.url, { headers: { Forwarded: 'for="[2001:db8:cafe::17]:4711;proto=https' } });
    expect((await harness.nextLink()).link.remote).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});

describe('WebSocket link: liveness (RFC 7395 §3.8)', () => {
  it('ends a client that stops answering pings as lost', async () => {
    const harness = await startListener({ pingIntervalMs: 100 });
    const { handler } = await openStream(harness, { autoPong: false });
    const end = await handler.endedOnce(2000);
    expect(end).toEqual({ kind: 'lost', reason: 'no WebSocket pong before the next ping' });
  });

  it('keeps a client that answers pings', async () => {
    const harness = await startListener({ pingIntervalMs: 50 });
    const { handler, ws } = await openStream(harness);
    await delay(400);
    expect(handler.ofType('end')).toHaveLength(0);
    ws.send(CLOSE);
    await handler.next('close');
    ws.close();
    expect(await handler.endedOnce()).toEqual({ kind: 'clean' });
  });
});

describe('WebSocket listener: life cycle', () => {
  it('destroyAll drops open links; each ends once (lost, as on the TCP listener)', async () => {
    const harness = await startListener();
    const { handler } = await openStream(harness);
    const listener = listeners[listeners.length - 1];
    listener?.destroyAll();
    const end = await handler.endedOnce();
    expect(end.kind).toBe('lost');
  });
});
