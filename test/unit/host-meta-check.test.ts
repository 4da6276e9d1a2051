import type { Resolver } from 'node:dns/promises';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import selfsigned from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHostMeta } from '../../src/admin/host-meta-check.js';
import { parseConfig } from '../../src/config/config.js';

// The answers a real host-meta server (the proxy's own, test/e2e/cli.test.ts) does not give: a
// redirect, something that is not XRD, a ws:// link, a link to a host without an address, a path
// no listener serves.

const XRD = (href: string) =>
  `<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='urn:xmpp:alt-connections:websocket' href='${href}'/></XRD>`;

const ANSWERS: Record<string, { status: number; body: string; headers?: Record<string, string> }> = {
  'moved.example': { status: 301, body: '', headers: { Location: 'https://www.moved.example/.well-known/host-meta' } },
  'html.example': { status: 200, body: '<html><body>hello</body></html>' },
  'broken.example': { status: 200, body: '<XRD' },
  'nolink.example': { status: 200, body: "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'/>" },
  'plain.example': { status: 200, body: XRD('ws://plain.example/xmpp-websocket') },
  'elsewhere.example': { status: 200, body: XRD('wss://ws.elsewhere.example/xmpp-websocket') },
  'path.example': { status: 200, body: XRD('wss://path.example/other') },
};

let server: Server;
let port: number;
let ca: string;

beforeAll(async () => {
  const names = Object.keys(ANSWERS);
  const pems = await selfsigned.generate([{ name: 'commonName', value: names[0]! }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: names.map((value) => ({ type: 2 as const, value })) }],
  });
  ca = pems.cert;
  server = createServer({ cert: pems.cert, key: pems.private }, (req, res) => {
    const answer = ANSWERS[req.headers.host!.replace(/:\d+$/, '')]!;
    res.writeHead(answer.status, answer.headers).end(answer.body);
  });
  await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => new Promise<void>((resolveClose) => server.close(() => resolveClose())));

/** Every name resolves to 127.0.0.1 except `ws.elsewhere.example`. */
const resolver = {
  resolve4: async (name: string) =>
    name.startsWith('ws.') ? Promise.reject(Object.assign(new Error('ENOTFOUND'), { code: 'ENOTFOUND' })) : ['127.0.0.1'],
  resolve6: async () => Promise.reject(Object.assign(new Error('ENODATA'), { code: 'ENODATA' })),
} as unknown as Resolver;

function config(domains: string[], listeners: unknown[] = [{ type: 'websocket', port: 5443 }]) {
  return parseConfig(
    {
      listeners,
      tls: { selfSigned: true },
      domains: Object.fromEntries(domains.map((domain) => [domain, { upstream: { host: '127.0.0.1' } }])),
    },
    '/',
  );
}

describe('checkHostMeta', () => {
  it('fetches nothing when no websocket listener is configured', async () => {
    expect(await checkHostMeta(config(['html.example'], [{ type: 'starttls', port: 5222 }]), resolver, { port, ca })).toEqual([]);
  });

  it('warns about a file clients cannot use, and checks each link', async () => {
    const unreachable = 'WebSocket clients that discover by XEP-0156 will not find the proxy';
    expect(await checkHostMeta(config(Object.keys(ANSWERS)), resolver, { port, ca })).toEqual([
      {
        level: 'warning',
        text: `https://moved.example/.well-known/host-meta: answered HTTP 301 (Location: https://www.moved.example/.well-known/host-meta); ${unreachable}`,
      },
      { level: 'warning', text: `https://html.example/.well-known/host-meta: the answer is not an XRD document (<html>); ${unreachable}` },
      { level: 'warning', text: `https://broken.example/.well-known/host-meta: the answer is not XML; ${unreachable}` },
      {
        level: 'warning',
        text: `https://nolink.example/.well-known/host-meta: no link of rel 'urn:xmpp:alt-connections:websocket'; ${unreachable}`,
      },
      {
        level: 'warning',
        text: 'https://plain.example/.well-known/host-meta → ws://plain.example/xmpp-websocket: not wss://, which clients ignore',
      },
      {
        level: 'error',
        text: 'https://elsewhere.example/.well-known/host-meta → wss://ws.elsewhere.example/xmpp-websocket: ws.elsewhere.example has no A or AAAA record',
      },
      {
        level: 'warning',
        text: "https://path.example/.well-known/host-meta → wss://path.example/other: the websocket listeners' paths are /xmpp-websocket (fine if a reverse proxy maps it)",
      },
    ]);
  });

  it('does not trust a certificate a browser would not', async () => {
    const [finding] = await checkHostMeta(config(['html.example']), resolver, { port });
    expect(finding).toEqual({
      level: 'warning',
      text: expect.stringMatching(/^https:\/\/html\.example\/\.well-known\/host-meta: self[- ]signed certificate/),
    });
  });
});
