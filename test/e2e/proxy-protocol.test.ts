import { connect as connectTcp } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet } from '../support/admin-client.js';
import { startEjabberd, type EjabberdServer } from '../support/ejabberd.js';
import { startHaproxy, type Haproxy } from '../support/haproxy.js';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { RawClient } from '../support/raw-client.js';
import { waitUntil } from '../support/wait.js';

// The PROXY protocol on both sides of the proxy (README, Behind a load balancer): Debian's HAProxy
// in front, in TCP mode, sends the header; the proxy takes the client's address from it; and,
// where the legacy server asks for it (ejabberd's `use_proxy_protocol`), sends it on. The client
// connects from 127.0.0.2, so its address differs from HAProxy's (127.0.0.1).

const CLIENT_ADDRESS = '127.0.0.2';

/** The `remote` the proxy's session list shows for `jid`'s session. */
async function remoteOf(fixture: ProxyFixture, jid: string): Promise<string | undefined> {
  const session = [...fixture.proxy.registry.sessions()].map((s) => s.summary()).find((summary) => summary.jid === jid);
  return session?.remote;
}

/** Sends `bytes` on a fresh TCP connection to the proxy from `localAddress`; resolves once the proxy closed it. */
function refusedConnection(port: number, localAddress: string, bytes: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp({ host: '127.0.0.1', port, localAddress });
    const timer = setTimeout(() => reject(new Error('expected the proxy to close the connection within 5 s')), 5000);
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', () => undefined);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;
  const balancers: Haproxy[] = [];

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({
      server,
      tcp: { proxyProtocolFrom: ['127.0.0.1'] },
      websocket: { proxyProtocolFrom: ['127.0.0.1'] },
    });
  }, 60_000);

  afterAll(async () => {
    for (const balancer of balancers) await balancer.stop();
    await fixture?.stop();
    await server?.stop();
  });

  it.each([
    ['v1', 'directtls'],
    ['v2', 'directtls'],
    ['v2', 'starttls'],
    ['v1', 'websocket'],
    ['v2', 'websocket'],
  ] as const)('takes the client address from HAProxy send-proxy %s on the %s port', async (version, transport) => {
    const balancer = await startHaproxy({ backendPort: fixture.ports[transport], sendProxy: version });
    balancers.push(balancer);
    const client = await RawClient.connect({
      host: '127.0.0.1',
      port: balancer.port,
      transport,
      domain: server.domain,
      localAddress: CLIENT_ADDRESS,
    });
    const jid = await client.login(USERS.alice.username, USERS.alice.password, { resource: `balanced-${version}-${transport}` });
    expect(await remoteOf(fixture, jid)).toMatch(new RegExp(`^${CLIENT_ADDRESS.replaceAll('.', '\\.')}:\\d+$`));
    await client.close();
  });

  it('refuses a trusted balancer without a header, and a header from anyone else; serves a direct client without one', async () => {
    const port = fixture.ports.directtls;
    await refusedConnection(port, '127.0.0.1', '\x16\x03\x01\x00\x05hello');
    await refusedConnection(port, CLIENT_ADDRESS, `PROXY TCP4 198.51.100.9 127.0.0.1 40000 ${port}\r\n`);
    const direct = await RawClient.connect({
      host: '127.0.0.1',
      port,
      transport: 'directtls',
      domain: server.domain,
      localAddress: CLIENT_ADDRESS,
    });
    const jid = await direct.login(USERS.bob.username, USERS.bob.password, { resource: 'direct' });
    expect(await remoteOf(fixture, jid)).toMatch(/^127\.0\.0\.2:\d+$/);
    await direct.close();
  });
});

describe('towards ejabberd with use_proxy_protocol', () => {
  let ejabberd: EjabberdServer;

  beforeAll(async () => {
    ejabberd = await startEjabberd({ users: Object.values(USERS), useProxyProtocol: true });
  }, 60_000);

  afterAll(async () => {
    await ejabberd?.stop();
  });

  it.each(['v1', 'v2'] as const)('ejabberd sees the client address HAProxy named, sent on by the proxy in a %s header', async (version) => {
    const fixture = await startProxyFixture({
      server: ejabberd,
      tcp: { proxyProtocolFrom: ['127.0.0.1'] },
      domains: {
        [ejabberd.domain]: { upstream: { host: ejabberd.host, port: ejabberd.c2sPort, connectTimeoutSeconds: 2, proxyProtocol: version } },
      },
      proxyOptions: { skipProbe: false },
      admin: { probeIntervalSeconds: 1 },
    });
    const balancer = await startHaproxy({ backendPort: fixture.ports.directtls, sendProxy: 'v2' });
    try {
      // The proxy's own probe carries a header too (v2 LOCAL, or its own addresses in v1), or ejabberd would drop it.
      await waitUntil(
        async () => (await adminGet(fixture.adminPort!, '/readyz')).status === 200,
        'the probe of ejabberd to succeed',
        10_000,
      );
      const client = await RawClient.connect({
        host: '127.0.0.1',
        port: balancer.port,
        transport: 'directtls',
        domain: ejabberd.domain,
        localAddress: CLIENT_ADDRESS,
      });
      const jid = await client.login(USERS.carol.username, USERS.carol.password, { resource: `through-${version}` });
      let info = '';
      await waitUntil(async () => (info = await ejabberd.connectedUsersInfo()).includes(jid), `ejabberd to list ${jid}`);
      const line = info.split('\n').find((l) => l.startsWith(jid))!;
      expect(line.split('\t'), line).toContain(CLIENT_ADDRESS);
      await client.close();
    } finally {
      await balancer.stop();
      await fixture.stop();
    }
  });
});
