/**
 * Proves the end-to-end harness without the proxy: a throwaway Prosody (test/support/prosody.ts),
 * the real client library (test/support/xmpp-client.ts) and the scripted raw client
 * (test/support/raw-client.ts) talk to each other directly over Prosody's plaintext c2s port.
 *
 * The legacy server (mod_smacks off) must not advertise XEP-0198 in any version: that is what the
 * proxy is for. With `smacks: true` it must, so the same harness can compare against native SM.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { Element, NS, RawClient } from '../support/raw-client.js';
import { connectXmppJs, type XmppJsSession } from '../support/xmpp-client.js';

const ALICE = { username: 'alice', password: 'alice-secret' };
const BOB = { username: 'bob', password: 'bob-secret' };
/** Non-ASCII on purpose: SASL carries UTF-8 (@xmpp/client's PLAIN cannot, see xmpp-client.ts). */
const CAROL = { username: 'carol', password: 'cärol-sécret ☃' };
const HOOK_TIMEOUT_MS = 20_000;
const TEST_TIMEOUT_MS = 30_000;

/** Every `<sm/>` of any XEP-0198 version (urn:xmpp:sm:2, urn:xmpp:sm:3, …) among the features. */
function smFeatures(features: Element | undefined): Element[] {
  return (features?.getChildElements() ?? []).filter((child) => child.name === 'sm' && (child.getNS() ?? '').startsWith('urn:xmpp:sm:'));
}

function chat(to: string, body: string): Element {
  return new Element('message', { to, type: 'chat' }).c('body').t(body).root();
}

function hasBody(body: string): (stanza: Element) => boolean {
  return (stanza) => stanza.is('message') && stanza.getChildText('body') === body;
}

