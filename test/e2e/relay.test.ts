import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS, RawClient, type RawTransport } from '../support/raw-client.js';
import { waitUntil } from '../support/wait.js';

// The core relay (issue "smacks-proxy core") against a real legacy Prosody 0.12, mod_smacks off.

const TRANSPORTS: RawTransport[] = ['starttls', 'directtls', 'websocket'];

let prosody: ProsodyServer;
let fixture: ProxyFixture;
let silentServer: Server;
let silentPort: number;
/** A "legacy server" that offers STARTTLS, says `<proceed/>`, and then never does TLS. */
let stallingTlsServer: Server;
/** Its connections, open or not. */
const stallingTlsSockets: Socket[] = [];

beforeAll(async () => {
  prosody = await startProsody({ users: Object.values(USERS) });
  // A "legacy server" that accepts TCP and never answers: the proxy must not wait forever.
  silentServer = createServer(() => undefined);
  await new Promise<void>((resolve) => silentServer.listen(0, '127.0.0.1', resolve));
  silentPort = (silentServer.address() as { port: number }).port;
  stallingTlsServer = createServer((socket) => {
    stallingTlsSockets.push(socket);
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      if (text.includes('<stream:stream')) {
        socket.write(
          "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='stall' from='stalltls.localhost' version='1.0'>" +
            `<stream:features><starttls xmlns='${NS.tls}'><required/></starttls></stream:features>`,
        );
      }
      if (text.includes('<starttls')) socket.write(`<proceed xmlns='${NS.tls}'/>`);
    });
  });
  await new Promise<void>((resolve) => stallingTlsServer.listen(0, '127.0.0.1', resolve));
  const stallingTlsPort = (stallingTlsServer.address() as { port: number }).port;
  const closedPort = await unusedPort();
  fixture = await startProxyFixture({
    prosody,
    domains: {
      'down.localhost': { upstream: { host: '127.0.0.1', port: closedPort, connectTimeoutSeconds: 1 } },
      'silent.localhost': { upstream: { host: '127.0.0.1', port: silentPort, connectTimeoutSeconds: 0.5 } },
      'stalltls.localhost': { upstream: { host: '127.0.0.1', port: stallingTlsPort, security: 'starttls', connectTimeoutSeconds: 0.5 } },
    },
  });
}, 30_000);

afterAll(async () => {
  await fixture?.stop();
  silentServer?.close();
  stallingTlsServer?.close();
  await prosody?.stop();
});

describe.each(TRANSPORTS)('relay over %s', (transport) => {
  it('offers SASL from the legacy server after TLS, without starttls or sm before authentication', async () => {
    const client = await fixture.connect(transport);
    const features = client.features!;
    const mechanisms = features.getChild('mechanisms', NS.sasl)?.getChildren('mechanism').map((m) => m.getText());
    expect(mechanisms).toEqual(expect.arrayContaining(['PLAIN', 'SCRAM-SHA-1']));
    expect(features.getChild('starttls', NS.tls)).toBeUndefined();
    expect(features.getChild('sm', NS.sm3)).toBeUndefined();
    await client.close();
  });

  it.each(['PLAIN', 'SCRAM-SHA-1'] as const)('logs in with %s, binds, fetches the roster and closes cleanly', async (mechanism) => {
    const client = await fixture.connect(transport);
    const postAuth = mechanism === 'PLAIN' ? await client.authenticatePlain('alice', USERS.alice.password) : await client.authenticateScramSha1('alice', USERS.alice.password);
    expect(postAuth.getChild('bind', NS.bind)).toBeDefined();
    expect(postAuth.getChild('sm', NS.sm3)).toBeDefined();
    expect(postAuth.getChild('sm', NS.sm2)).toBeDefined();
    const jid = await client.bind(`${transport}-${mechanism}`);
    expect(jid).toBe(`alice@${fixture.domain}/${transport}-${mechanism}`);
    client.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
    const roster = await client.expect((el) => el.is('iq') && el.attrs.id === 'roster1', 'the roster result');
    expect(roster.attrs.type).toBe('result');
    await client.close();
    expect(client.streamClosedByPeer).toBe(true);
  });

  it('relays messages and presence between two accounts byte for byte', async () => {
    const alice = await fixture.login(transport, USERS.alice, { resource: 'chat' });
    const bob = await fixture.login(transport, USERS.bob, { resource: 'chat' });
    alice.client.presence();
    await alice.client.expect((el) => el.is('presence') && el.attrs.from === alice.jid, 'the echo of alice\'s own presence');
    const body = 'caf\u00e9 \u{1F600} <&> \u20ac';
    alice.client.sendMessage(bob.jid, body, 'm1');
    const message = await bob.client.expectMessage((m) => m.attrs.id === 'm1');
    expect(message.getChildText('body')).toBe(body);
    expect(message.attrs.from).toBe(alice.jid);
    bob.client.presence({ to: alice.jid });
    const presence = await alice.client.expect((el) => el.is('presence') && el.attrs.from === bob.jid, "bob's directed presence");
    expect(presence.attrs.type).toBeUndefined();
    await alice.client.close();
    await bob.client.close();
  });

  it('relays the legacy server\'s stream error (resource conflict) to the replaced client', async () => {
    const first = await fixture.login(transport, USERS.carol, { resource: 'same' });
    await fixture.login(transport, USERS.carol, { resource: 'same' });
    await first.client.expectStreamError('conflict');
    await first.client.expectClosed();
  });
});

