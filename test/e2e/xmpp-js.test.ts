import { Element } from 'ltx';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { connectXmppJs, type XmppJsSession } from '../support/xmpp-client.js';
import { waitUntil } from '../support/wait.js';

// A real client library, @xmpp/client 0.14 (xmpp.js) with its own XEP-0198 resumption, through
// the proxy to a real legacy Prosody 0.12 (mod_smacks off).

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;
  const sessions: XmppJsSession[] = [];

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server });
  }, 60_000);

  afterAll(async () => {
    for (const session of sessions) await session.stop().catch(() => undefined);
    await fixture?.stop();
    await server?.stop();
  });

  async function connect(
    user: { username: string; password: string },
    transport: 'starttls' | 'directtls',
    mechanism: 'PLAIN' | 'SCRAM-SHA-1' = 'PLAIN',
  ): Promise<XmppJsSession> {
    const scheme = transport === 'starttls' ? 'xmpp' : 'xmpps';
    const session = await connectXmppJs({
      service: `${scheme}://127.0.0.1:${fixture.ports[transport]}`,
      domain: fixture.domain,
      username: user.username,
      password: user.password,
      mechanism,
    });
    sessions.push(session);
    return session;
  }

  function chat(to: string, body: string, id: string): Element {
    return new Element('message', { to, type: 'chat', id }).c('body').t(body).root();
  }

  const bodyOf = (stanza: Element): string | undefined => (stanza.is('message') ? (stanza.getChildText('body') ?? undefined) : undefined);

  describe.each(['starttls', 'directtls'] as const)('@xmpp/client over %s', (transport) => {
    it.each(['PLAIN', 'SCRAM-SHA-1'] as const)('logs in with %s, enables stream management at the proxy and chats', async (mechanism) => {
      const alice = await connect(USERS.alice, transport, mechanism);
      const bob = await connect(USERS.bob, transport);
      expect(alice.postAuthFeatures?.getChild('sm', 'urn:xmpp:sm:3')).toBeDefined();
      expect(alice.client.streamManagement.enabled).toBe(true);
      const roster = await alice.client.iqCaller.get(new Element('query', { xmlns: 'jabber:iq:roster' }));
      expect(roster.is('query')).toBe(true);
      await alice.send(chat(bob.jid, `hello over ${transport}`, 'x1'));
      const message = await bob.expectStanza((s) => bodyOf(s) === `hello over ${transport}`, 'the message from alice');
      expect(message.attrs.from).toBe(alice.jid);
      await alice.stop();
      await bob.stop();
    });
  });

  describe('@xmpp/client resumption through the proxy', () => {
    it('cut while the other account sends 20 numbered messages: all 20 received once and in order', async () => {
      const alice = await connect(USERS.alice, 'directtls');
      const bob = await connect(USERS.bob, 'starttls');
      alice.cut();
      await waitUntil(
        () => [...fixture.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'),
        "alice's session to hibernate",
      );
      for (let i = 1; i <= 20; i++) await bob.send(chat(alice.jid, `numbered ${i}`, `n${i}`));
      await alice.waitForResumed(10_000);
      for (let i = 1; i <= 20; i++) await alice.expectStanza((s) => bodyOf(s) === `numbered ${i}`, `message ${i}`);
      const numbered = alice.stanzas.map(bodyOf).filter((body) => body?.startsWith('numbered '));
      expect(numbered).toEqual(Array.from({ length: 20 }, (_, i) => `numbered ${i + 1}`));
      // The resumed session works both ways.
      await alice.send(chat(bob.jid, 'back', 'b1'));
      await bob.expectStanza((s) => bodyOf(s) === 'back', 'the message after the resume');
      await alice.stop();
      await bob.stop();
    });
  });
});
