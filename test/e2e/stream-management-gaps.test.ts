import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BEHAVIOUR, startLegacyServer, type LegacyServer, type LegacyUser } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS, type Element } from '../support/raw-client.js';
import {
  bodies,
  collectMessages,
  failedCondition,
  loginDirect,
  recordSmEvents,
  resumeWith,
  subscribe,
  type SmEventLog,
} from '../support/sm-steps.js';
import { startTcpRelay, type TcpRelay } from '../support/tcp-relay.js';
import { waitUntil } from '../support/wait.js';

// XEP-0198 done by the proxy in front of a real legacy Prosody 0.12 (mod_smacks off): takeover with
// a replay, what expiry does to presence and to <failed h/>, the legacy server ending a session
// (attached or hibernating), ack requests with maxUnackedStanzas, and the queue's byte limit.

describeEachLegacyServer((kind) => {
  let server: LegacyServer;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
  });

  /** Fresh accounts, so that roster state (a presence subscription) never leaks into another test. */
  async function registerPair(prefix: string): Promise<[LegacyUser, LegacyUser]> {
    const users: [LegacyUser, LegacyUser] = [
      { username: `${prefix}-user`, password: `${prefix}-user-secret` },
      { username: `${prefix}-contact`, password: `${prefix}-contact-secret` },
    ];
    for (const user of users) await server.addUser(user);
    return users;
  }

  function isUnavailableFrom(jid: string): (el: Element) => boolean {
    return (el) => el.is('presence') && el.attrs.from === jid && el.attrs.type === 'unavailable';
  }

  function isAckRequest(el: Element): boolean {
    return el.is('r', NS.sm3);
  }

  /** The index in `received` of the message with this body (-1 if none). */
  function indexOfBody(received: readonly Element[], body: string): number {
    return received.findIndex((el) => el.is('message') && el.getChildText('body') === body);
  }

  describe('takeover of a session with unacked stanzas', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, streamManagement: { maxHibernationSeconds: 600 } });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it('sends <conflict/> to the open old connection, replays exactly the unacked messages once and in order to the new one, and routes later messages only to it', async () => {
      const events = recordSmEvents(fixture.proxy);
      const old = await fixture.login('directtls', USERS.alice, { resource: 'takeover-replay', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'takeover-replay' });
      const sent = ['t1', 't2', 't3', 't4', 't5'];
      for (const body of sent) bob.client.sendMessage(old.jid, body, `id-${body}`);
      expect(bodies(await collectMessages(old.client, sent.length, 'the messages on the old connection'))).toEqual(sent);
      // The old connection never acks; it is still open when the new one resumes.
      expect(old.client.isClosed).toBe(false);

      const { client, answer } = await resumeWith(fixture, USERS.alice, old.smId!, 0);
      expect(answer.name).toBe('resumed');
      expect(answer.attrs.previd).toBe(old.smId);
      await old.client.expectStreamError('conflict');
      await old.client.expectClosed();
      // No hibernation started, so none ends: the events stay paired for whoever counts them.
      expect(events.of('hibernationEnded').filter((event) => event.jid === old.jid)).toEqual([]);

      const replayed = await collectMessages(client, sent.length, 'the replay of the unacked messages');
      expect(bodies(replayed)).toEqual(sent);
      expect(replayed.map((m) => m.attrs.id)).toEqual(sent.map((body) => `id-${body}`));
      for (const message of replayed) expect(message.getChild('delay', NS.delay)).toBeDefined();
      // <resumed/> comes first (XEP-0198 §5), then the replay.
      const resumedAt = client.received.findIndex((el) => el.is('resumed', NS.sm3));
      expect(resumedAt).toBeGreaterThanOrEqual(0);
      for (const body of sent) expect(indexOfBody(client.received, body)).toBeGreaterThan(resumedAt);
      await client.expectNone((el) => el.is('message'), 'a message replayed twice', 300);

      client.ack();
      bob.client.sendMessage(old.jid, 'after takeover', 'id-after');
      const later = await client.expectMessage((m) => m.getChildText('body') === 'after takeover');
      expect(later.getChild('delay', NS.delay)).toBeUndefined();
      await client.expectNone((el) => el.is('message'), 'a replayed message after the ack', 300);
      // The old connection got the five messages once each, then the conflict, and nothing more.
      expect(bodies(old.client.received.filter((el) => el.is('message')))).toEqual(sent);
      // The proxy trimmed its queue to the ack: a cut now would replay only what came after it.
      client.drop();
      const { client: third, answer: again } = await resumeWith(fixture, USERS.alice, old.smId!, sent.length);
      expect(again.name).toBe('resumed');
      expect(bodies(await collectMessages(third, 1, 'the one message after the ack'))).toEqual(['after takeover']);
      await third.expectNone((el) => el.is('message'), 'an acked message replayed', 300);
      third.ack();
      await third.close();
      await bob.client.close();
    });
  });

  describe('expiry', () => {
    const hibernationSeconds = 3;
    let fixture: ProxyFixture;
    let events: SmEventLog;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, streamManagement: { hibernationSeconds, maxHibernationSeconds: hibernationSeconds } });
      events = recordSmEvents(fixture.proxy);
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it("closes the upstream stream, so the user's contacts see it go unavailable then and not before", async () => {
      const [user, contact] = await registerPair('expiry-presence');
      const alice = await fixture.login('directtls', user, { resource: 'expiring', sm: true });
      const watcher = await fixture.login('directtls', contact, { resource: 'watching' });
      // Prosody delivers subscription traffic to available resources only.
      alice.client.presence();
      watcher.client.presence();
      await subscribe(watcher, alice);

      alice.client.drop();
      await events.waitFor('hibernationStarted', alice.jid);
      // Hibernating: the legacy server keeps the user online. Watched for all but the last second.
      const watchMs = (hibernationSeconds - 1) * 1000;
      await watcher.client.expectNone(isUnavailableFrom(alice.jid), "the user's unavailable presence during hibernation", watchMs);
      expect(events.of('hibernationEnded').filter((e) => e.jid === alice.jid)).toEqual([]);

      const unavailable = await watcher.client.expect(isUnavailableFrom(alice.jid), "the user's unavailable presence after expiry", 5000);
      expect(unavailable.attrs.from).toBe(alice.jid);
      // Caused by the expiry: the proxy emits hibernationEnded before it closes the upstream stream.
      expect(
        events
          .of('hibernationEnded')
          .filter((e) => e.jid === alice.jid)
          .map((e) => e.reason),
      ).toEqual(['expired']);
      expect([...fixture.proxy.registry.sessions()].some((s) => s.bareJid === alice.jid.split('/')[0])).toBe(false);
      await watcher.client.close();
    });

    it("answers a late <resume/> with <failed h/> carrying the count of the client's stanzas the proxy handled", async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'expiring-h', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'expiring-h' });
      const k = 3;
      for (let i = 1; i <= k; i++) alice.client.sendMessage(bob.jid, `counted ${i}`);
      await collectMessages(bob.client, k, "alice's messages at bob");
      expect(await alice.client.ackRequest()).toBe(k);

      alice.client.drop();
      await events.waitFor('hibernationEnded', alice.jid, (e) => e.reason === 'expired', (hibernationSeconds + 3) * 1000);
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      expect(answer.name).toBe('failed');
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.attrs.h).toBe(String(k));
      expect(answer.getChildText('text')).toMatch(/expired/);
      // XEP-0198 §5: after <failed/> the client may bind on the same stream.
      await client.bind('after-expiry');
      await client.close();
      await bob.client.close();
    }, 15_000);
  });

  describe('the legacy server ends the session', () => {
    let fixture: ProxyFixture;
    let relay: TcpRelay;
    let events: SmEventLog;

    beforeAll(async () => {
      relay = await startTcpRelay(server.host, server.c2sPort);
      fixture = await startProxyFixture({
        server,
        streamManagement: { maxHibernationSeconds: 600 },
        // Upstream through a relay whose connections the test can cut.
        domains: { [server.domain]: { upstream: { host: '127.0.0.1', port: relay.port, connectTimeoutSeconds: 2 } } },
      });
      events = recordSmEvents(fixture.proxy);
    });

    afterAll(async () => {
      await fixture?.stop();
      await relay?.stop();
    });

    /** The client sends `count` stanzas (XEP-0199 pings of its server) and checks that the proxy counted them. */
    async function sendCounted(victim: LoggedIn, count: number): Promise<void> {
      for (let i = 1; i <= count; i++) {
        const id = `counted-${i}`;
        victim.client.send(`<iq type='get' id='${id}' to='${fixture.domain}'><ping xmlns='urn:xmpp:ping'/></iq>`);
        await victim.client.expect((el) => el.is('iq') && el.attrs.id === id, `the answer to ping ${id}`);
      }
      expect(await victim.client.ackRequest()).toBe(count);
    }

    /**
     * A late resume of `victim`'s session fails at once (no waiting for a hibernation of 600 s)
     * with item-not-found, a text saying the legacy server ended it, and the h the proxy remembers.
     */
    async function expectResumeRefused(victim: LoggedIn, h: number): Promise<void> {
      const { client, answer } = await resumeWith(fixture, USERS.alice, victim.smId!, victim.client.stanzasReceived);
      expect(answer.name).toBe('failed');
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.getChildText('text')).toMatch(/legacy server/);
      expect(answer.attrs.h).toBe(String(h));
      await client.bind('after-refusal');
      await client.close();
    }

    it("relays the legacy server's stream error (its resource conflict) to the client; a later resume fails fast with the reason", async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'kicked-active', sm: true });
      await sendCounted(alice, 2);
      // Another client of alice's, connected to the server directly, binds the same resource: the
      // server resolves the resource conflict by closing the older stream with <conflict/>.
      const usurper = await loginDirect(server, USERS.alice, 'kicked-active');
      const error = await alice.client.expectStreamError('conflict');
      // Relayed as the legacy server wrote it (its own text, or none), not the proxy's own takeover conflict.
      expect(error.getChildText('text', NS.streamErrors) ?? undefined).toBe(BEHAVIOUR[kind].conflictText);
      await alice.client.expectClosed();
      await waitUntil(() => fixture.proxy.registry.findResumable(alice.smId!) === undefined, "alice's session to end");
      await expectResumeRefused(alice, 2);
      await usurper.close();
    });

    it.each(['fin', 'reset'] as const)(
      'outlives a cut upstream connection (%s): the client is cut off without a stream error, resumes, and goes on over a new stream bound to the same resource',
      async (how) => {
        const resource = `cut-upstream-${how}`;
        const alice = await fixture.login('directtls', USERS.alice, { resource, sm: true });
        await sendCounted(alice, 2);
        relay.connectionCarrying(`<resource>${resource}</resource>`).cut(how);
        await alice.client.expectClosed();
        expect(
          alice.client.received.filter((el) => el.is('error', NS.stream)).map(String),
          'no stream error: the client resumes as after a network cut',
        ).toEqual([]);
        await waitUntil(() => fixture.proxy.registry.findResumable(alice.smId!)?.stateName === 'stranded', 'the session to be stranded');
        const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
        expect(answer.name).toBe('resumed');
        expect(answer.attrs.h).toBe('2');
        client.send(`<iq type='get' id='after-${how}' to='${fixture.domain}'><ping xmlns='urn:xmpp:ping'/></iq>`);
        await client.expect((el) => el.is('iq') && el.attrs.id === `after-${how}`, 'the answer to a ping on the new stream');
        await client.close();
      },
    );

    it('strands a hibernating session when its upstream connection is cut; the resume goes on over a new upstream stream bound to the same resource', async () => {
      const resource = 'cut-upstream-hibernating';
      const alice = await fixture.login('directtls', USERS.alice, { resource, sm: true });
      await sendCounted(alice, 2);
      alice.client.drop();
      await events.waitFor('hibernationStarted', alice.jid);
      relay.connectionCarrying(`<resource>${resource}</resource>`).cut();
      await waitUntil(() => fixture.proxy.registry.findResumable(alice.smId!)?.stateName === 'stranded', 'the session to be stranded');
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      expect(answer.name).toBe('resumed');
      expect(answer.attrs.h, 'what the proxy counted of alice before the cut').toBe('2');
      await events.waitFor('hibernationEnded', alice.jid, (e) => e.reason === 'resumed');
      // The new stream is the legacy server's session of that very JID: a round trip through it.
      client.send(`<iq type='get' id='after-cut' to='${fixture.domain}'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await client.expect((el) => el.is('iq') && el.attrs.id === 'after-cut', 'the answer to a ping on the new stream');
      expect(fixture.proxy.registry.findResumable(alice.smId!)?.stateName).toBe('active');
      await client.close();
    });
  });

  describe('ack requests with maxUnackedStanzas 3', () => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ server, streamManagement: { maxUnackedStanzas: 3, maxHibernationSeconds: 600 } });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it('asks only once more than 3 are unacked, re-checks after a partial ack, and never has two <r/> outstanding', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'max-unacked', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'max-unacked' });
      let n = 0;
      /** Bob sends the next numbered message; resolves once alice has it. */
      const deliverNext = async (): Promise<string> => {
        const body = `u${++n}`;
        bob.client.sendMessage(alice.jid, body);
        await alice.client.expectMessage((m) => m.getChildText('body') === body);
        return body;
      };
      const expectNoRequest = (why: string): Promise<void> => alice.client.expectNone(isAckRequest, `<r/> ${why}`, 300);
      const expectRequestAfter = async (body: string, why: string): Promise<void> => {
        await alice.client.expect(isAckRequest, `<r/> ${why}`, 2000);
        const requestAt = alice.client.received.findLastIndex(isAckRequest);
        expect(requestAt).toBeGreaterThan(indexOfBody(alice.client.received, body));
      };
      const requestsSoFar = (): number => alice.client.received.filter(isAckRequest).length;

      // 1-3 unacked: at most maxUnackedStanzas, no request.
      for (let i = 0; i < 3; i++) await deliverNext();
      await expectNoRequest('with 3 unacked');
      // 4 unacked: more than 3, one request.
      await expectRequestAfter(await deliverNext(), 'once 4 are unacked');
      // While it is outstanding, more stanzas bring no second request.
      await deliverNext();
      await deliverNext();
      await expectNoRequest('while one is outstanding (6 unacked)');
      expect(requestsSoFar()).toBe(1);

      // A partial ack that leaves 4 unacked (6 sent, h=2): the proxy re-checks on the ack and asks again.
      alice.client.ack(2);
      await expectRequestAfter('u6', 're-checked on a partial ack that leaves 4 unacked');
      expect(requestsSoFar()).toBe(2);
      await expectNoRequest('twice for the same ack');

      // A partial ack that leaves 2 unacked (6 sent, h=4): no request; then 3 unacked: none; 4: one.
      alice.client.ack(4);
      await expectNoRequest('after an ack that leaves 2 unacked');
      await deliverNext();
      await expectNoRequest('with 3 unacked after the partial ack');
      await expectRequestAfter(await deliverNext(), 'for the stanza that leaves 4 unacked after the partial ack');
      expect(requestsSoFar()).toBe(3);
      await deliverNext();
      await expectNoRequest('while the third is outstanding');

      // A full ack: nothing unacked, nothing asked; the proxy still counts right.
      alice.client.ack();
      expect(alice.client.stanzasReceived).toBe(n);
      await expectNoRequest('after a full ack');
      expect(requestsSoFar()).toBe(3);
      expect(await alice.client.ackRequest()).toBe(0);
      await alice.client.close();
      await bob.client.close();
    });
  });

  describe('unacked queue limited by bytes', () => {
    const maxQueueBytes = 4096;
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({
        server,
        // maxQueueBytes may not be below maxStanzaBytes, which may not be below maxStanzaBytesPreAuth.
        limits: { maxStanzaBytes: maxQueueBytes, maxStanzaBytesPreAuth: maxQueueBytes },
        streamManagement: { maxQueueBytes, maxHibernationSeconds: 600 },
      });
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it('holds back what does not fit until the client acks; a hibernating session that overflows ends and bounces to the sender with the ids', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'byte-flood', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'byte-flood' });
      // Each message is about 1.6 KB as the legacy server delivers it: two fit in 4096 bytes, the third does not.
      const body = (id: string): string => `${id} ${'x'.repeat(1500)}`;
      for (const id of ['big-1', 'big-2', 'big-3']) bob.client.sendMessage(alice.jid, body(id), id);
      await alice.client.expect((el) => el.is('message') && el.attrs.id === 'big-2', 'the two that fit');
      await alice.client.expectNone((el) => el.is('message') && el.attrs.id === 'big-3', 'the third before an ack', 150);
      alice.client.ack();
      await alice.client.expect((el) => el.is('message') && el.attrs.id === 'big-3', 'the third, once alice acked');
      expect(alice.client.received.filter((el) => el.is('message')).map((m) => m.attrs.id)).toEqual(['big-1', 'big-2', 'big-3']);

      // Away, with big-3 unacked: big-4 still fits, big-5 overflows the hibernating session's queue.
      alice.client.drop();
      const ids = ['big-4', 'big-5'];
      for (const id of ids) bob.client.sendMessage(alice.jid, body(id), id);
      for (const id of ['big-3', ...ids]) {
        const bounce = await bob.client.expect(
          (el) => el.is('message') && el.attrs.id === id && el.attrs.type === 'error',
          `the bounce of ${id}`,
        );
        expect(bounce.attrs.from).toBe(alice.jid);
        expect(bounce.getChild('error')?.getChild('recipient-unavailable', NS.stanzas)).toBeDefined();
        expect(bounce.getChildText('body')).toBe(body(id));
      }
      await bob.client.expectNone(
        (el) => el.is('message') && el.attrs.type === 'error' && el.attrs.id !== 'big-3' && !ids.includes(el.attrs.id as string),
        'a bounce of a delivered message',
        300,
      );

      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 2);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.getChildText('text')).toMatch(/unacknowledged/);
      await client.close();
      await bob.client.close();
    });
  });
});