describe('bad input gets a clear answer and leaves other sessions alone', () => {
  async function loggedIn(): Promise<RawClient> {
    return (await fixture.login('directtls', USERS.alice)).client;
  }

  it.each([
    ['a mismatched end tag', "<message to='bob@localhost'><body>x</message>", 'not-well-formed'],
    ['an unquoted attribute', '<message to=bob/>', 'not-well-formed'],
    ['a comment', '<!-- hello -->', 'restricted-xml'],
    ['a processing instruction', "<?php echo 'x' ?>", 'restricted-xml'],
    ['a DOCTYPE', '<!DOCTYPE message>', 'restricted-xml'],
    ['an undeclared entity', '<message><body>&xxe;</body></message>', 'restricted-xml'],
    ['invalid UTF-8', Buffer.from([0x3c, 0x6d, 0x3e, 0xc0, 0x80, 0x3c, 0x2f, 0x6d, 0x3e]), 'unsupported-encoding'],
  ] as const)('%s → %s, while another session keeps chatting', async (_label, input, condition) => {
    const bystander = await fixture.login('starttls', USERS.bob, { resource: 'bystander' });
    const client = await loggedIn();
    client.sendRaw(input);
    await client.expectStreamError(condition);
    await client.expectClosed();
    bystander.client.sendMessage(bystander.jid, 'still here', 'ping-self');
    await bystander.client.expectMessage((m) => m.attrs.id === 'ping-self');
    await bystander.client.close();
  });

  it('refuses a stanza over the limit before buffering it whole (policy-violation, stanza-too-big)', async () => {
    const client = await loggedIn();
    // Only the first 300 KiB of an endless body are sent: the error must come without the rest.
    client.sendRaw(`<message to='bob@${fixture.domain}'><body>${'x'.repeat(300 * 1024)}`);
    const error = await client.expectStreamError('policy-violation');
    expect(error.getChild('stanza-too-big', 'urn:xmpp:errors')).toBeDefined();
    await client.expectClosed();
  });

  it('applies the smaller limit before authentication', async () => {
    const client = await fixture.connect('directtls');
    client.sendRaw(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${'A'.repeat(20 * 1024)}</auth>`);
    await client.expectStreamError('policy-violation');
  });

  it('answers an unknown domain with host-unknown before TLS (STARTTLS)', async () => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: 'nope.example' });
    client.sendRaw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='nope.example' version='1.0'>");
    await client.expectStreamError('host-unknown');
    await client.expectClosed();
  });

  it('answers an unknown domain with host-unknown after direct TLS', async () => {
    const client = await RawClient.connect({ host: '127.0.0.1', port: fixture.ports.directtls, transport: 'directtls', domain: 'nope.example', openStream: false });
    client.sendRaw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='nope.example' version='1.0'>");
    await client.expectStreamError('host-unknown');
  });

  it('requires STARTTLS before anything else (policy-violation)', async () => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: fixture.domain });
    await client.openStream();
    client.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>AGFsaWNlAHg=</auth>`);
    await client.expectStreamError('policy-violation');
  });

  it('refuses a stream without version 1.0 (unsupported-version)', async () => {
    const client = await RawClient.connect({ host: '127.0.0.1', port: fixture.ports.directtls, transport: 'directtls', domain: fixture.domain, openStream: false });
    client.sendRaw(`<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='${fixture.domain}'>`);
    await client.expectStreamError('unsupported-version');
  });

  it('answers remote-connection-failed when the legacy server is down', async () => {
    const client = await RawClient.connect({ host: '127.0.0.1', port: fixture.ports.directtls, transport: 'directtls', domain: 'down.localhost', openStream: false });
    client.sendRaw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='down.localhost' version='1.0'>");
    await client.expectStreamError('remote-connection-failed');
  });

  it('answers remote-connection-failed when the legacy server accepts but never answers', async () => {
    const client = await RawClient.connect({ host: '127.0.0.1', port: fixture.ports.directtls, transport: 'directtls', domain: 'silent.localhost', openStream: false });
    client.sendRaw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='silent.localhost' version='1.0'>");
    await client.expectStreamError('remote-connection-failed');
  });

  it('answers remote-connection-failed and drops the hop when the legacy server stalls in the STARTTLS handshake', async () => {
    const client = await RawClient.connect({ host: '127.0.0.1', port: fixture.ports.directtls, transport: 'directtls', domain: 'stalltls.localhost', openStream: false });
    client.sendRaw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='stalltls.localhost' version='1.0'>");
    await client.expectStreamError('remote-connection-failed', 3000);
    await client.expectClosed();
    expect(stallingTlsSockets.length).toBeGreaterThan(0);
    await waitUntil(() => stallingTlsSockets.every((socket) => socket.closed), 'the stalled upstream socket to be closed by the proxy', 3000);
  });

  it('survives TLS garbage, half-open sockets and resets without leaking sessions', async () => {
    // Its own proxy, so that the session count says only what this test did.
    const fixture = await startProxyFixture({ prosody });
    const garbage = tlsConnect({ host: '127.0.0.1', port: fixture.ports.starttls, rejectUnauthorized: false });
    garbage.on('error', () => undefined);
    const raw = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.directtls, domain: fixture.domain });
    raw.sendRaw('GET / HTTP/1.1\r\n\r\n');
    const halfOpen = await fixture.connect('starttls');
    halfOpen.drop('fin');
    const reset = await fixture.login('directtls', USERS.alice, { resource: 'reset' });
    reset.client.drop('reset');
    await raw.expectClosed();
    garbage.destroy();
    const after = await fixture.login('starttls', USERS.bob, { resource: 'after' });
    await after.client.close();
    await waitUntil(() => fixture.proxy.registry.size === 0, 'every session to end', 5000);
    await fixture.stop();
  });
});