describe('legacy Prosody (mod_smacks off)', () => {
  let prosody: ProsodyServer;
  let service: string;
  const sessions: XmppJsSession[] = [];

  beforeAll(async () => {
    prosody = await startProsody({ users: [ALICE, BOB, CAROL] });
    service = `xmpp://${prosody.host}:${prosody.c2sPort}`;
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await Promise.all(sessions.map((session) => session.stop()));
    await prosody?.stop();
  }, HOOK_TIMEOUT_MS);

  test(
    '@xmpp/client logs in over plain TCP with PLAIN and SCRAM-SHA-1, and two accounts exchange a message',
    async () => {
      const alice = await connectXmppJs({ service, domain: prosody.domain, ...ALICE, resource: 'desk', mechanism: 'PLAIN' });
      sessions.push(alice);
      const bob = await connectXmppJs({ service, domain: prosody.domain, ...BOB, resource: 'phone', mechanism: 'SCRAM-SHA-1' });
      sessions.push(bob);
      expect(alice.jid).toBe(`alice@${prosody.domain}/desk`);
      expect(bob.jid).toBe(`bob@${prosody.domain}/phone`);

      const roster = await alice.client.iqCaller.get(new Element('query', { xmlns: 'jabber:iq:roster' }));
      expect(roster.is('query', 'jabber:iq:roster')).toBe(true);

      await bob.send(new Element('presence'));
      await alice.send(chat(bob.jid, 'hello bob ☃'));
      const message = await bob.expectStanza(hasBody('hello bob ☃'), "alice's message");
      expect(message.attrs.from).toBe(alice.jid);

      await bob.send(chat(alice.jid, 'hello alice'));
      await alice.expectStanza(hasBody('hello alice'), "bob's reply");
      expect([...alice.errors, ...bob.errors]).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    'post-auth features offer resource binding and no <sm/> of any version, so @xmpp/client does not enable SM',
    async () => {
      const alice = await connectXmppJs({ service, domain: prosody.domain, ...ALICE, mechanism: 'PLAIN' });
      sessions.push(alice);
      expect(alice.postAuthFeatures?.getChild('bind', NS.bind)).toBeDefined();
      expect(smFeatures(alice.postAuthFeatures)).toEqual([]);
      expect(alice.client.streamManagement.enabled).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    'the raw client authenticates with its own SCRAM-SHA-1 and PLAIN (UTF-8 passwords), binds and delivers a message',
    async () => {
      const carol = await RawClient.connectPlain({ host: prosody.host, port: prosody.c2sPort, domain: prosody.domain });
      const carolAgain = await RawClient.connectPlain({ host: prosody.host, port: prosody.c2sPort, domain: prosody.domain });
      try {
        const preAuth = await carol.openStream();
        const mechanisms = preAuth
          .getChild('mechanisms', NS.sasl)
          ?.getChildren('mechanism')
          .map((m) => m.getText());
        expect(mechanisms).toEqual(expect.arrayContaining(['PLAIN', 'SCRAM-SHA-1']));
        const postAuth = await carol.authenticateScramSha1(CAROL.username, CAROL.password);
        expect(smFeatures(postAuth)).toEqual([]);
        const carolJid = await carol.bind('scram');

        await carolAgain.openStream();
        const carolAgainJid = await carolAgain.login(CAROL.username, CAROL.password, { resource: 'plain', mechanism: 'PLAIN' });
        carolAgain.presence();
        carol.sendMessage(carolAgainJid, 'raw hello <&> ☃');
        const message = await carolAgain.expectMessage(hasBody('raw hello <&> ☃'));
        expect(message.attrs.from).toBe(carolJid);
      } finally {
        await Promise.all([carol.close(), carolAgain.close()]);
      }
    },
    TEST_TIMEOUT_MS,
  );
});

describe('Prosody with mod_smacks (native XEP-0198, for comparison)', () => {
  let prosody: ProsodyServer;
  let service: string;
  const sessions: XmppJsSession[] = [];

  beforeAll(async () => {
    prosody = await startProsody({ smacks: true, users: [ALICE, BOB] });
    service = `xmpp://${prosody.host}:${prosody.c2sPort}`;
  }, HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await Promise.all(sessions.map((session) => session.stop()));
    await prosody?.stop();
  }, HOOK_TIMEOUT_MS);

  test(
    'post-auth features offer <sm/> (urn:xmpp:sm:3 and :2) and @xmpp/client enables SM with resumption',
    async () => {
      const alice = await connectXmppJs({ service, domain: prosody.domain, ...ALICE, mechanism: 'PLAIN' });
      sessions.push(alice);
      const versions = smFeatures(alice.postAuthFeatures).map((sm) => sm.getNS());
      expect(versions).toEqual(expect.arrayContaining([NS.sm3, NS.sm2]));
      expect(alice.client.streamManagement.enabled).toBe(true);
      expect(alice.client.streamManagement.id).not.toBe('');
    },
    TEST_TIMEOUT_MS,
  );

  test(
    '@xmpp/client resumes after a network cut and receives what was sent meanwhile',
    async () => {
      const alice = await connectXmppJs({ service, domain: prosody.domain, ...ALICE, resource: 'desk', mechanism: 'PLAIN' });
      sessions.push(alice);
      const bob = await connectXmppJs({ service, domain: prosody.domain, ...BOB, resource: 'phone', mechanism: 'PLAIN' });
      sessions.push(bob);
      await bob.send(new Element('presence'));
      const smId = bob.client.streamManagement.id;

      bob.cut();
      await alice.send(chat(bob.jid, 'sent during the cut'));
      await bob.waitForResumed();

      expect(bob.client.streamManagement.id).toBe(smId);
      await bob.expectStanza(hasBody('sent during the cut'), 'the message sent during the cut');
    },
    TEST_TIMEOUT_MS,
  );

  test(
    'the raw client enables SM, counts acks, and resumes on a new connection',
    async () => {
      const connect = (): Promise<RawClient> =>
        RawClient.connectPlain({ host: prosody.host, port: prosody.c2sPort, domain: prosody.domain });
      const alice = await connect();
      await alice.openStream();
      await alice.login(ALICE.username, ALICE.password, { resource: 'raw' });

      const bob = await connect();
      await bob.openStream();
      const bobJid = await bob.login(BOB.username, BOB.password, { resource: 'raw' });
      const enabled = await bob.enableSm({ resume: true });
      expect(enabled.is('enabled', NS.sm3)).toBe(true);
      expect(enabled.attrs.resume).toBe('true');
      bob.presence();
      expect(await bob.ackRequest()).toBe(bob.stanzasSent);

      alice.sendMessage(bobJid, 'before the cut');
      await bob.expectMessage(hasBody('before the cut'));
      bob.ack();
      const h = bob.stanzasReceived;
      bob.drop();
      await bob.expectClosed();
      alice.sendMessage(bobJid, 'during the cut');
      await alice.syncWithServer(); // routed (and queued for bob) before bob resumes, not delivered live after

      const bobAgain = await connect();
      await bobAgain.openStream();
      await bobAgain.authenticatePlain(BOB.username, BOB.password);
      const resumed = await bobAgain.resume(String(enabled.attrs.id), h);
      expect(resumed.is('resumed', NS.sm3)).toBe(true);
      const replayed = await bobAgain.expectMessage(hasBody('during the cut'));
      expect(replayed.getChild('delay', NS.delay)).toBeDefined();
      await bobAgain.expectNone(hasBody('before the cut'), 'a replay of the message acked before the cut', 300);

      await Promise.all([alice.close(), bobAgain.close()]);
    },
    TEST_TIMEOUT_MS,
  );
});
