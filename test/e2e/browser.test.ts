import { existsSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect as netConnect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { waitUntil } from '../support/wait.js';

// A real browser (headless Chromium, through playwright-core) as the XMPP client: the page's own
// JavaScript (test/e2e/browser/xmpp-page.js, no bundler) opens wss:// to the proxy with
// subprotocol 'xmpp', logs in with SASL PLAIN, enables XEP-0198, loses its connection, and resumes.
// The legacy server is a real Prosody 0.12 with mod_smacks off; the sender is a TCP client.

/** Debian's `chromium` package; CI installs it (`apt-get install -y chromium`). Override with CHROMIUM_PATH. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // The proxy's certificate is self-signed (tls.selfSigned in the fixture).
  '--ignore-certificate-errors',
];
const LAUNCH_TIMEOUT_MS = 20_000;
/** Every wait inside the page, in milliseconds. */
const PAGE_WAIT_MS = 5000;
const PAGE_DIR = new URL('./browser/', import.meta.url);
const PAGE_FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/xmpp-page.js': { file: 'xmpp-page.js', type: 'text/javascript; charset=utf-8' },
};

/** What `xmppPage.state()` returns (test/e2e/browser/xmpp-page.js). */
interface PageState {
  connections: number;
  jid: string | null;
  smId: string | null;
  h: number;
  readyState: number | null;
  messages: Array<{ connection: number; id: string | null; from: string | null; body: string | null; delayStamp: string | null }>;
  closes: Array<{ connection: number; code: number; wasClean: boolean }>;
  errors: string[];
  received: number;
}

/**
 * A TCP relay between the browser and the proxy's wss:// port: cut() is the network going away
 * (both TCP connections reset), with no WebSocket close frame and no `<close/>` on either side.
 */
class NetworkPath {
  private readonly sockets = new Set<Socket>();
  private readonly server: NetServer;
  private boundPort = 0;

  constructor(private readonly targetPort: number) {
    this.server = createNetServer((browserSide) => this.relay(browserSide));
  }

  /** The port the browser connects to. */
  get port(): number {
    return this.boundPort;
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.boundPort = (this.server.address() as { port: number }).port;
  }

  /** Resets every connection through the path; returns how many. New connections still get through. */
  cut(): number {
    const count = this.sockets.size;
    for (const socket of this.sockets) socket.resetAndDestroy();
    return count;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private relay(browserSide: Socket): void {
    const proxySide = netConnect({ host: '127.0.0.1', port: this.targetPort });
    for (const socket of [browserSide, proxySide]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      // A reset by cut() is the point: each side just ends.
      socket.on('error', () => socket.destroy());
    }
    browserSide.pipe(proxySide).pipe(browserSide);
  }
}

let prosody: ProsodyServer;
let fixture: ProxyFixture;
let http: HttpServer;
let pageOrigin: string;
let network: NetworkPath;
const hibernated = new Set<string>();
const queuedWhileHibernating = new Map<string, number>();

beforeAll(async () => {
  // The page's own HTTP server first: its origin is the only one the WebSocket listener allows.
  http = createHttpServer((req, res) => {
    const entry = PAGE_FILES[new URL(req.url ?? '/', 'http://localhost').pathname];
    if (entry === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': entry.type, 'Cache-Control': 'no-store' }).end(readFileSync(new URL(entry.file, PAGE_DIR)));
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  pageOrigin = `http://127.0.0.1:${(http.address() as { port: number }).port}`;
  prosody = await startProsody({ users: Object.values(USERS) });
  fixture = await startProxyFixture({ server: prosody, websocket: { allowedOrigins: [pageOrigin] } });
  fixture.proxy.events.on('hibernationStarted', (event) => hibernated.add(event.smId));
  fixture.proxy.events.on('stanzaQueuedWhileHibernating', (event) =>
    queuedWhileHibernating.set(event.smId, (queuedWhileHibernating.get(event.smId) ?? 0) + 1),
  );
  network = new NetworkPath(fixture.ports.websocket);
  await network.listen();
}, 30_000);

afterAll(async () => {
  await network?.close();
  await fixture?.stop();
  await prosody?.stop();
  await new Promise<void>((resolve) => (http === undefined ? resolve() : http.close(() => resolve())));
}, 15_000);

/** Launches Debian's Chromium; fails, never skips, when it is not installed. */
async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium is not installed at ${CHROMIUM}: the browser end-to-end test needs Debian's chromium package ` +
        '(apt-get install -y chromium), or CHROMIUM_PATH naming another Chromium binary',
    );
  }
  // playwright gives every launch a fresh, empty user data dir of its own and removes it on close().
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: LAUNCH_TIMEOUT_MS });
}