describe('shutdown', () => {
  it('ends within shutdownGraceSeconds even with TLS handshakes in progress (direct TLS, wss, STARTTLS)', async () => {
    const own = await startProxyFixture({ prosody });
    const graceMs = 1000;
    // TCP connections that never send a ClientHello: the TLS handshake timeout (30 s) is far off.
    const stalled = await Promise.all(
      (['directtls', 'websocket', 'starttls'] as const).map(
        (transport) =>
          new Promise<Socket>((resolve, reject) => {
            const socket = netConnect({ host: '127.0.0.1', port: own.ports[transport] }, () => resolve(socket));
            socket.on('error', reject);
            // Read (and ignore) what arrives, so that the peer's end is seen.
            socket.resume();
          }),
      ),
    );
    const startedMs = Date.now();
    await own.stop();
    const tookMs = Date.now() - startedMs;
    expect(tookMs, `stop() took ${tookMs} ms with a grace period of ${graceMs} ms`).toBeLessThan(graceMs + 1000);
    await waitUntil(() => stalled.every((socket) => socket.closed), 'the stalled client sockets to be closed', 2000);
  });
});

describe('STARTTLS with stray bytes after <starttls/> (RFC 6120 §5.4.3.3)', () => {
  it.each([
    ['whitespace in the same write as <starttls/>', { trailing: ' ', mode: 'same-write' }],
    ['a whitespace keepalive in a write of its own before the ClientHello', { trailing: ' ', mode: 'own-write' }],
    ['whitespace and the ClientHello in the same write as <starttls/>', { trailing: ' \n', mode: 'with-client-hello' }],
    ['the ClientHello right after <starttls/>, in the same write', { mode: 'with-client-hello' }],
  ] as const)('%s: TLS is established and the client logs in', async (_label, options) => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: fixture.domain });
    await client.openStream();
    await client.starttls(options);
    expect(client.tls?.encrypted).toBe(true);
    await client.openStream();
    await client.authenticatePlain('alice', USERS.alice.password);
    expect(await client.bind('stray-bytes')).toBe(`alice@${fixture.domain}/stray-bytes`);
    await client.close();
    expect(client.streamClosedByPeer).toBe(true);
  });
});

describe('idle unauthenticated connections', () => {
  it('are closed with connection-timeout', async () => {
    const short = await startProxyFixture({ prosody, limits: { authTimeoutSeconds: 0.3 } });
    try {
      const client = await RawClient.connect({ host: '127.0.0.1', port: short.ports.starttls, transport: 'starttls', domain: short.domain });
      await client.expectStreamError('connection-timeout', 3000);
      await client.expectClosed();
    } finally {
      await short.stop();
    }
  });
});

function unusedPort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
