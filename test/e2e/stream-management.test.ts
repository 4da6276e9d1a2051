import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SmEventMap } from '../../src/session/events.js';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS } from '../support/raw-client.js';
import { bodies, collectMessages, failedCondition, loginDirect, resumeWith, subscribe } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';

// XEP-0198 done by the proxy in front of a real legacy Prosody 0.12 (mod_smacks off).

const STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server, streamManagement: { maxHibernationSeconds: 600 } });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await server?.stop();
  });

  describe('enabling stream management', () => {
    it('refuses <enable/> before bind with unexpected-request, and the stream stays usable', async () => {
      const client = await fixture.connect('directtls');
      await client.authenticatePlain('alice', USERS.alice.password);
      const failed = await client.enableSm({ resume: true });
      expect(failed.name).toBe('failed');
      expect(failedCondition(failed)).toBe('unexpected-request');
      await client.bind('late-enable');
      const enabled = await client.enableSm({ resume: true });
      expect(enabled.name).toBe('enabled');
      await client.close();
    });

    it('answers <enabled id resume max/> with an unguessable id, and refuses a second <enable/>', async () => {
      const { client, smId } = await fixture.login('starttls', USERS.alice, { resource: 'enable', sm: true });
      expect(smId).toMatch(/^[A-Za-z0-9_-]{22,}$/);
      const second = await client.enableSm({ resume: true });
      expect(second.name).toBe('failed');
      expect(failedCondition(second)).toBe('unexpected-request');
      client.sendMessage(`bob@${fixture.domain}`, 'still usable');
      expect(await client.ackRequest()).toBe(1);
      await client.close();
    });

    it.each([
      ["resume='1'", { resume: '1' }, { resume: 'true', max: '300' }],
      ['max below the cap is honoured', { resume: 'true', max: '100' }, { resume: 'true', max: '100' }],
      ['max above the cap is capped', { resume: 'true', max: '100000' }, { resume: 'true', max: '600' }],
      ['no resume: no id', {}, { resume: undefined, max: undefined }],
    ])('%s', async (_label, attrs, expected) => {
      const client = await fixture.connect('directtls');
      await client.login('bob', USERS.bob.password);
      client.send(
        `<enable xmlns='${NS.sm3}'${Object.entries(attrs)
          .map(([k, v]) => ` ${k}='${v}'`)
          .join('')}/>`,
      );
      const enabled = await client.expect((el) => el.is('enabled', NS.sm3), '<enabled/>');
      expect(enabled.attrs.resume).toBe(expected.resume);
      expect(enabled.attrs.max).toBe(expected.max);
      expect(enabled.attrs.id === undefined).toBe(expected.resume === undefined);
      await client.close();
    });

    it('refuses a resume flag that is not an xs:boolean', async () => {
      const client = await fixture.connect('directtls');
      await client.login('bob', USERS.bob.password);
      client.send(`<enable xmlns='${NS.sm3}' resume='yes-please'/>`);
      const failed = await client.expect((el) => el.is('failed', NS.sm3), '<failed/>');
      expect(failedCondition(failed)).toBe('bad-request');
      await client.close();
    });

    it('answers in urn:xmpp:sm:2 when the client uses it', async () => {
      const client = await fixture.connect('directtls');
      await client.login('bob', USERS.bob.password);
      const enabled = await client.enableSm({ resume: true, ns: NS.sm2 });
      expect(enabled.is('enabled', NS.sm2)).toBe(true);
      client.send("<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>");
      expect(await client.ackRequest()).toBe(1);
      await client.close();
    });
  });

  describe('acks', () => {
    it('answers <r/> at once with the number of stanzas handled; only iq, message and presence count', async () => {
      const { client } = await fixture.login('directtls', USERS.alice, { resource: 'count', sm: true });
      client.send(`<message to='bob@${fixture.domain}'><body>1</body></message>`);
      client.send(`<presence/>`);
      client.send(`<iq type='get' id='q'><ping xmlns='urn:xmpp:ping'/></iq>`);
      client.send(`<a xmlns='${NS.sm3}' h='0'/>`);
      expect(await client.ackRequest()).toBe(3);
      await client.close();
    });

    it('asks the client for acks in batches, one request outstanding at a time', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'batch', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'batch' });
      for (let i = 1; i <= 5; i++) bob.client.sendMessage(alice.jid, `n${i}`);
      await collectMessages(alice.client, 5, 'five messages');
      await alice.client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/>");
      await alice.client.expectNone((el) => el.is('r', NS.sm3), 'a second <r/> while one is outstanding', 300);
      alice.client.ack();
      bob.client.sendMessage(alice.jid, 'n6');
      await alice.client.expectMessage((m) => m.getChildText('body') === 'n6');
      await alice.client.expect((el) => el.is('r', NS.sm3), 'a new <r/> after the ack');
      await alice.client.close();
      await bob.client.close();
    });

    it('does not loop with a client that answers <a/> with <r/>', async () => {
      const { client } = await fixture.login('directtls', USERS.carol, { resource: 'loop', sm: true });
      client.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
      await client.expect((el) => el.is('iq') && el.attrs.id === 'r1', 'the roster');
      await client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/>");
      client.ack();
      expect(await client.ackRequest()).toBe(1);
      await client.expectNone((el) => el.is('r', NS.sm3), 'another <r/> for nothing new', 300);
      await client.close();
    });

    it('ends the stream with handled-count-too-high when the client acks more than was sent', async () => {
      const { client } = await fixture.login('directtls', USERS.carol, { resource: 'toohigh', sm: true });
      client.send(`<a xmlns='${NS.sm3}' h='7'/>`);
      const error = await client.expectStreamError('undefined-condition');
      const detail = error.getChild('handled-count-too-high', NS.sm3);
      expect(detail?.attrs).toMatchObject({ h: '7', 'send-count': '0' });
    });

    it('tolerates an ack lower than the previous one, and takes it as the answer to the outstanding <r/>', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'backwards', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'backwards' });
      bob.client.sendMessage(alice.jid, 'a');
      bob.client.sendMessage(alice.jid, 'b');
      await collectMessages(alice.client, 2, 'two messages');
      await alice.client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/> for a and b");
      alice.client.ack(2);
      bob.client.sendMessage(alice.jid, 'c');
      await alice.client.expectMessage((m) => m.getChildText('body') === 'c');
      await alice.client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/> for c");
      alice.client.ack(1);
      expect(await alice.client.ackRequest()).toBe(0);
      // The backwards <a/> answered the request for c: the next stanza is asked about at once.
      bob.client.sendMessage(alice.jid, 'd');
      await alice.client.expectMessage((m) => m.getChildText('body') === 'd');
      await alice.client.expect((el) => el.is('r', NS.sm3), 'a new <r/> for d', 2000);
      await alice.client.close();
      await bob.client.close();
    });

    it('ends the stream with invalid-xml on an <a/> without a valid h', async () => {
      const { client } = await fixture.login('directtls', USERS.carol, { resource: 'noh', sm: true });
      client.send(`<a xmlns='${NS.sm3}' h='lots'/>`);
      await client.expectStreamError('invalid-xml');
    });

    it('sends a final <a/> before closing a stream cleanly', async () => {
      const { client } = await fixture.login('directtls', USERS.carol, { resource: 'final', sm: true });
      client.send(`<presence/>`);
      await client.close();
      const acks = client.received.filter((el) => el.is('a', NS.sm3));
      expect(acks.at(-1)?.attrs.h).toBe('1');
    });
  });

  describe('hibernation and resumption', () => {
    it('replays all 20 messages sent during a TCP cut exactly once, in order, with their original time', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'cut', sm: true });
      const bob = await fixture.login('starttls', USERS.bob, { resource: 'cut' });
      alice.client.drop();
      await waitUntil(() => [...fixture.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
      const sentAt = Date.now();
      for (let i = 1; i <= 20; i++) bob.client.sendMessage(alice.jid, `numbered ${i}`, `n${i}`);
      // Queued at the proxy, all 20: a round trip of bob's to the server is not enough with jabberd2,
      // whose sm process may answer bob before its c2s process has routed every message to alice.
      await waitUntil(
        () => [...fixture.proxy.registry.sessions()].some((s) => s.summary().jid === alice.jid && s.summary().queued === 20),
        'the 20 messages to be queued for alice',
      );
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      expect(answer.name).toBe('resumed');
      expect(answer.attrs.previd).toBe(alice.smId);
      expect(answer.attrs.h).toBe('0');
      const replayed = await collectMessages(client, 20, 'the replay');
      expect(bodies(replayed)).toEqual(Array.from({ length: 20 }, (_, i) => `numbered ${i + 1}`));
      for (const message of replayed) {
        const stamp = Date.parse(message.getChild('delay', NS.delay)?.attrs.stamp as string);
        expect(Math.abs(stamp - sentAt)).toBeLessThan(5000);
      }
      await client.expectNone((el) => el.is('message'), 'a duplicate', 300);
      // Normal flow resumes on the new connection.
      bob.client.sendMessage(alice.jid, 'after resume');
      await client.expectMessage((m) => m.getChildText('body') === 'after resume');
      client.ack();
      await client.close();
      await bob.client.close();
    });

    it('after a partial ack, replays exactly the rest', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'partial', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'partial' });
      for (let i = 1; i <= 10; i++) bob.client.sendMessage(alice.jid, `p${i}`);
      await collectMessages(alice.client, 10, 'ten messages');
      alice.client.ack(4);
      expect(await alice.client.ackRequest()).toBe(0);
      alice.client.drop();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 4);
      expect(answer.name).toBe('resumed');
      expect(bodies(await collectMessages(client, 6, 'the rest'))).toEqual(['p5', 'p6', 'p7', 'p8', 'p9', 'p10']);
      await client.expectNone((el) => el.is('message'), 'more', 300);
      await client.close();
      await bob.client.close();
    });

    it.each([
      ['below the last ack', 2, /h=2 is below the last acknowledged count 4/, undefined],
      ['above what was sent', 11, /h=11 acks more than the 10 stanzas sent/, { h: '11', 'send-count': '10' }],
    ])('refuses a resume whose h is %s with undefined-condition, and keeps the session', async (_label, h, text, tooHigh) => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: `bad-h-${h}`, sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: `bad-h-${h}` });
      for (let i = 1; i <= 10; i++) bob.client.sendMessage(alice.jid, `p${i}`);
      await collectMessages(alice.client, 10, 'ten messages');
      alice.client.ack(4);
      expect(await alice.client.ackRequest()).toBe(0);
      alice.client.drop();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, h);
      expect(answer.name).toBe('failed');
      expect(failedCondition(answer)).toBe('undefined-condition');
      expect(answer.getChildText('text')).toMatch(text);
      expect(answer.attrs.h).toBe('0');
      expect(answer.getChild('handled-count-too-high', NS.sm3)?.attrs).toEqual(
        tooHigh === undefined ? undefined : { xmlns: NS.sm3, ...tooHigh },
      );
      await client.close();
      // The hibernated session is untouched: the right h resumes it and replays exactly the rest.
      const { client: again, answer: resumed } = await resumeWith(fixture, USERS.alice, alice.smId!, 4);
      expect(resumed.name).toBe('resumed');
      expect(bodies(await collectMessages(again, 6, 'the rest'))).toEqual(['p5', 'p6', 'p7', 'p8', 'p9', 'p10']);
      await again.expectNone((el) => el.is('message'), 'more', 300);
      await again.close();
      await bob.client.close();
    });

    it('answers <resumed/> in the namespace of <resume/>, not of <enable/>', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'resume-ns', sm: true });
      alice.client.drop();
      const client = await fixture.connect('directtls');
      await client.authenticatePlain('alice', USERS.alice.password);
      const answer = await client.resume(alice.smId!, 0, NS.sm2);
      expect(answer.is('resumed', NS.sm2)).toBe(true);
      await client.close();
    });

    it("counts the client's stanzas across the resume (the h in <resumed/>)", async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'hcount', sm: true });
      alice.client.send('<presence/>');
      alice.client.send(`<message to='bob@${fixture.domain}'><body>x</body></message>`);
      expect(await alice.client.ackRequest()).toBe(2);
      alice.client.drop();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      expect(answer.attrs.h).toBe('2');
      client.send(`<message to='bob@${fixture.domain}'><body>y</body></message>`);
      expect(await client.ackRequest()).toBe(3);
      await client.close();
    });

    it('keeps contacts from seeing the hibernating user go offline', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'presence', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'presence' });
      // Prosody delivers subscription traffic to available resources only.
      alice.client.presence();
      bob.client.presence();
      await subscribe(bob, alice);
      alice.client.drop();
      await bob.client.expectNone(
        (el) => el.is('presence') && el.attrs.from === alice.jid && el.attrs.type === 'unavailable',
        "alice's unavailable presence",
        1000,
      );
      const { client } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await client.close();
      await bob.client.expect(
        (el) => el.is('presence') && el.attrs.from === alice.jid && el.attrs.type === 'unavailable',
        'unavailable presence after the clean close',
      );
      await bob.client.close();
    });

    it('answers XEP-0199 pings addressed to the absent client', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'pinged', sm: true });
      const carol = await fixture.login('directtls', USERS.carol, { resource: 'pinger' });
      alice.client.drop();
      await waitUntil(() => [...fixture.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
      carol.client.send(`<iq type='get' id='png' to='${alice.jid}'><ping xmlns='urn:xmpp:ping'/></iq>`);
      const pong = await carol.client.expect((el) => el.is('iq') && el.attrs.id === 'png', 'the pong');
      expect(pong.attrs.type).toBe('result');
      const { client } = await resumeWith(fixture, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await client.expectNone((el) => el.is('iq') && el.attrs.id === 'png', 'the ping replayed', 300);
      await client.close();
      await carol.client.close();
    });

    it('lets a client resume with <resume/> pipelined right after the stream restart (Monal)', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'monal', sm: true });
      alice.client.drop();
      const client = await fixture.connect('directtls');
      const plain = Buffer.from(`\0alice\0${USERS.alice.password}`).toString('base64');
      client.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${plain}</auth>`);
      await client.expect((el) => el.is('success', NS.sasl), '<success/>');
      const header = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='${fixture.domain}' version='1.0'>`;
      client.restartParser();
      client.sendRaw(`${header}<resume xmlns='${NS.sm3}' previd='${alice.smId!}' h='0'/><r xmlns='${NS.sm3}'/>`);
      const resumed = await client.expect((el) => el.is('resumed', NS.sm3), '<resumed/>');
      expect(resumed.attrs.previd).toBe(alice.smId);
      await client.expect((el) => el.is('a', NS.sm3), 'the answer to the pipelined <r/>');
      await client.close();
    });

    it('resumes over another transport than the first connection', async () => {
      const alice = await fixture.login('starttls', USERS.alice, { resource: 'cross', sm: true });
      alice.client.drop();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 0, 'directtls');
      expect(answer.name).toBe('resumed');
      await client.close();
    });

    it('takes over a session whose old connection is still open: the old one gets <conflict/>', async () => {
      const old = await fixture.login('directtls', USERS.alice, { resource: 'takeover', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'takeover' });
      const { client, answer } = await resumeWith(fixture, USERS.alice, old.smId!, 0);
      expect(answer.name).toBe('resumed');
      await old.client.expectStreamError('conflict');
      await old.client.expectClosed();
      bob.client.sendMessage(old.jid, 'to the newest');
      await client.expectMessage((m) => m.getChildText('body') === 'to the newest');
      await client.close();
      await bob.client.close();
    });

    it('ignores whatever the old connection still sends after <conflict/>', async () => {
      const old = await fixture.login('directtls', USERS.alice, { resource: 'late-old', sm: true });
      const { client, answer } = await resumeWith(fixture, USERS.alice, old.smId!, 0);
      expect(answer.name).toBe('resumed');
      await old.client.expectStreamError('conflict');
      // A stanza in flight and the stream close RFC 6120 §4.4 asks for, on the old connection.
      old.client.sendRaw(`<message to='bob@${fixture.domain}'><body>late</body></message></stream:stream>`);
      await old.client.expectClosed();
      expect(await client.ackRequest()).toBe(0);
      await client.expectNone((el) => el.is('error', NS.stream) || el.is('a', NS.sm3), 'the old connection touching the new one', 300);
      client.send(`<message to='bob@${fixture.domain}'><body>new</body></message>`);
      expect(await client.ackRequest()).toBe(1);
      await client.close();
    });

    it('accepts <enable/> pipelined right behind the bind request', async () => {
      const client = await fixture.connect('directtls');
      await client.authenticatePlain('bob', USERS.bob.password);
      client.send(
        `<iq type='set' id='pb'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>pipelined</resource></bind></iq><enable xmlns='${NS.sm3}' resume='true'/>`,
      );
      const bound = await client.expect((el) => el.is('iq') && el.attrs.id === 'pb', 'the bind result');
      expect(bound.attrs.type).toBe('result');
      await client.expect((el) => el.is('enabled', NS.sm3), '<enabled/>');
      await client.close();
    });

    it('closes cleanly when the client ends its stream before binding', async () => {
      const client = await fixture.connect('directtls');
      await client.authenticatePlain('bob', USERS.bob.password);
      await client.close();
      expect(client.streamClosedByPeer).toBe(true);
      expect(client.received.some((el) => el.is('error', NS.stream))).toBe(false);
    });

    it('refuses another account with item-not-found, lets it bind, and keeps the session for its owner', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'victim', sm: true });
      alice.client.drop();
      const { client: mallory, answer } = await resumeWith(fixture, USERS.carol, alice.smId!, 0);
      expect(answer.name).toBe('failed');
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.getChildText('text')).toMatch(/another account/);
      const retry = await mallory.resume(alice.smId!, 0);
      expect(retry.getChildText('text')).toMatch(/another account/);
      const jid = await mallory.bind('after-failed-resume');
      expect(jid.startsWith(`carol@${fixture.domain}/`)).toBe(true);
      await mallory.close();
      const { client, answer: resumed } = await resumeWith(fixture, USERS.alice, alice.smId!, 0);
      expect(resumed.name).toBe('resumed');
      await client.close();
    });

    it("tells how a session ended, and its h, to its own account only: another gets the unknown id's answer", async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'ended', sm: true });
      alice.client.sendMessage(`bob@${fixture.domain}`, 'one handled stanza', 'E1');
      await alice.client.close();
      const { client: mallory, answer: toOther } = await resumeWith(fixture, USERS.carol, alice.smId!, 0);
      const { client: unknownClient, answer: unknown } = await resumeWith(fixture, USERS.carol, 'no-such-session', 0);
      expect([failedCondition(toOther), toOther.attrs.h, toOther.getChildText('text')]).toEqual([
        failedCondition(unknown),
        undefined,
        unknown.getChildText('text'),
      ]);
      await mallory.close();
      await unknownClient.close();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 0);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.attrs.h).toBe('1');
      expect(answer.getChildText('text')).toMatch(/closed/);
      await client.close();
    });

    it('answers an unknown id with item-not-found, and the client may bind on the same stream', async () => {
      const { client, answer } = await resumeWith(fixture, USERS.bob, 'no-such-session', 0);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.attrs.h).toBeUndefined();
      await client.bind('fresh');
      await client.close();
    });

    it('refuses <resume/> before authentication and after bind', async () => {
      const early = await fixture.connect('directtls');
      early.send(`<resume xmlns='${NS.sm3}' previd='x' h='0'/>`);
      expect(failedCondition(await early.expect((el) => el.is('failed', NS.sm3), '<failed/>'))).toBe('unexpected-request');
      await early.close();
      const { client } = await fixture.login('directtls', USERS.bob, { resource: 'late' });
      const answer = await client.resume('x', 0);
      expect(failedCondition(answer)).toBe('unexpected-request');
      await client.close();
    });

    it('never hibernates after a clean close: a later resume fails and says why', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'clean', sm: true });
      await alice.client.close();
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 0);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.attrs.h).toBe('0');
      expect(answer.getChildText('text')).toMatch(/closed by the client/);
      await client.close();
    });

    it('ends the session when the legacy server drops it during hibernation; a resume then fails fast with the reason', async () => {
      const alice = await fixture.login('directtls', USERS.alice, { resource: 'kicked', sm: true });
      alice.client.drop();
      await waitUntil(() => [...fixture.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
      // Another client of alice's, connected to the server directly, binds the same resource: the
      // server resolves the resource conflict by closing the old (hibernating) stream.
      const usurper = await loginDirect(server, USERS.alice, 'kicked');
      const { client, answer } = await resumeWith(fixture, USERS.alice, alice.smId!, 0);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.getChildText('text')).toMatch(/legacy server/);
      await client.close();
      await usurper.close();
    });
  });

  describe('dead connections, expiry and limits', () => {
    let fast: ProxyFixture;
    /** Every SM event of the `fast` proxy, by name; each carries at least the jid (and a reason at the end). */
    const events: Partial<Record<keyof SmEventMap, { jid: string; reason?: string }[]>> = {};
    function record(name: keyof SmEventMap): void {
      fast.proxy.events.on(name, (event: { jid: string; reason?: string }) => {
        (events[name] ??= []).push(event);
      });
    }

    beforeAll(async () => {
      fast = await startProxyFixture({
        server,
        streamManagement: { hibernationSeconds: 1, maxHibernationSeconds: 1, maxAckDelaySeconds: 0.3, maxQueueStanzas: 5 },
      });
      record('ackDelayed');
      record('hibernationStarted');
      record('hibernationEnded');
      record('stanzaQueuedWhileHibernating');
    });

    afterAll(async () => {
      await fast?.stop();
    });

    it('treats an unanswered <r/> as a dead connection: ackDelayed, then hibernation, then resume works', async () => {
      const alice = await fast.login('directtls', USERS.alice, { resource: 'silent', sm: true });
      const bob = await fast.login('directtls', USERS.bob, { resource: 'silent' });
      bob.client.sendMessage(alice.jid, 'unanswered');
      await alice.client.expectMessage();
      await alice.client.expectClosed(3000);
      await waitUntil(() => (events.ackDelayed ?? []).some((e) => e.jid === alice.jid), 'the ackDelayed event');
      await waitUntil(() => (events.hibernationStarted ?? []).some((e) => e.jid === alice.jid), 'the hibernationStarted event');
      const { client, answer } = await resumeWith(fast, USERS.alice, alice.smId!, 0);
      expect(answer.name).toBe('resumed');
      expect(bodies(await collectMessages(client, 1, 'the replay'))).toEqual(['unanswered']);
      expect((events.hibernationEnded ?? []).some((e) => e.jid === alice.jid && e.reason === 'resumed')).toBe(true);
      client.ack();
      await client.close();
      await bob.client.close();
    });

    it('bounces unacked messages to their senders with their ids when the client never comes back, then goes offline', async () => {
      const alice = await fast.login('directtls', USERS.alice, { resource: 'gone', sm: true });
      const bob = await fast.login('directtls', USERS.bob, { resource: 'gone' });
      alice.client.drop();
      await waitUntil(() => (events.hibernationStarted ?? []).some((e) => e.jid === alice.jid), 'alice to hibernate');
      bob.client.sendMessage(alice.jid, 'lost 1', 'L1');
      bob.client.sendMessage(alice.jid, 'lost 2', 'L2');
      const errors = [
        await bob.client.expect((el) => el.is('message') && el.attrs.id === 'L1' && el.attrs.type === 'error', 'the bounce of L1', 4000),
        await bob.client.expect((el) => el.is('message') && el.attrs.id === 'L2' && el.attrs.type === 'error', 'the bounce of L2', 4000),
      ];
      for (const error of errors) {
        expect(error.attrs.from).toBe(alice.jid);
        expect(error.getChild('error')?.getChild('recipient-unavailable', STANZAS)).toBeDefined();
      }
      expect((events.stanzaQueuedWhileHibernating ?? []).filter((e) => e.jid === alice.jid)).toHaveLength(2);
      expect((events.hibernationEnded ?? []).some((e) => e.jid === alice.jid && e.reason === 'expired')).toBe(true);
      // A late resume gets <failed h/> and the reason.
      const { client, answer } = await resumeWith(fast, USERS.alice, alice.smId!, 0);
      expect(failedCondition(answer)).toBe('item-not-found');
      expect(answer.attrs.h).toBe('0');
      expect(answer.getChildText('text')).toMatch(/expired/);
      await client.close();
      await bob.client.close();
    });

    it('keeps a connected session whose queue is full: the rest waits for its acks, in order; once it stops acking it hibernates, overflows, and everything is answered', async () => {
      const alice = await fast.login('directtls', USERS.alice, { resource: 'flood', sm: true });
      const bob = await fast.login('directtls', USERS.bob, { resource: 'flood' });
      const received = (): unknown[] => alice.client.received.filter((el) => el.is('message')).map((m) => m.attrs.id);
      for (let i = 1; i <= 8; i++) bob.client.sendMessage(alice.jid, `f${i}`, `F${i}`);
      await alice.client.expect((el) => el.is('message') && el.attrs.id === 'F5', 'the fifth message, filling the queue of five');
      await alice.client.expectNone((el) => el.is('message') && el.attrs.id === 'F6', 'more than the queue holds before an ack', 150);
      alice.client.ack();
      await alice.client.expect((el) => el.is('message') && el.attrs.id === 'F8', 'the rest, once alice acked');
      expect(received()).toEqual(['F1', 'F2', 'F3', 'F4', 'F5', 'F6', 'F7', 'F8']);
      alice.client.ack();
      await bob.client.expectNone((el) => el.is('message') && el.attrs.type === 'error', 'a bounce of a delivered message', 100);

      // Alice stops acking: the <r/> goes unanswered, the link is treated as dead, the session
      // hibernates with G6 still waiting, and its queue overflows: everything is answered.
      for (let i = 1; i <= 6; i++) bob.client.sendMessage(alice.jid, `g${i}`, `G${i}`);
      for (let i = 1; i <= 6; i++) {
        await bob.client.expect((el) => el.is('message') && el.attrs.id === `G${i}` && el.attrs.type === 'error', `the bounce of G${i}`);
      }
      expect((events.hibernationEnded ?? []).some((e) => e.jid === alice.jid && e.reason === 'queue-overflow')).toBe(true);
      const { client, answer } = await resumeWith(fast, USERS.alice, alice.smId!, 8);
      expect(answer.getChildText('text')).toMatch(/unacknowledged/);
      await client.close();
      await bob.client.close();
    });

    it("keeps sessions working when an integration's event listener throws", async () => {
      const names = ['ackDelayed', 'hibernationStarted', 'hibernationEnded', 'stanzaQueuedWhileHibernating'] as const;
      const thrower = (): never => {
        throw new Error('integration bug');
      };
      for (const name of names) fast.proxy.events.on(name, thrower);
      try {
        const alice = await fast.login('directtls', USERS.alice, { resource: 'throwing', sm: true });
        const bob = await fast.login('directtls', USERS.bob, { resource: 'throwing' });
        alice.client.drop();
        await waitUntil(() => (events.hibernationStarted ?? []).some((e) => e.jid === alice.jid), 'alice to hibernate');
        bob.client.sendMessage(alice.jid, 'while away', 'T1');
        // The expiry timer emits hibernationEnded: the session still bounces and ends.
        await bob.client.expect((el) => el.is('message') && el.attrs.id === 'T1' && el.attrs.type === 'error', 'the bounce of T1', 4000);
        expect((events.stanzaQueuedWhileHibernating ?? []).some((e) => e.jid === alice.jid)).toBe(true);
        expect((events.hibernationEnded ?? []).some((e) => e.jid === alice.jid && e.reason === 'expired')).toBe(true);
        await bob.client.close();
      } finally {
        for (const name of names) fast.proxy.events.off(name, thrower);
      }
    });

    it('drops unacked stanzas quietly with expiryPolicy "drop"', async () => {
      const quiet = await startProxyFixture({
        server,
        streamManagement: { hibernationSeconds: 0.5, maxHibernationSeconds: 0.5, expiryPolicy: 'drop' },
      });
      try {
        const alice = await quiet.login('directtls', USERS.alice, { resource: 'dropped', sm: true });
        const bob = await quiet.login('directtls', USERS.bob, { resource: 'dropped' });
        alice.client.drop();
        await waitUntil(() => [...quiet.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
        bob.client.sendMessage(alice.jid, 'dropped', 'D1');
        await waitUntil(() => quiet.proxy.registry.size === 1, "alice's session to expire", 3000);
        await bob.client.expectNone((el) => el.attrs.id === 'D1', 'a bounce', 500);
        await bob.client.close();
      } finally {
        await quiet.stop();
      }
    });
  });
});
