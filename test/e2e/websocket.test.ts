import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BEHAVIOUR, startLegacyServer, type LegacyServer, type LegacyUser } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS, RawClient, WebSocketHandshakeError, type Element, type RawTransport } from '../support/raw-client.js';
import { waitUntil } from '../support/wait.js';

// XMPP over WebSocket (RFC 7395) through the proxy's wss:// listener, in front of a real legacy
// Prosody 0.12 (mod_smacks off): the relay, XEP-0198 done by the proxy, resumption across
// transports, and the framing rules a browser client can break.

const STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
/** The proxy's default limits.maxStanzaBytes: also the WebSocket listener's maxPayload. */
const MAX_STANZA_BYTES = 262_144;

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;
  /** SM-IDs of the sessions that started hibernating. */
  const hibernated = new Set<string>();
  /** Stanzas queued for each hibernating session, by SM-ID. */
  const queuedWhileHibernating = new Map<string, number>();

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server, streamManagement: { maxHibernationSeconds: 600 } });
    fixture.proxy.events.on('hibernationStarted', (event) => hibernated.add(event.smId));
    fixture.proxy.events.on('stanzaQueuedWhileHibernating', (event) =>
      queuedWhileHibernating.set(event.smId, (queuedWhileHibernating.get(event.smId) ?? 0) + 1),
    );
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await server?.stop();
  });

  // --- helpers ----------------------------------------------------------------------------------

  function bodies(messages: Element[]): string[] {
    return messages.map((m) => m.getChildText('body') ?? '');
  }

  /** The next `count` messages, each within 5 s; the error says how many came. */
  async function collectMessages(client: RawClient, count: number, what: string): Promise<Element[]> {
    const messages: Element[] = [];
    for (let i = 0; i < count; i++) {
      messages.push(
        await client
          .expectMessage(() => true, 5000)
          .catch((err: Error) => {
            throw new Error(`${what}: got ${messages.length} of ${count} messages: ${err.message}`);
          }),
      );
    }
    return messages;
  }

  function failedCondition(failed: Element): string | undefined {
    return failed.getChildElements().find((c) => c.getNS() === STANZAS && c.name !== 'text')?.name;
  }

  function hibernation(smId: string): Promise<void> {
    return waitUntil(() => hibernated.has(smId), `the session ${smId} to hibernate`, 5000);
  }

  /** Resolves once `count` stanzas were queued for the hibernating session: a resume now must replay them. */
  function queued(smId: string, count: number): Promise<void> {
    return waitUntil(
      () => (queuedWhileHibernating.get(smId) ?? 0) >= count,
      `${count} stanzas queued for the hibernating session ${smId} (got ${queuedWhileHibernating.get(smId) ?? 0})`,
      5000,
    );
  }

  /** A new connection over `transport`: SASL PLAIN, stream restart, `<resume previd h/>`. */
  async function resumeOver(
    transport: RawTransport,
    user: LegacyUser,
    previd: string,
    h: number,
  ): Promise<{ client: RawClient; answer: Element }> {
    const client = await fixture.connect(transport);
    await client.authenticatePlain(user.username, user.password);
    const answer = await client.resume(previd, h);
    return { client, answer };
  }

  /** XEP-0203: the `<delay/>` the proxy adds to a replayed message, with a stamp not in the future. */
  function expectDelayed(message: Element): void {
    const delay = message.getChild('delay', NS.delay);
    expect(delay, `a <delay xmlns='${NS.delay}'/> in ${message.toString()}`).toBeDefined();
    const stamp = Date.parse(String(delay!.attrs.stamp));
    expect(Number.isNaN(stamp), `a valid stamp in ${delay!.toString()}`).toBe(false);
    expect(stamp).toBeLessThanOrEqual(Date.now() + 1000);
  }

  /** `bystander` still chats: a message to itself comes back. */
  async function stillChatting(bystander: LoggedIn, id: string): Promise<void> {
    bystander.client.sendMessage(bystander.jid, 'still here', id);
    await bystander.client.expectMessage((m) => m.attrs.id === id);
  }

  /**
   * A session the proxy ended (not a network loss) must not be resumable: `<failed/>` with
   * item-not-found, on a connection that then works normally.
   */
  async function expectNotResumable(user: LegacyUser, smId: string, h: number): Promise<void> {
    const { client, answer } = await resumeOver('websocket', user, smId, h);
    expect(answer.name, answer.toString()).toBe('failed');
    expect(failedCondition(answer)).toBe('item-not-found');
    await client.close();
  }

  // --- the relay ----------------------------------------------------------------------------------

  describe('relay over WebSocket', () => {
    it("answers <open/> with its own <open/> and the legacy server's SASL features, without starttls or sm", async () => {
      const client = await fixture.connect('websocket');
      const header = client.streamHeader!;
      // RFC 7395 §3.4: the server's <open/> carries from, id, version.
      expect(header.is('open', NS.framing)).toBe(true);
      expect(header.attrs.from).toBe(fixture.domain);
      expect(header.attrs.version).toBe('1.0');
      expect(header.attrs.id).toMatch(/\S/);
      const features = client.features!;
      const mechanisms = features
        .getChild('mechanisms', NS.sasl)
        ?.getChildren('mechanism')
        .map((m) => m.getText());
      expect(mechanisms).toEqual(expect.arrayContaining(['PLAIN', 'SCRAM-SHA-1']));
      expect(features.getChild('starttls', NS.tls)).toBeUndefined();
      expect(features.getChild('sm', NS.sm3)).toBeUndefined();
      await client.close();
    });

    it.each(['PLAIN', 'SCRAM-SHA-1'] as const)('logs in with %s, binds, fetches the roster and closes with <close/>', async (mechanism) => {
      const client = await fixture.connect('websocket');
      const postAuth =
        mechanism === 'PLAIN'
          ? await client.authenticatePlain('alice', USERS.alice.password)
          : await client.authenticateScramSha1('alice', USERS.alice.password);
      expect(postAuth.getChild('bind', NS.bind)).toBeDefined();
      expect(postAuth.getChild('sm', NS.sm3)).toBeDefined();
      const jid = await client.bind(`ws-${mechanism}`);
      expect(jid).toBe(`alice@${fixture.domain}/ws-${mechanism}`);
      client.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
      const roster = await client.expect((el) => el.is('iq') && el.attrs.id === 'roster1', 'the roster result');
      expect(roster.attrs.type).toBe('result');
      await client.close();
      // RFC 7395 §3.6: the server answers <close/> with <close/>, then the WebSocket closes normally.
      expect(client.streamClosedByPeer).toBe(true);
      expect(client.webSocketClose?.code).toBe(1000);
    });

    it('relays chat both ways with a TCP client, each message a standalone jabber:client element', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-chat' });
      const bob = await fixture.login('starttls', USERS.bob, { resource: 'tcp-chat' });
      const body = 'caf\u00e9 \u{1F600} <&> \u20ac';
      bob.client.sendMessage(alice.jid, body, 'to-ws');
      const toWs = await alice.client.expectMessage((m) => m.attrs.id === 'to-ws');
      expect(toWs.getChildText('body')).toBe(body);
      expect(toWs.attrs.from).toBe(bob.jid);
      // RFC 7395 §3.3.3: relayed from a TCP stream, the stanza declares the namespace it inherited there.
      expect(toWs.getNS()).toBe(NS.client);
      alice.client.sendMessage(bob.jid, body, 'to-tcp');
      const toTcp = await bob.client.expectMessage((m) => m.attrs.id === 'to-tcp');
      expect(toTcp.getChildText('body')).toBe(body);
      expect(toTcp.attrs.from).toBe(alice.jid);
      await alice.client.close();
      await bob.client.close();
    });

    it('relays presence: own presence echoed (where the server does), directed presence both ways with a TCP client', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-presence' });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'tcp-presence' });
      // Available, as a client is: jabberd2 2.7 delivers directed presence only to available resources.
      bob.client.presence();
      await bob.client.syncWithServer();
      alice.client.send('<presence><show>chat</show><status>on the web</status></presence>');
      if (BEHAVIOUR[kind].echoesOwnPresence) {
        const echo = await alice.client.expect(
          (el) => el.is('presence') && el.attrs.from === alice.jid,
          "the echo of alice's own presence",
        );
        expect(echo.getChildText('status')).toBe('on the web');
      } else {
        await alice.client.syncWithServer();
      }
      bob.client.presence({ to: alice.jid });
      const fromBob = await alice.client.expect((el) => el.is('presence') && el.attrs.from === bob.jid, "bob's directed presence");
      expect(fromBob.attrs.type).toBeUndefined();
      alice.client.presence({ to: bob.jid });
      await bob.client.expect((el) => el.is('presence') && el.attrs.from === alice.jid, "alice's directed presence");
      alice.client.presence({ to: bob.jid, type: 'unavailable' });
      await bob.client.expect(
        (el) => el.is('presence') && el.attrs.from === alice.jid && el.attrs.type === 'unavailable',
        "alice's directed unavailable presence",
      );
      await alice.client.close();
      await bob.client.close();
    });
  });

  // --- stream management ----------------------------------------------------------------------------

  describe('stream management over WebSocket', () => {
    it("enables SM with resumption and counts both ways: <r/> answered with h, the proxy's <r/> with our h", async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-acks', sm: true });
      expect(alice.smId).toMatch(/^[A-Za-z0-9_-]{22,}$/);
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'tcp-acks' });
      for (let i = 1; i <= 3; i++) alice.client.sendMessage(bob.jid, `up ${i}`);
      expect(await alice.client.ackRequest()).toBe(3);
      expect(bodies(await collectMessages(bob.client, 3, "alice's messages at bob"))).toEqual(['up 1', 'up 2', 'up 3']);
      for (let i = 1; i <= 4; i++) bob.client.sendMessage(alice.jid, `down ${i}`);
      expect(bodies(await collectMessages(alice.client, 4, "bob's messages at alice"))).toEqual(['down 1', 'down 2', 'down 3', 'down 4']);
      expect(alice.client.stanzasReceived).toBe(4);
      // The proxy requests acks itself (XEP-0198 §4): answered, the connection stays up and the stanzas leave its queue.
      await alice.client.expect((el) => el.is('r', NS.sm3), "the proxy's <r/>");
      alice.client.ack();
      expect(await alice.client.ackRequest()).toBe(3);
      await alice.client.expectNone((el) => el.is('error', NS.stream), 'a stream error', 300);
      // Acked: a drop now leaves nothing to replay.
      alice.client.drop();
      await hibernation(alice.smId!);
      const { client, answer } = await resumeOver('websocket', USERS.alice, alice.smId!, 4);
      expect(answer.name, answer.toString()).toBe('resumed');
      expect(answer.attrs.h).toBe('3');
      await client.expectNone((el) => el.is('message'), 'a replay of acknowledged messages', 300);
      await client.close();
      await bob.client.close();
    });

    it('drops without <close/>, hibernates, and resumes: messages sent meanwhile arrive once, in order, with <delay/>', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-resume', sm: true });
      const bob = await fixture.login('starttls', USERS.bob, { resource: 'tcp-resume' });
      bob.client.sendMessage(alice.jid, 'before');
      await alice.client.expectMessage((m) => m.getChildText('body') === 'before');
      const h = alice.client.stanzasReceived;
      expect(h).toBe(1);
      alice.client.drop();
      await hibernation(alice.smId!);
      const sent = [1, 2, 3, 4, 5].map((i) => `meanwhile ${i}`);
      for (const body of sent) bob.client.sendMessage(alice.jid, body);
      await queued(alice.smId!, sent.length);
      const { client, answer } = await resumeOver('websocket', USERS.alice, alice.smId!, h);
      expect(answer.name, answer.toString()).toBe('resumed');
      expect(answer.attrs.previd).toBe(alice.smId);
      const replayed = await collectMessages(client, 5, 'the replay');
      expect(bodies(replayed)).toEqual(sent);
      replayed.forEach(expectDelayed);
      await client.expectNone((el) => el.is('message'), 'a message replayed twice (or "before", which h acknowledged)', 500);
      // The session carries on: alice's next stanza reaches bob, and the counters continue.
      client.sendMessage(bob.jid, 'back again', 'back');
      await bob.client.expectMessage((m) => m.attrs.id === 'back');
      expect(await client.ackRequest()).toBe(1);
      client.ack();
      await client.close();
      await bob.client.close();
    });

    it('takes over a session whose old WebSocket is still open: the old one gets <conflict/>, then <close/>', async () => {
      const old = await fixture.login('websocket', USERS.alice, { resource: 'ws-takeover', sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'tcp-takeover' });
      const { client, answer } = await resumeOver('websocket', USERS.alice, old.smId!, 0);
      expect(answer.name, answer.toString()).toBe('resumed');
      await old.client.expectStreamError('conflict');
      await old.client.expectClosed();
      // RFC 7395 §3.5: the stream error is followed by <close/>.
      expect(old.client.streamClosedByPeer).toBe(true);
      bob.client.sendMessage(old.jid, 'to the newest');
      await client.expectMessage((m) => m.getChildText('body') === 'to the newest');
      await client.close();
      await bob.client.close();
    });

    it.each([
      ['a TCP session (STARTTLS) resumed over WebSocket', 'starttls', 'websocket'],
      ['a WebSocket session resumed over TCP (STARTTLS)', 'websocket', 'starttls'],
      ['a WebSocket session resumed over direct TLS', 'websocket', 'directtls'],
    ] as const)('%s, with the messages sent meanwhile', async (_label, first, second) => {
      const alice = await fixture.login(first, USERS.alice, { resource: `cross-${first}`, sm: true });
      const bob = await fixture.login('directtls', USERS.bob, { resource: `cross-${first}` });
      alice.client.send(`<message to='${bob.jid}'><body>counted</body></message>`);
      expect(await alice.client.ackRequest()).toBe(1);
      alice.client.drop();
      await hibernation(alice.smId!);
      bob.client.sendMessage(alice.jid, 'across 1');
      bob.client.sendMessage(alice.jid, 'across 2');
      await queued(alice.smId!, 2);
      const { client, answer } = await resumeOver(second, USERS.alice, alice.smId!, 0);
      expect(answer.name, answer.toString()).toBe('resumed');
      expect(answer.attrs.h).toBe('1');
      const replayed = await collectMessages(client, 2, `the replay over ${second}`);
      expect(bodies(replayed)).toEqual(['across 1', 'across 2']);
      replayed.forEach(expectDelayed);
      // Each replayed element is whole in the new framing (over WebSocket: standalone, namespaced).
      expect(replayed.every((m) => m.getNS() === NS.client)).toBe(true);
      await client.expectNone((el) => el.is('message'), 'a message replayed twice', 300);
      client.sendMessage(bob.jid, 'after the move', 'moved');
      await bob.client.expectMessage((m) => m.attrs.id === 'moved');
      await client.close();
      await bob.client.close();
    });
  });

  // --- bad input ----------------------------------------------------------------------------------
  //
  // The bad inputs every transport shares (malformed and restricted XML, limits, UTF-8, stream
  // headers, idle streams) run as one table over STARTTLS, direct TLS and WebSocket in
  // relay.test.ts. Here: what only WebSocket has (binary messages, framing, the handshake) and what
  // an ended session means for stream management (no resumption).

  describe('bad WebSocket input ends only the offending session', () => {
    let bystander: LoggedIn;

    beforeAll(async () => {
      bystander = await fixture.login('websocket', USERS.bob, { resource: 'ws-bystander', sm: true });
    });

    afterAll(async () => {
      if (bystander !== undefined && !bystander.client.isClosed) await bystander.client.close();
    });

    it('a message over maxStanzaBytes: policy-violation with stanza-too-big, close 1009, and the session cannot be resumed', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-oversized', sm: true });
      alice.client.sendRaw(`<message xmlns='jabber:client' to='${bystander.jid}'><body>${'x'.repeat(MAX_STANZA_BYTES)}</body></message>`);
      const error = await alice.client.expectStreamError('policy-violation');
      expect(error.getChild('stanza-too-big', 'urn:xmpp:errors')).toBeDefined();
      await alice.client.expectClosed();
      // RFC 6455 §7.4.1: 1009 "a message that is too big for it to process".
      expect(alice.client.webSocketClose?.code).toBe(1009);
      await bystander.client.expectNone((el) => el.is('message') && el.attrs.from === alice.jid, 'any part of the oversized message', 200);
      await expectNotResumable(USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await stillChatting(bystander, 'after-oversized');
    });

    it('a message far over the limit is dropped by the WebSocket layer (1009) and ends the session too', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-huge', sm: true });
      alice.client.sendRaw(
        `<message xmlns='jabber:client' to='${bystander.jid}'><body>${'x'.repeat(MAX_STANZA_BYTES + 128 * 1024)}</body></message>`,
      );
      await alice.client.expectClosed();
      expect(alice.client.webSocketClose?.code).toBe(1009);
      await expectNotResumable(USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await stillChatting(bystander, 'after-huge');
    });

    it('a binary message: unsupported-encoding, <close/>, WebSocket close 1003, not resumable', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-binary', sm: true });
      alice.client.sendBinary(`<message xmlns='jabber:client' to='${bystander.jid}'><body>binary</body></message>`);
      await alice.client.expectStreamError('unsupported-encoding');
      await alice.client.expectClosed();
      expect(alice.client.streamClosedByPeer).toBe(true);
      // RFC 6455 §7.4.1: 1003 for "a type of data it cannot accept (e.g., an endpoint that understands only text data ...)".
      expect(alice.client.webSocketClose?.code).toBe(1003);
      await bystander.client.expectNone((el) => el.is('message') && el.attrs.from === alice.jid, 'the binary message relayed', 200);
      await expectNotResumable(USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await stillChatting(bystander, 'after-binary');
    });

    it('two elements in one message: not-well-formed, neither relayed, not resumable', async () => {
      const alice = await fixture.login('websocket', USERS.alice, { resource: 'ws-two', sm: true });
      const message = (id: string): string =>
        `<message xmlns='jabber:client' to='${bystander.jid}' id='${id}'><body>one of two</body></message>`;
      // RFC 7395 §3.3.3: every element in its own message.
      alice.client.sendRaw(message('two-a') + message('two-b'));
      await alice.client.expectStreamError('not-well-formed');
      await alice.client.expectClosed();
      expect(alice.client.webSocketClose?.code).toBe(1000);
      await bystander.client.expectNone((el) => el.is('message') && String(el.attrs.id).startsWith('two-'), 'either element relayed', 200);
      await expectNotResumable(USERS.alice, alice.smId!, alice.client.stanzasReceived);
      await stillChatting(bystander, 'after-two');
    });

    it.each([
      ['another subprotocol', ['chat']],
      ['no subprotocol at all', []],
    ] as const)('a handshake with %s: HTTP 400 naming RFC 7395 §3.1', async (_label, protocols) => {
      const refusal = await RawClient.connect({
        host: '127.0.0.1',
        port: fixture.ports.websocket,
        transport: 'websocket',
        domain: fixture.domain,
        path: fixture.websocketPath,
        protocols: [...protocols],
      }).then(
        (client) => {
          client.drop();
          throw new Error(`the handshake offering ${JSON.stringify(protocols)} was accepted`);
        },
        (err: unknown) => err,
      );
      expect(refusal).toBeInstanceOf(WebSocketHandshakeError);
      expect((refusal as WebSocketHandshakeError).status).toBe(400);
      expect((refusal as WebSocketHandshakeError).body).toContain("subprotocol 'xmpp' is required");
      await stillChatting(bystander, `after-subprotocol-${protocols.length}`);
    });

    it('a handshake from an origin not in allowedOrigins: HTTP 403; an allowed origin and no origin log in', async () => {
      const allowed = 'https://chat.example.org';
      const strict = await startProxyFixture({ server, websocket: { allowedOrigins: [allowed] } });
      try {
        const connect = (origin: string | undefined): Promise<RawClient> =>
          RawClient.connect({
            host: '127.0.0.1',
            port: strict.ports.websocket,
            transport: 'websocket',
            domain: strict.domain,
            path: strict.websocketPath,
            ...(origin !== undefined ? { origin } : {}),
          });
        const refusal = await connect('https://evil.example').then(
          (client) => {
            client.drop();
            throw new Error('the handshake from https://evil.example was accepted');
          },
          (err: unknown) => err,
        );
        expect(refusal).toBeInstanceOf(WebSocketHandshakeError);
        expect((refusal as WebSocketHandshakeError).status).toBe(403);
        expect((refusal as WebSocketHandshakeError).body).toContain('https://evil.example');
        for (const origin of [allowed, 'HTTPS://CHAT.EXAMPLE.ORG', undefined]) {
          const client = await connect(origin);
          await client.login('carol', USERS.carol.password, { resource: `origin-${origin ?? 'none'}` });
          await client.close();
        }
        await stillChatting(bystander, 'after-origin');
      } finally {
        await strict.stop();
      }
    });
  });

  describe('limits.maxSessionsPerAddress', () => {
    it('refuses a session over the limit from one address, counts hibernating sessions, and counts forwarded clients apart', async () => {
      const limited = await startProxyFixture({
        server,
        limits: { maxSessionsPerAddress: 2 },
        websocket: { trustedProxies: ['127.0.0.1'] },
        streamManagement: { maxHibernationSeconds: 600 },
      });
      try {
        const refused = async (transport: 'directtls' | 'websocket', headers?: Record<string, string>): Promise<void> => {
          // Refused at accept, before the client says anything: the proxy opens the stream to say why.
          const client = await limited.connect(transport, { openStream: false, ...(headers === undefined ? {} : { headers }) });
          const error = await client.expectStreamError('policy-violation');
          expect(error.getChildText('text', NS.streamErrors)).toContain('maxSessionsPerAddress');
          await client.expectClosed();
        };
        // 127.0.0.1 directly: two sessions, one of them hibernating, fill the limit.
        const alice = await limited.login('directtls', USERS.alice, { sm: true, resource: 'limit-a' });
        await limited.login('websocket', USERS.bob, { resource: 'limit-b' });
        alice.client.drop();
        await waitUntil(
          () => [...limited.proxy.registry.sessions()].some((session) => session.stateName === 'hibernating'),
          'alice hibernating',
        );
        await refused('directtls');
        // Behind the trusted proxy (127.0.0.1), the forwarded client is what counts.
        const forwarded = { 'X-Forwarded-For': '198.51.100.7' };
        const carol = await limited.connect('websocket', { headers: forwarded });
        await carol.login(USERS.alice.username, USERS.alice.password, { resource: 'limit-c' });
        const dave = await limited.connect('websocket', { headers: forwarded });
        await dave.login(USERS.bob.username, USERS.bob.password, { resource: 'limit-d' });
        await refused('websocket', forwarded);
        await refused('websocket', { 'X-Forwarded-For': '127.0.0.1' });
      } finally {
        await limited.stop();
      }
    });
  });
});
