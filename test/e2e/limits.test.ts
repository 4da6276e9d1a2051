import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS } from '../support/raw-client.js';
import { recordSmEvents, resumeWith } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';

// README, Limits and abuse: connections that never log in, against users who do, in front of each
// real legacy server. Every test client comes from 127.0.0.1: one address.

/** A gauge of the proxy's metrics (README, Metrics and health), read as a scrape would. */
async function gauge(fixture: ProxyFixture, name: string): Promise<number> {
  const metric = fixture.proxy.metrics.registry.getSingleMetric(name);
  if (metric === undefined) throw new Error(`no metric ${name}`);
  return (await metric.get()).values[0]!.value;
}

describeEachLegacyServer((kind) => {
  let server: LegacyServer;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
  });

  describe('connections logging in, in all, and bound sessions', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, limits: { maxUnauthenticated: 3, maxUnauthenticatedPerAddress: 0, maxSessions: 2 } });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it('idle connections make room for a resume, oldest first; a bind beyond maxSessions gets resource-constraint and the stream goes on', async () => {
      const events = recordSmEvents(fixture.proxy);
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'away', sm: true });
      alice.client.drop();
      await events.waitFor('hibernationStarted', alice.jid);
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'here' });

      // Three connections that never log in fill maxUnauthenticated.
      const idle = [];
      for (let i = 0; i < 3; i++) idle.push(await fixture.connect('directtls'));

      // Alice comes back: her connection pushes out the idle one that waited longest.
      const { client: resumed, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 0);
      expect(answer.name).toBe('resumed');
      const evicted = await idle[0]!.expectStreamError('resource-constraint');
      expect(evicted.getChildText('text', NS.streamErrors)).toMatch(/waited longest/);
      expect(idle[1]!.received.some((el) => el.is('error', NS.stream))).toBe(false);

      // Alice and bob are the two bound sessions: carol authenticates, and her bind is refused.
      const carol = await fixture.connect('directtls');
      await carol.authenticatePlain(USERS.carol.username, USERS.carol.password);
      carol.send(`<iq type='set' id='b1'><bind xmlns='${NS.bind}'><resource>late</resource></bind></iq>`);
      const refused = await carol.expect((el) => el.is('iq') && el.attrs.id === 'b1', 'the answer to the bind');
      expect(refused.attrs.type).toBe('error');
      expect(refused.getChild('error')?.getChild('resource-constraint', NS.stanzas)).toBeDefined();
      // Once bob leaves, carol binds on the same stream.
      await bob.client.close();
      await expect.poll(() => fixture.proxy.registry.boundCount, { timeout: 5000 }).toBeLessThan(2);
      expect(await carol.bind('late')).toMatch(new RegExp(`^carol@${fixture.domain}/`));
      await carol.close();
      await resumed.close();
      for (const client of idle.slice(1)) await client.close();
    });
  });

  describe('failed logins from one address', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, limits: { maxFailedLogins: 3, failedLoginBackoffSeconds: 2 } });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    /** One PLAIN attempt on a fresh connection: the SASL answer, `success` or the failure's condition. */
    async function attempt(password: string): Promise<string> {
      const client = await fixture.connect('directtls');
      const message = Buffer.from(`\0${USERS.alice.username}\0${password}`, 'utf8').toString('base64');
      client.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${message}</auth>`);
      const answer = await client.expect((el) => el.getNS() === NS.sasl && (el.is('success') || el.is('failure')), 'the SASL answer');
      await client.close();
      return answer.is('success') ? 'success' : (answer.getChildElements()[0]?.name ?? '?');
    }

    it('after maxFailedLogins wrong passwords, even the right one is refused with temporary-auth-failure until the back-off ends', async () => {
      for (let i = 0; i < 3; i++) expect(await attempt('wrong')).toBe('not-authorized');
      expect(await attempt(USERS.alice.password)).toBe('temporary-auth-failure');
      await new Promise((resolve) => setTimeout(resolve, 2_100));
      expect(await attempt(USERS.alice.password)).toBe('success');
    }, 20_000);
  });

  describe('connections logging in from one address', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, limits: { maxUnauthenticatedPerAddress: 2 } });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it('refuses the third with policy-violation; a connection that binds frees its place', async () => {
      const first = await fixture.connect('directtls');
      const second = await fixture.connect('directtls');
      // The refusal may come before the client has read the stream header (connect fails) or after.
      const third = await fixture.connect('directtls').then(
        async (client) => (await client.expectStreamError('policy-violation')).getChildText('text', NS.streamErrors) ?? '',
        (err: unknown) => (err as Error).message,
      );
      expect(third).toMatch(/maxUnauthenticatedPerAddress/);

      await first.login(USERS.alice.username, USERS.alice.password, { resource: 'bound' });
      const fourth = await fixture.connect('directtls');
      await fourth.authenticatePlain(USERS.bob.username, USERS.bob.password);
      for (const client of [first, second, fourth]) await client.close();
    });
  });

  describe('unacked queue memory shared out per account', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      // Two sessions' queues fill the global budget; one account may hold one session's worth.
      fixture = await startProxyFixture({
        server,
        limits: { maxStanzaBytes: 4096, maxStanzaBytesPreAuth: 4096 },
        streamManagement: { maxQueueBytes: 4096, maxQueueBytesPerAccount: 4096, globalQueueBytes: 8192 },
      });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it("an account whose sessions never ack fills its own share: another user's session goes on", async () => {
      const events = recordSmEvents(fixture.proxy);
      const victim = await fixture.login('directtls', USERS.carol, { resource: 'victim', sm: true });
      const sender = await fixture.login('directtls', USERS.alice, { resource: 'sender' });
      const hoarders = [];
      for (let i = 0; i < 2; i++) hoarders.push(await fixture.login('directtls', USERS.bob, { resource: `hoard${i}`, sm: true }));
      // 40 small messages to each of bob's sessions, never acked: without shares, his two queues
      // would fill the global budget but for less than one small message (under 2 × 200 bytes).
      for (const hoarder of hoarders) for (let n = 0; n < 40; n++) sender.client.sendMessage(hoarder.jid, 'x');
      await sender.client.syncWithServer();
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Larger than what bob could have left over: it fits only because his share stopped him.
      const body = 'y'.repeat(500);
      sender.client.sendMessage(victim.jid, body, 'V1');
      const message = await victim.client.expectMessage((m) => m.attrs.id === 'V1');
      expect(message.getChildText('body')).toBe(body);
      expect(victim.client.streamClosedByPeer).toBe(false);
      expect(await victim.client.ackRequest(), 'the stream answers: carol sent no stanza').toBe(0);
      expect(events.of('hibernationEnded').filter((e) => e.jid === victim.jid)).toEqual([]);
      for (const client of [victim.client, sender.client, ...hoarders.map((h) => h.client)]) client.drop();
    });
  });

  describe('the memory budget of all queues used up by other accounts', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      // Two accounts' shares together are the whole global budget.
      fixture = await startProxyFixture({
        server,
        limits: { maxStanzaBytes: 4096, maxStanzaBytesPreAuth: 4096 },
        streamManagement: { maxQueueBytes: 4096, maxQueueBytesPerAccount: 4096, globalQueueBytes: 8192 },
      });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it("ends no session within its share: a connected and a hibernating one wait for room, and get their stanzas once another account's client acks", async () => {
      const events = recordSmEvents(fixture.proxy);
      const victim = await fixture.login('directtls', USERS.carol, { resource: 'victim', sm: true });
      const away = await fixture.login('directtls', USERS.carol, { resource: 'away', sm: true });
      away.client.drop();
      await events.waitFor('hibernationStarted', away.jid);
      const sender = await fixture.login('directtls', USERS.alice, { resource: 'sender' });
      // Bob's and alice's never-acking sessions each fill their account's share: together, all of
      // the global budget but for less than one small message.
      const hoarders = [
        await fixture.login('directtls', USERS.bob, { resource: 'hoard', sm: true }),
        await fixture.login('directtls', USERS.alice, { resource: 'hoard', sm: true }),
      ];
      for (const hoarder of hoarders) for (let n = 0; n < 40; n++) sender.client.sendMessage(hoarder.jid, 'x');
      await sender.client.syncWithServer();
      await waitUntil(async () => (await gauge(fixture, 'smacks_unacked_bytes')) > 8192 - 200, 'the hoarders to fill the global budget');

      const body = 'y'.repeat(500);
      sender.client.sendMessage(victim.jid, body, 'V1');
      sender.client.sendMessage(away.jid, body, 'V2');
      await victim.client.expectNone((el) => el.is('message'), 'a message while no room is left', 500);
      expect(victim.client.streamClosedByPeer).toBe(false);
      expect(await gauge(fixture, 'smacks_sessions_waiting_for_room')).toBe(2);

      // Bob's client acks what it got: room for both, in the order they asked.
      hoarders[0]!.client.ack();
      const message = await victim.client.expectMessage((m) => m.attrs.id === 'V1');
      expect(message.getChildText('body')).toBe(body);
      expect(await victim.client.ackRequest(), 'the stream answers: carol sent no stanza').toBe(0);
      const { client: back, answer } = await resumeWith(fixture, USERS.carol, away.smId!, 0);
      expect(answer.name).toBe('resumed');
      expect((await back.expectMessage((m) => m.attrs.id === 'V2')).getChildText('body')).toBe(body);
      expect(
        events
          .of('hibernationEnded')
          .filter((e) => e.jid === away.jid)
          .map((e) => e.reason),
      ).toEqual(['resumed']);
      for (const client of [victim.client, back, sender.client, ...hoarders.map((h) => h.client)]) client.drop();
    });
  });
});