/**
 * Calls `xmppPage.<method>(...args)` in the page and returns its (awaited) result. A string
 * expression, so the TypeScript transform never touches code that runs in the browser.
 */
function call<T>(page: Page, method: string, ...args: unknown[]): Promise<T> {
  return page.evaluate(`window.xmppPage.${method}(...${JSON.stringify(args)})`) as Promise<T>;
}

describe('a browser client through the WebSocket listener', () => {
  it('logs in, loses its connection, resumes, and receives every message sent meanwhile once, in order', async () => {
    const browser = await launchChromium();
    const pageErrors: string[] = [];
    let bob: LoggedIn | undefined;
    try {
      const page = await browser.newPage();
      page.setDefaultTimeout(PAGE_WAIT_MS * 2);
      page.on('pageerror', (err) => pageErrors.push(err.message));
      page.on('console', (message) => {
        if (message.type() === 'error') pageErrors.push(message.text());
      });
      await page.goto(`${pageOrigin}/`);
      const url = `wss://127.0.0.1:${network.port}${fixture.websocketPath}`;
      const account = { url, domain: fixture.domain, username: 'alice', password: USERS.alice.password };

      const { jid, smId } = await call<{ jid: string; smId: string }>(page, 'login', { ...account, resource: 'browser' });
      expect(jid).toBe(`alice@${fixture.domain}/browser`);
      expect(smId).toMatch(/^[A-Za-z0-9_-]{22,}$/);

      bob = await fixture.login('directtls', USERS.bob, { resource: 'sender' });
      bob.client.sendMessage(jid, 'before the cut', 'before');
      await call(page, 'waitForMessages', 1, PAGE_WAIT_MS);

      // The network goes away: no <close/>, no WebSocket close frame.
      expect(network.cut()).toBeGreaterThan(0);
      const lost = await call<{ code: number; wasClean: boolean } | null>(page, 'waitForClose', PAGE_WAIT_MS);
      expect(lost?.wasClean, `the page's WebSocket ended by the cut: ${JSON.stringify(lost)}`).toBe(false);
      await waitUntil(() => hibernated.has(smId), `the browser's session ${smId} to hibernate`);

      const numbered = [1, 2, 3, 4, 5].map((i) => `numbered ${i}`);
      numbered.forEach((body, i) => bob!.client.sendMessage(jid, body, `n${i + 1}`));
      await waitUntil(
        () => (queuedWhileHibernating.get(smId) ?? 0) >= numbered.length,
        `${numbered.length} messages queued for the hibernating browser session`,
      );

      const resumed = await call<{ name: string; h: string | null; previd: string | null; xml: string }>(page, 'resume', account);
      expect(resumed.name, resumed.xml).toBe('resumed');
      expect(resumed.previd).toBe(smId);
      await call(page, 'waitForMessages', 1 + numbered.length, PAGE_WAIT_MS);
      // Anything replayed twice would come right behind.
      await new Promise((resolve) => setTimeout(resolve, 500));

      const state = await call<PageState>(page, 'state');
      expect(state.errors, 'what the page found wrong in the messages it received').toEqual([]);
      expect(state.messages.map((m) => m.body)).toEqual(['before the cut', ...numbered]);
      const replayed = state.messages.filter((m) => m.connection === 2);
      expect(replayed.map((m) => m.id)).toEqual(['n1', 'n2', 'n3', 'n4', 'n5']);
      // XEP-0203: each replayed message says when it was first sent.
      for (const message of replayed)
        expect(Number.isNaN(Date.parse(message.delayStamp ?? '')), `a <delay stamp/> on ${message.id}`).toBe(false);
      expect(state.messages.every((m) => m.from === bob!.jid)).toBe(true);
      expect(state.h).toBe(1 + numbered.length);

      // The resumed session is the same one, live both ways.
      await call(page, 'sendMessage', bob.jid, 'back online', 'back');
      await bob.client.expectMessage((m) => m.attrs.id === 'back');
      const closed = await call<{ code: number; wasClean: boolean } | null>(page, 'close');
      expect(closed?.wasClean).toBe(true);
      expect(pageErrors, 'errors in the page').toEqual([]);
    } finally {
      if (bob !== undefined && !bob.client.isClosed) await bob.client.close();
      await browser.close();
    }
  }, 45_000);
});
