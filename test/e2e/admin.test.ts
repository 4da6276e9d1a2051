import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect as connectTcp } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adminGet, Scrape } from '../support/admin-client.js';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS } from '../support/raw-client.js';
import { recordSmEvents, resumeWith, type SmEventLog } from '../support/sm-steps.js';
import { findFreePort as unusedPort } from '../support/server-process.js';
import { waitUntil } from '../support/wait.js';

// The admin listener in front of each legacy server: what an operator's Prometheus and load
// balancer read, and the session list and kick (README, Metrics and health). Every figure is checked against what the test made
// happen, as a difference between two scrapes parsed by a Prometheus text-format parser.

const TOKEN = 'test-admin-token-0123456789';
const WEBHOOK_SECRET = 'test-webhook-secret';

interface Posted {
  readonly event: string;
  readonly data: { readonly jid: string; readonly reason?: string; readonly smId?: string };
}

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;
  let events: SmEventLog;
  let adminPort: number;
  let dir: string;
  let hook: Server;
  /** What the webhook endpoint received, each with whether its signature checked out. */
  const posted: (Posted & { valid: boolean })[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'smacks-admin-'));
    await writeFile(join(dir, 'admin.token'), `${TOKEN}\n`);
    await writeFile(join(dir, 'webhook.secret'), `${WEBHOOK_SECRET}\n`);
    hook = createServer((request, response) => {
      let body = '';
      request.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      request.on('end', () => {
        const signed = `${String(request.headers['x-smacks-timestamp'])}.${body}`;
        const valid =
          request.headers['x-smacks-signature'] === `sha256=${createHmac('sha256', WEBHOOK_SECRET).update(signed).digest('hex')}`;
        posted.push({ ...(JSON.parse(body) as Posted), valid });
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({
      server,
      admin: { tokenFile: join(dir, 'admin.token'), probeIntervalSeconds: 1 },
      webhook: { url: `http://127.0.0.1:${(hook.address() as { port: number }).port}/smacks`, secretFile: join(dir, 'webhook.secret') },
      proxyOptions: { skipProbe: false },
    });
    events = recordSmEvents(fixture.proxy);
    adminPort = fixture.adminPort!;
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    hook?.closeAllConnections();
    await new Promise<void>((resolve) => (hook === undefined ? resolve() : hook.close(() => resolve())));
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers /healthz, is ready once the legacy server answered its probe, and keeps /metrics behind the token', async () => {
    expect(await adminGet(adminPort, '/healthz')).toMatchObject({ status: 200, body: 'ok\n' });
    await waitUntil(async () => (await adminGet(adminPort, '/readyz')).status === 200, 'the proxy to be ready', 10_000);
    const ready = JSON.parse((await adminGet(adminPort, '/readyz')).body) as { domains: Record<string, { up: boolean }> };
    expect(ready).toMatchObject({ ready: true, listening: true, stopping: false, domains: { [server.domain]: { up: true } } });

    expect((await adminGet(adminPort, '/metrics')).status).toBe(401);
    expect((await adminGet(adminPort, '/metrics', 'not-the-token')).status).toBe(401);
    const metrics = await adminGet(adminPort, '/metrics', TOKEN);
    expect(metrics.status).toBe(200);
    expect(metrics.contentType).toContain('text/plain');
    const scrape = await Scrape.of(adminPort, TOKEN);
    expect(scrape.value('smacks_upstream_up', { domain: server.domain })).toBe(1);
    // prom-client's process and Node.js metrics are there too.
    expect(scrape.family('process_cpu_seconds_total').type).toBe('COUNTER');
    expect(scrape.family('nodejs_eventloop_lag_seconds').type).toBe('GAUGE');
    expect((await adminGet(adminPort, '/nope')).status).toBe(404);
  });

  it('counts stanzas, acks, a hibernation, a resume refused for another account under its reason, and the resume', async () => {
    const before = await Scrape.of(adminPort, TOKEN);
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'metered', sm: true });
    const bob = await fixture.login('directtls', USERS.bob, { resource: 'metering' });
    for (let i = 0; i < 3; i++) bob.client.sendMessage(alice.jid, `hello ${i}`, `metered-${i}`);
    await alice.client.expectMessage((m) => m.attrs.id === 'metered-2');
    await alice.client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/>");
    alice.client.ack();

    const live = await waitForScrape(
      (scrape) => scrape.count('smacks_ack_round_trip_seconds') > before.count('smacks_ack_round_trip_seconds'),
      'the ack round trip to be observed',
    );
    expect(live.value('smacks_sessions', { state: 'active', sm: 'true' })).toBe(1);
    expect(live.value('smacks_sessions', { state: 'active', sm: 'false' })).toBe(1);
    expect(live.value('smacks_sessions_opened_total') - before.value('smacks_sessions_opened_total')).toBe(2);
    const sent = (scrape: Scrape, direction: string): number => scrape.value('smacks_stanzas_total', { direction });
    expect(sent(live, 'from_client') - sent(before, 'from_client')).toBeGreaterThanOrEqual(3);
    expect(sent(live, 'to_client') - sent(before, 'to_client')).toBeGreaterThanOrEqual(3);
    expect(live.value('smacks_stanza_bytes_total', { direction: 'to_client' })).toBeGreaterThan(
      before.value('smacks_stanza_bytes_total', { direction: 'to_client' }),
    );

    alice.client.drop('reset');
    await events.waitFor('hibernationStarted', alice.jid);
    bob.client.sendMessage(alice.jid, 'while away', 'metered-away');
    await events.waitFor('stanzaQueuedWhileHibernating', alice.jid);
    const away = await Scrape.of(adminPort, TOKEN);
    expect(away.value('smacks_sessions', { state: 'hibernating', sm: 'true' })).toBe(1);
    expect(away.value('smacks_unacked_stanzas')).toBeGreaterThanOrEqual(1);
    expect(away.value('smacks_unacked_bytes')).toBeGreaterThan(0);

    // bob holds alice's SM-ID: refused as "another account", and counted under exactly that key.
    const stolen = await resumeWith(fixture, USERS.bob, alice.smId!, 0);
    expect(stolen.answer.name).toBe('failed');
    const resumed = await resumeWith(fixture, USERS.alice, alice.smId!, 3);
    expect(resumed.answer.name).toBe('resumed');
    await resumed.client.expectMessage((m) => m.attrs.id === 'metered-away');

    const after = await waitForScrape(
      (scrape) =>
        scrape.value('smacks_resumptions_total', { from: 'hibernating' }) >
        before.value('smacks_resumptions_total', { from: 'hibernating' }),
      'the resumption to be counted',
    );
    const delta = (name: string, labels: Record<string, string> = {}): number => after.value(name, labels) - before.value(name, labels);
    expect(delta('smacks_sm_failures_total', { key: 'resume-other-account' })).toBe(1);
    for (const key of ['resume-unknown-id', 'resume-ended', 'resume-h-too-high', 'resume-h-below-ack']) {
      expect(delta('smacks_sm_failures_total', { key }), key).toBe(0);
    }
    expect(delta('smacks_resumptions_total', { from: 'hibernating' })).toBe(1);
    expect(delta('smacks_hibernations_total')).toBe(1);
    expect(delta('smacks_hibernations_ended_total', { reason: 'resumed' })).toBe(1);
    expect(after.count('smacks_hibernation_seconds') - before.count('smacks_hibernation_seconds')).toBe(1);
    expect(delta('smacks_stanzas_queued_while_hibernating_total')).toBe(1);
    // The two temporary streams: bob's refused one goes on (he may bind), alice's was taken over by her session.
    expect(delta('smacks_sessions_ended_total', { reason: 'resumed' })).toBe(1);
    // The webhook told a push service the same, signed, and without the SM-ID.
    await waitUntil(
      () => posted.some((p) => p.event === 'hibernationEnded' && p.data.jid === alice.jid),
      'the webhook POST of the resumption',
    );
    const aboutAlice = posted.filter((p) => p.data.jid === alice.jid);
    expect(aboutAlice.map((p) => [p.event, p.data.reason, p.valid, p.data.smId])).toEqual([
      ['hibernationStarted', undefined, true, undefined],
      ['stanzaQueuedWhileHibernating', undefined, true, undefined],
      ['hibernationEnded', 'resumed', true, undefined],
    ]);
    expect((await Scrape.of(adminPort, TOKEN)).value('smacks_webhook_events_total', { outcome: 'delivered' })).toBeGreaterThanOrEqual(3);
    await stolen.client.close();
    await resumed.client.close();
    await bob.client.close();
  });

  it('lists sessions and kicks an account: the attached client gets the stream error, the hibernating queue is bounced, a late resume learns why', async () => {
    const before = await Scrape.of(adminPort, TOKEN);
    const away = await fixture.login('directtls', USERS.carol, { resource: 'away', sm: true });
    const here = await fixture.login('starttls', USERS.carol, { resource: 'here' });
    const bob = await fixture.login('directtls', USERS.bob, { resource: 'kicking' });
    away.client.drop('reset');
    await events.waitFor('hibernationStarted', away.jid);
    const queuedId = bob.client.sendMessage(away.jid, 'you will be kicked', 'kicked-queued');
    await events.waitFor('stanzaQueuedWhileHibernating', away.jid);

    const listed = JSON.parse((await adminGet(adminPort, `/sessions?jid=${encodeURIComponent(`carol@${server.domain}`)}`, TOKEN)).body) as {
      sessions: { jid: string; state: string; transport: string | null; queued: number }[];
    };
    expect(listed.sessions.map(({ jid, state, transport, queued }) => ({ jid, state, transport, queued }))).toEqual([
      { jid: away.jid, state: 'hibernating', transport: null, queued: 1 },
      { jid: here.jid, state: 'active', transport: 'starttls', queued: 0 },
    ]);

    const kick = await fetch(`http://127.0.0.1:${adminPort}/kick?jid=${encodeURIComponent(`carol@${server.domain}`)}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(kick.status).toBe(200);
    expect(((await kick.json()) as { kicked: unknown[] }).kicked).toHaveLength(2);
    await here.client.expectStreamError('policy-violation');
    const bounce = await bob.client.expect((el) => el.is('message') && el.attrs.id === queuedId && el.attrs.type === 'error', 'the bounce');
    expect(bounce.attrs.from).toBe(away.jid);
    const late = await resumeWith(fixture, USERS.carol, away.smId!, 0);
    expect(late.answer.name).toBe('failed');
    expect(late.answer.getChildText('text', 'urn:ietf:params:xml:ns:xmpp-stanzas')).toContain('administrator');

    const after = await waitForScrape(
      (scrape) =>
        scrape.value('smacks_sessions_ended_total', { reason: 'kicked' }) ===
        before.value('smacks_sessions_ended_total', { reason: 'kicked' }) + 2,
      'both kicked sessions to have ended',
    );
    const code = { code: 'PROXY_ERR_KICKED' };
    expect(after.value('smacks_client_errors_total', code) - before.value('smacks_client_errors_total', code)).toBe(2);
    expect(after.value('smacks_stanzas_at_end_total', { outcome: 'bounced' })).toBeGreaterThan(
      before.value('smacks_stanzas_at_end_total', { outcome: 'bounced' }),
    );
    await late.client.close();
    await bob.client.close();
  });

  it('counts an error that ends a STARTTLS connection before TLS once, whoever ends it', async () => {
    const before = await Scrape.of(adminPort, TOKEN);
    const socket = connectTcp(fixture.ports.starttls, '127.0.0.1');
    socket.on('data', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    let waiting: { sid: string } | undefined;
    await waitUntil(async () => {
      const listed = JSON.parse((await adminGet(adminPort, '/sessions', TOKEN)).body) as {
        sessions: { sid: string; transport: string | null; jid: string | null }[];
      };
      waiting = listed.sessions.find((session) => session.transport === 'starttls' && session.jid === null);
      return waiting !== undefined;
    }, 'the connection to be listed');
    const kick = await fetch(`http://127.0.0.1:${adminPort}/kick?sid=${waiting!.sid}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(kick.status).toBe(200);
    await new Promise((resolve) => (socket.destroyed ? resolve(undefined) : socket.once('close', resolve)));
    const code = { code: 'PROXY_ERR_KICKED' };
    const after = await waitForScrape(
      (scrape) =>
        scrape.value('smacks_sessions_ended_total', { reason: 'kicked' }) >
        before.value('smacks_sessions_ended_total', { reason: 'kicked' }),
      'the kick to be counted',
    );
    expect(after.value('smacks_client_errors_total', code) - before.value('smacks_client_errors_total', code)).toBe(1);
  });

  it('counts failed TLS handshakes by code', async () => {
    const before = await Scrape.of(adminPort, TOKEN);
    const socket = connectTcp(fixture.ports.directtls, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.end('this is not a TLS ClientHello\r\n\r\n');
    await new Promise((resolve) => socket.once('close', resolve));
    const code = { code: 'PROXY_ERR_TLS_HANDSHAKE' };
    await waitForScrape(
      (scrape) => scrape.value('smacks_client_errors_total', code) === before.value('smacks_client_errors_total', code) + 1,
      'the failed handshake to be counted',
    );
  });

  it('reports a domain whose legacy server is down: /readyz 503, smacks_upstream_up 0, a failed connect counted', async () => {
    const down = await startProxyFixture({
      server,
      domains: { 'down.example': { upstream: { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 1 } } },
      admin: { probeIntervalSeconds: 1 },
      proxyOptions: { skipProbe: false },
    });
    try {
      const port = down.adminPort!;
      await waitUntil(
        async () => {
          const { domains } = JSON.parse((await adminGet(port, '/readyz')).body) as { domains: Record<string, { up: boolean | null }> };
          return domains['down.example']?.up === false && domains[server.domain]?.up === true;
        },
        'both domains probed',
        10_000,
      );
      const readyz = await adminGet(port, '/readyz');
      expect(readyz.status).toBe(503);
      expect(JSON.parse(readyz.body)).toMatchObject({
        ready: false,
        domains: { 'down.example': { up: false }, [server.domain]: { up: true } },
      });
      const client = await down.connect('directtls', { openStream: false });
      client.sendStreamHeader({ to: 'down.example', version: '1.0' });
      await client.expectStreamError('remote-connection-failed');
      const scrape = await Scrape.of(port, undefined);
      expect(scrape.value('smacks_upstream_up', { domain: 'down.example' })).toBe(0);
      expect(scrape.value('smacks_upstream_connects_total', { domain: 'down.example', outcome: 'failed' })).toBe(1);
      expect(scrape.value('smacks_client_errors_total', { code: 'PROXY_ERR_UPSTREAM_CONNECT' })).toBe(1);
    } finally {
      await down.stop();
    }
  });

  // Last: a drained proxy accepts no one any more.
  it('drains: not ready, no new connections, every session ended at the rate, clients cut off without a stream close, unacked bounced', async () => {
    const before = await Scrape.of(adminPort, TOKEN);
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'drained', sm: true });
    const bob = await fixture.login('starttls', USERS.bob, { resource: 'draining' });
    const unackedId = bob.client.sendMessage(alice.jid, 'received, never acked', 'drained-unacked');
    await alice.client.expectMessage((m) => m.attrs.id === unackedId);

    const drain = await fetch(`http://127.0.0.1:${adminPort}/drain?rate=20`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(drain.status).toBe(202);
    expect(((await drain.json()) as { sessions: number }).sessions).toBeGreaterThanOrEqual(2);
    const readyz = await adminGet(adminPort, '/readyz');
    expect(readyz.status).toBe(503);
    expect(JSON.parse(readyz.body)).toMatchObject({ ready: false, draining: true });

    await alice.client.expectClosed();
    await bob.client.expectClosed();
    for (const { client } of [alice, bob]) {
      expect(client.streamClosedByPeer, 'a stream close').toBe(false);
      expect(client.received.filter((el) => el.is('error', NS.stream)).map(String), 'a stream error').toEqual([]);
    }
    await expect(fixture.connect('directtls')).rejects.toThrow();
    const after = await waitForScrape(
      (scrape) =>
        scrape.value('smacks_sessions_ended_total', { reason: 'drained' }) >=
        before.value('smacks_sessions_ended_total', { reason: 'drained' }) + 2,
      'the drained sessions to have ended',
    );
    expect(after.value('smacks_sessions', { state: 'active', sm: 'true' })).toBe(0);
    expect(after.value('smacks_stanzas_at_end_total', { outcome: 'bounced' })).toBeGreaterThan(
      before.value('smacks_stanzas_at_end_total', { outcome: 'bounced' }),
    );
  });

  async function waitForScrape(done: (scrape: Scrape) => boolean, what: string): Promise<Scrape> {
    let last: Scrape | undefined;
    await waitUntil(
      async () => {
        last = await Scrape.of(adminPort, TOKEN);
        return done(last);
      },
      what,
      5000,
    );
    return last!;
  }
});
