import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLegacyServer, type LegacyServer, type LegacyServerKind } from '../support/legacy-server.js';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { authenticate, NS, RawClient, type RawTransport, type SaslMechanism } from '../support/raw-client.js';
import { waitUntil } from '../support/wait.js';

// The core relay against each real legacy server (Prosody 0.12 without mod_smacks, ejabberd 23.01
// without mod_stream_mgmt, jabberd2 2.7), and the proxy's own refusals and faults (Prosody).

const TRANSPORTS: RawTransport[] = ['starttls', 'directtls', 'websocket'];

/** The SASL mechanisms each legacy server offers through the proxy, as its test instance is set up. */
const MECHANISMS: Readonly<Record<LegacyServerKind, readonly SaslMechanism[]>> = {
  prosody: ['PLAIN', 'SCRAM-SHA-1'],
  ejabberd: ['PLAIN', 'SCRAM-SHA-1', 'DIGEST-MD5'],
  jabberd2: ['PLAIN', 'SCRAM-SHA-1', 'DIGEST-MD5'],
};

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
    server: prosody,
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

// --- bad input: one table, every transport ----------------------------------------------------------
//
// Issue 2 ("bad input and faults": each a clear answer, nothing else disturbed) and issue 5 (the
// same over WebSocket). Each row runs over STARTTLS (after TLS), direct TLS and WebSocket against
// the real legacy Prosody, with a bystander session of the same transport connected throughout.

/** The proxy's defaults (README, Configuration), which the relay fixture keeps. */
const MAX_STANZA_BYTES = 262_144;
const MAX_STANZA_BYTES_PRE_AUTH = 16_384;
const MAX_DEPTH = 64;
/**
 * README, WebSocket section: ws refuses a message over maxStanzaBytes + 64 KiB itself (maxPayload),
 * before the proxy reads it.
 */
const WEBSOCKET_MAX_PAYLOAD_BYTES = MAX_STANZA_BYTES + 64 * 1024;
/** authTimeoutSeconds of the fixture for the idle row (the relay fixture waits 10 s). */
const SHORT_AUTH_TIMEOUT_SECONDS = 0.5;

/** Where in the stream's life the bad input comes. */
type Phase =
  /** Instead of the client's stream header after TLS (over STARTTLS: the header after `<proceed/>` and the TLS handshake). */
  | 'stream-header'
  /** After the stream header and the features, before SASL (the smaller stanza limit applies). */
  | 'before-auth'
  /** Logged in and bound: the session relays to the legacy server. */
  | 'after-auth'
  /** Nothing: the stream is opened and the client stays silent. */
  | 'idle';

/** What the offending client must see. */
type Answer =
  /**
   * RFC 6120 §4.9.1.1: a `<stream:error/>` with `condition` (and `appCondition` in urn:xmpp:errors),
   * then the stream close and the connection's end. Over WebSocket (RFC 7395 §3.5) `<close/>`, then
   * a close frame with `webSocketCloseCode` (README "Close codes": 1000 after `<close/>`, 1009 after
   * stanza-too-big).
   */
  | {
      readonly kind: 'stream-error';
      readonly condition: string;
      readonly appCondition?: string;
      /**
       * Matches the error's `<text/>`: the answer names its cause, and so is the
       * proxy's own, not a stream error of the legacy server relayed after the bad input went through.
       */
      readonly because: RegExp;
      readonly webSocketCloseCode: number;
    }
  /** WebSocket only: refused by the WebSocket layer itself, a close frame with `code` and no stream error before it. */
  | { readonly kind: 'websocket-close'; readonly code: number };

interface BadInput {
  readonly label: string;
  readonly phase: Phase;
  /** 'stream-header' only: what changes in the usual header (to = the served domain, version='1.0'); undefined leaves one out. */
  readonly header?: Record<string, string | undefined>;
  /** 'before-auth' and 'after-auth': the bytes sent as they are (over WebSocket: one text message). */
  readonly input?: string | Buffer;
  readonly answer: Answer;
  /** Where WebSocket legitimately differs from TCP: the rule is cited at the row. */
  readonly overWebSocket?: { readonly input?: string | Buffer; readonly answer?: Answer };
}

/** A stream error whose WebSocket close is 1000 (README "Close codes": 1000 after `<close/>`, with or without a stream error before it). */
function streamError(condition: string, because: RegExp): Answer {
  return { kind: 'stream-error', condition, because, webSocketCloseCode: 1000 };
}

/**
 * RFC 6120 §4.9.3.12 policy-violation with `<stanza-too-big xmlns='urn:xmpp:errors'/>`, the text
 * naming the limit; over WebSocket then 1009, RFC 6455 §7.4.1 "a message that is too big for it to process".
 */
function stanzaTooBig(limitBytes: number): Answer {
  return {
    kind: 'stream-error',
    condition: 'policy-violation',
    appCondition: 'stanza-too-big',
    because: new RegExp(`\\b${limitBytes}\\b`),
    webSocketCloseCode: 1009,
  };
}

/** A `<message/>` whose body makes it `bytes` long or a little longer; `complete: false` leaves it open (no end tag). */
function messageOf(bytes: number, complete = true): string {
  const head = "<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>";
  const tail = '</body></message>';
  return head + 'x'.repeat(Math.max(0, bytes - head.length)) + (complete ? tail : '');
}

/** SASL PLAIN with an initial response of `bytes` base64 characters. */
function authOf(bytes: number): string {
  return `<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${'A'.repeat(bytes)}</auth>`;
}

const BAD_INPUTS: readonly BadInput[] = [
  // RFC 6120 §4.9.3.13 not-well-formed.
  {
    label: 'a mismatched end tag',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><body>x</message>",
    answer: streamError('not-well-formed', /end tag/),
  },
  {
    label: 'an unquoted attribute value',
    phase: 'after-auth',
    input: '<message to=bob/>',
    answer: streamError('not-well-formed', /attribute value/),
  },
  {
    label: 'a mismatched end tag before authentication',
    phase: 'before-auth',
    input: `<auth xmlns='${NS.sasl}' mechanism='PLAIN'>AGFsaWNlAHg=</a>`,
    answer: streamError('not-well-formed', /end tag/),
  },
  // RFC 6120 §4.9.3.13: not-well-formed covers Namespaces in XML too, at every depth (README, Limits and abuse).
  {
    label: 'a prefix below the top level that nothing declares',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><x:body>x</x:body></message>",
    answer: streamError('not-well-formed', /undeclared prefix 'x'/),
  },
  {
    label: "a prefix undeclared with xmlns:a=''",
    phase: 'after-auth',
    input: "<message to='bob@localhost'><body xmlns:a=''>x</body></message>",
    answer: streamError('not-well-formed', /undeclares a prefix/),
  },
  {
    label: 'two attributes with one namespace and local name',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><x xmlns='urn:x' xmlns:p='urn:u' xmlns:q='urn:u' p:a='1' q:a='2'/></message>",
    answer: streamError('not-well-formed', /two attributes named/),
  },
  {
    label: 'U+00A0 (not a name character) in an element name',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><b\u00a0x/></message>",
    answer: streamError('not-well-formed', /U\+00A0/),
  },
  {
    label: 'U+FFFE (not an XML character) in text',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><body>\ufffe</body></message>",
    answer: streamError('not-well-formed', /U\+FFFE/),
  },
  // RFC 6120 §11.1: no comments, processing instructions, DTDs or entity references other than the predefined ones (§4.9.3.18 restricted-xml).
  { label: 'a comment', phase: 'after-auth', input: '<!-- hello -->', answer: streamError('restricted-xml', /comment/) },
  {
    label: 'a comment inside a stanza',
    phase: 'after-auth',
    input: "<message to='bob@localhost'><!-- hello --><body>x</body></message>",
    answer: streamError('restricted-xml', /comment/),
  },
  {
    label: 'a processing instruction',
    phase: 'after-auth',
    input: "<?php echo 'x' ?>",
    answer: streamError('restricted-xml', /processing instruction/),
  },
  { label: 'a DOCTYPE', phase: 'after-auth', input: '<!DOCTYPE message>', answer: streamError('restricted-xml', /DOCTYPE/) },
  {
    label: 'an entity declaration',
    phase: 'after-auth',
    input: "<!ENTITY xxe SYSTEM 'file:///etc/passwd'>",
    answer: streamError('restricted-xml', /declaration|ENTITY/),
  },
  {
    label: 'a DOCTYPE declaring an entity, then a stanza using it',
    phase: 'after-auth',
    input: "<!DOCTYPE message [<!ENTITY xxe 'boom'>]><message to='bob@localhost'><body>&xxe;</body></message>",
    answer: streamError('restricted-xml', /DOCTYPE/),
  },
  {
    label: 'an undeclared entity reference',
    phase: 'after-auth',
    input: '<message><body>&xxe;</body></message>',
    answer: streamError('restricted-xml', /entity/),
  },
  {
    label: 'a DOCTYPE before authentication',
    phase: 'before-auth',
    input: '<!DOCTYPE auth>',
    answer: streamError('restricted-xml', /DOCTYPE/),
  },
  // Issue 2: an oversized stanza gets policy-violation + stanza-too-big "before the proxy buffers it whole".
  {
    label: `a stanza over maxStanzaBytes (${MAX_STANZA_BYTES})`,
    phase: 'after-auth',
    // Only its first 300 KiB, no end tag: a TCP client gets the answer without sending the rest.
    input: messageOf(300 * 1024, false),
    // RFC 7395 §3.3.3: a WebSocket message is one complete element, and ws receives it whole before
    // the proxy reads it (README, WebSocket section), so the WebSocket client sends it complete.
    overWebSocket: { input: messageOf(MAX_STANZA_BYTES + 1024) },
    answer: stanzaTooBig(MAX_STANZA_BYTES),
  },
  {
    label: `a stanza over maxStanzaBytes + 64 KiB (${WEBSOCKET_MAX_PAYLOAD_BYTES})`,
    phase: 'after-auth',
    input: messageOf(WEBSOCKET_MAX_PAYLOAD_BYTES + 64 * 1024),
    answer: stanzaTooBig(MAX_STANZA_BYTES),
    // README, WebSocket section: "A message more than 64 KiB over the limit is cut off by the
    // WebSocket layer itself: the client then sees only the 1009 close, and the session ends all the same."
    overWebSocket: { answer: { kind: 'websocket-close', code: 1009 } },
  },
  {
    label: `an element over maxStanzaBytesPreAuth (${MAX_STANZA_BYTES_PRE_AUTH}) before authentication`,
    phase: 'before-auth',
    input: authOf(MAX_STANZA_BYTES_PRE_AUTH + 4 * 1024),
    answer: stanzaTooBig(MAX_STANZA_BYTES_PRE_AUTH),
  },
  {
    label: `an element over maxStanzaBytes + 64 KiB (${WEBSOCKET_MAX_PAYLOAD_BYTES}) before authentication`,
    phase: 'before-auth',
    input: authOf(WEBSOCKET_MAX_PAYLOAD_BYTES + 64 * 1024),
    answer: stanzaTooBig(MAX_STANZA_BYTES_PRE_AUTH),
    // README, WebSocket section: before authentication too, ws cuts a message over maxStanzaBytes + 64 KiB with 1009 alone.
    overWebSocket: { answer: { kind: 'websocket-close', code: 1009 } },
  },
  // README, Errors: PROXY_ERR_XML_TOO_DEEP, nesting deeper than maxDepth → policy-violation.
  {
    label: `elements nested deeper than maxDepth (${MAX_DEPTH})`,
    phase: 'after-auth',
    input: `<message to='bob@localhost'>${'<x>'.repeat(MAX_DEPTH + 16)}${'</x>'.repeat(MAX_DEPTH + 16)}</message>`,
    answer: streamError('policy-violation', new RegExp(`\\b${MAX_DEPTH}\\b`)),
  },
  // RFC 6120 §11.6: UTF-8 only (§4.9.3.22 unsupported-encoding).
  {
    label: 'invalid UTF-8 (an overlong encoding of U+0000)',
    phase: 'after-auth',
    input: Buffer.concat([Buffer.from('<message><body>'), Buffer.from([0xc0, 0x80]), Buffer.from('</body></message>')]),
    answer: streamError('unsupported-encoding', /UTF-8/),
    // RFC 6455 §8.1: a text message that is not valid UTF-8 fails the WebSocket connection; ws closes
    // it with 1007 before the proxy reads it (README, WebSocket section: no stream error before it).
    overWebSocket: { answer: { kind: 'websocket-close', code: 1007 } },
  },
  {
    label: 'invalid UTF-8 (an encoded UTF-16 surrogate)',
    phase: 'after-auth',
    input: Buffer.concat([Buffer.from('<message><body>'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('</body></message>')]),
    answer: streamError('unsupported-encoding', /UTF-8/),
    // As above: RFC 6455 §8.1, ws closes with 1007.
    overWebSocket: { answer: { kind: 'websocket-close', code: 1007 } },
  },
  // RFC 6120 §4.9.3.6 host-unknown: the `to` names no domain served here.
  {
    label: 'a stream header to an unknown domain',
    phase: 'stream-header',
    header: { to: 'nope.example' },
    answer: streamError('host-unknown', /nope\.example/),
  },
  // RFC 6120 §4.7.5, §4.9.3.25 unsupported-version: the proxy speaks XMPP 1.x only.
  {
    label: 'a stream header without version',
    phase: 'stream-header',
    header: { version: undefined },
    answer: streamError('unsupported-version', /version/),
  },
  {
    label: "a stream header with version='2.0'",
    phase: 'stream-header',
    header: { version: '2.0' },
    answer: streamError('unsupported-version', /version/),
  },
  // RFC 6120 §4.9.3.4 connection-timeout: README limits.authTimeoutSeconds.
  {
    label: `an idle unauthenticated stream (authTimeoutSeconds ${SHORT_AUTH_TIMEOUT_SECONDS})`,
    phase: 'idle',
    answer: streamError('connection-timeout', /authentication/),
  },
];

/** What differs between transports for this table, and nothing else. */
interface BadInputAdapter {
  /** The bytes and the expected answer of `row` over this transport. */
  forRow(row: BadInput): { input: string | Buffer | undefined; answer: Answer };
  /** After the answer: the stream and the connection ended as the transport's RFC says. */
  expectEnded(client: RawClient, answer: Answer): Promise<void>;
}

/** RFC 6120 over TCP (STARTTLS and direct TLS alike once TLS is up). */
const tcpAdapter: BadInputAdapter = {
  forRow: (row) => ({ input: row.input, answer: row.answer }),
  async expectEnded(client, answer) {
    if (answer.kind !== 'stream-error') throw new Error(`a TCP row expects a stream error, not ${answer.kind}`);
    await client.expectClosed();
    // RFC 6120 §4.9.1.1: the stream error is followed by </stream:stream>.
    expect(client.streamClosedByPeer, 'the peer to send </stream:stream> after the stream error').toBe(true);
  },
};

/** RFC 7395 over wss://. */
const webSocketAdapter: BadInputAdapter = {
  forRow: (row) => ({ input: row.overWebSocket?.input ?? row.input, answer: row.overWebSocket?.answer ?? row.answer }),
  async expectEnded(client, answer) {
    await client.expectClosed();
    const expectedCode = answer.kind === 'stream-error' ? answer.webSocketCloseCode : answer.code;
    const close = client.webSocketClose;
    expect(close?.code, `WebSocket close code (reason ${JSON.stringify(close?.reason)})`).toBe(expectedCode);
    // RFC 7395 §3.5: after a stream error, <close/>; a refusal by the WebSocket layer has neither.
    expect(
      client.streamClosedByPeer,
      answer.kind === 'stream-error' ? '<close/> after the stream error' : 'no <close/> from a WebSocket-layer refusal',
    ).toBe(answer.kind === 'stream-error');
  },
};

const BAD_INPUT_ADAPTERS: Readonly<Record<RawTransport, BadInputAdapter>> = {
  starttls: tcpAdapter,
  directtls: tcpAdapter,
  websocket: webSocketAdapter,
};

function answerText(answer: Answer, transport: RawTransport): string {
  if (answer.kind === 'websocket-close') return `WebSocket close ${answer.code} only`;
  const condition = answer.appCondition === undefined ? answer.condition : `${answer.condition} + ${answer.appCondition}`;
  return transport === 'websocket' ? `${condition}, <close/>, close ${answer.webSocketCloseCode}` : `${condition}, </stream:stream>`;
}

describeEachLegacyServer((kind) => {
  // This legacy server and a proxy in front of it, for the blocks below (the blocks after this one
  // test the proxy's own refusals, in front of Prosody).
  let server: LegacyServer;
  let fixture: ProxyFixture;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await server?.stop();
  });

  describe.each(TRANSPORTS)('relay over %s', (transport) => {
    it('offers SASL from the legacy server after TLS, without starttls, sm, iq-auth or anything unbound before authentication', async () => {
      const client = await fixture.connect(transport);
      const features = client.features!;
      const mechanisms = features
        .getChild('mechanisms', NS.sasl)
        ?.getChildren('mechanism')
        .map((m) => m.getText());
      expect(mechanisms).toEqual(expect.arrayContaining([...MECHANISMS[kind]]));
      expect(features.getChild('starttls', NS.tls)).toBeUndefined();
      expect(features.getChild('sm', NS.sm3)).toBeUndefined();
      expect(features.getChild('auth', 'http://jabber.org/features/iq-auth'), 'XEP-0078 is not offered through the proxy').toBeUndefined();
      await client.close();
    });

    it.each(MECHANISMS[kind])('logs in with %s, binds, fetches the roster and closes cleanly', async (mechanism) => {
      const client = await fixture.connect(transport);
      const postAuth = await authenticate(client, mechanism, 'alice', USERS.alice.password);
      expect(postAuth.getChild('bind', NS.bind)).toBeDefined();
      expect(postAuth.getChild('sm', NS.sm3)).toBeDefined();
      expect(postAuth.getChild('sm', NS.sm2)).toBeDefined();
      // jabberd2's pre-standard <ack:ack/> (prefix declared on its own stream header) and <unbind/>
      // never reach the client; the client's strict parser has already checked every prefix is bound.
      expect(postAuth.getChildElements().map((child) => `${child.getName()}@${String(child.getNS())}`)).not.toEqual(
        expect.arrayContaining([expect.stringMatching(/^ack@|^unbind@/)]),
      );
      const jid = await client.bind(`${transport}-${mechanism}`);
      expect(jid).toBe(`alice@${fixture.domain}/${transport}-${mechanism}`);
      // RFC 3921 §3: the session request of older clients is relayed like any iq (ejabberd offers
      // it as optional, Prosody and jabberd2 answer it without offering it).
      client.send("<iq type='set' id='session1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
      const session = await client.expect((el) => el.is('iq') && el.attrs.id === 'session1', 'the session result');
      expect(session.attrs.type).toBe('result');
      client.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
      const roster = await client.expect((el) => el.is('iq') && el.attrs.id === 'roster1', 'the roster result');
      expect(roster.attrs.type).toBe('result');
      await client.close();
      expect(client.streamClosedByPeer).toBe(true);
    });

    it.runIf(transport !== 'websocket')(
      'declares a prefix the client put on its own stream header on each element that uses it (the legacy server never sees that header)',
      async () => {
        const bob = await fixture.login(transport, USERS.bob, { resource: 'prefix-reader' });
        const alice = await fixture.connect(transport, { openStream: false });
        const declared = { 'xmlns:ex': 'urn:example:smacks-proxy' };
        await alice.openStream(declared);
        alice.send(
          `<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${Buffer.from(`\0alice\0${USERS.alice.password}`).toString('base64')}</auth>`,
        );
        await alice.expect((el) => el.is('success', NS.sasl), 'SASL <success/>');
        await alice.openStream(declared);
        await alice.bind('prefix-writer');
        alice.sendRaw(
          `<message to='${bob.jid}' id='prefixed-1' type='chat'><body>hi</body><ex:note ex:level='2'>declared on my header</ex:note></message>`,
        );
        // Had the proxy relayed the prefix without its declaration, the legacy server would have
        // ended alice's stream as not well-formed. (What ejabberd then writes to bob leaves the
        // attribute's prefix unbound: README, Limits and abuse. This test client does not check.)
        const message = await bob.client.expectMessage((m) => m.attrs.id === 'prefixed-1');
        const note = message.getChildElements().find((child) => child.getName() === 'note');
        expect(note?.getNS()).toBe('urn:example:smacks-proxy');
        // Prosody re-serialises stanzas with prefixes of its own choosing: the prefixed attribute
        // arrives under some prefix, bound (the strict parser checked) to the same namespace.
        expect(Object.entries(note?.attrs ?? {}).filter(([name]) => name.endsWith(':level'))).toEqual([[expect.any(String), '2']]);
        await alice.close();
        await bob.client.close();
      },
    );

    it('relays messages and presence between two accounts byte for byte', async () => {
      const alice = await fixture.login(transport, USERS.alice, { resource: 'chat' });
      const bob = await fixture.login(transport, USERS.bob, { resource: 'chat' });
      alice.client.presence();
      // RFC 6121 §4.2.2 has the server echo initial presence to the sender; jabberd2 2.7 (RFC 3921
      // era) does not, so a round trip orders what follows after the presence.
      await alice.client.syncWithServer();
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

    it("relays the legacy server's stream error (resource conflict) to the replaced client", async () => {
      const first = await fixture.login(transport, USERS.carol, { resource: 'same' });
      await fixture.login(transport, USERS.carol, { resource: 'same' });
      await first.client.expectStreamError('conflict');
      await first.client.expectClosed();
    });
  });

  describe.each(TRANSPORTS)('bad input over %s gets a clear answer and leaves other sessions alone', (transport) => {
    const adapter = BAD_INPUT_ADAPTERS[transport];
    /** The idle row's proxy: a short authTimeoutSeconds, same legacy server. */
    let impatient: ProxyFixture;
    /** One bystander per proxy, on this transport, connected before and after every row. */
    const bystanders = new Map<ProxyFixture, LoggedIn>();

    beforeAll(async () => {
      impatient = await startProxyFixture({ server, limits: { authTimeoutSeconds: SHORT_AUTH_TIMEOUT_SECONDS } });
    });

    afterAll(async () => {
      for (const bystander of bystanders.values()) if (!bystander.client.isClosed) await bystander.client.close();
      await impatient?.stop();
    });

    async function bystanderOn(proxy: ProxyFixture): Promise<LoggedIn> {
      let bystander = bystanders.get(proxy);
      if (bystander === undefined) {
        bystander = await proxy.login(transport, USERS.bob, { resource: `bystander-${transport}` });
        bystanders.set(proxy, bystander);
      }
      return bystander;
    }

    /** The offending client, at the row's phase, with nothing bad sent yet. */
    async function offender(proxy: ProxyFixture, phase: Phase): Promise<RawClient> {
      switch (phase) {
        case 'stream-header':
          return proxy.connect(transport, { openStream: false });
        case 'before-auth':
        case 'idle':
          return proxy.connect(transport);
        case 'after-auth':
          return (await proxy.login(transport, USERS.alice, { resource: `offender-${transport}` })).client;
      }
    }

    for (const row of BAD_INPUTS) {
      const { input, answer } = adapter.forRow(row);
      it(`${row.label} → ${answerText(answer, transport)}`, async () => {
        const proxy = row.phase === 'idle' ? impatient : fixture;
        const bystander = await bystanderOn(proxy);
        const sessionsBefore = proxy.proxy.registry.size;
        const client = await offender(proxy, row.phase);
        if (row.header !== undefined) client.sendStreamHeader({ to: proxy.domain, version: '1.0', 'xml:lang': 'en', ...row.header });
        if (input !== undefined) client.sendRaw(input);

        if (answer.kind === 'stream-error') {
          const error = await client.expectStreamError(answer.condition, 3000);
          expect(error.getChildText('text', NS.streamErrors), `the <text/> of ${error.toString()}`).toMatch(answer.because);
          if (answer.appCondition !== undefined) {
            expect(
              error.getChild(answer.appCondition, 'urn:xmpp:errors'),
              `<${answer.appCondition} xmlns='urn:xmpp:errors'/> in ${error.toString()}`,
            ).toBeDefined();
          }
        }
        await adapter.expectEnded(client, answer);
        if (answer.kind === 'websocket-close') {
          expect(
            client.received.filter((el) => el.is('error', NS.stream)).map(String),
            'no stream error before a WebSocket-layer close',
          ).toEqual([]);
        }
        // The offending session is gone from the proxy, not only its socket.
        await waitUntil(
          () => proxy.proxy.registry.size <= sessionsBefore,
          `the offending session to leave the registry (${sessionsBefore} sessions before it)`,
          3000,
        );
        // The bystander was connected throughout and still has a working session: a round trip
        // through the legacy server, which also routed anything of the bad input that got through.
        const id = `still-here-${bystander.client.received.length}`;
        bystander.client.sendMessage(bystander.jid, 'still here', id);
        await bystander.client.expectMessage((m) => m.attrs.id === id, 3000);
        // Most rows address their stanzas to bob@localhost, the bystander's account: none may arrive.
        await bystander.client.expectNone(
          (el) => el.is('message') && String(el.attrs.from).startsWith(`${USERS.alice.username}@`),
          'a message relayed from the bad input',
          0,
        );
      });
    }
  });
});

describe('refusals before TLS and legacy server faults', () => {
  it('answers an unknown domain with host-unknown before TLS (STARTTLS)', async () => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: 'nope.example' });
    client.sendRaw(
      "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='nope.example' version='1.0'>",
    );
    await client.expectStreamError('host-unknown');
    await client.expectClosed();
  });

  it('requires STARTTLS before anything else (policy-violation)', async () => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: fixture.domain });
    await client.openStream();
    client.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>AGFsaWNlAHg=</auth>`);
    await client.expectStreamError('policy-violation');
  });

  it('answers remote-connection-failed when the legacy server is down', async () => {
    const client = await RawClient.connect({
      host: '127.0.0.1',
      port: fixture.ports.directtls,
      transport: 'directtls',
      domain: 'down.localhost',
      openStream: false,
    });
    client.sendRaw(
      "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='down.localhost' version='1.0'>",
    );
    await client.expectStreamError('remote-connection-failed');
  });

  it('answers remote-connection-failed when the legacy server accepts but never answers', async () => {
    const client = await RawClient.connect({
      host: '127.0.0.1',
      port: fixture.ports.directtls,
      transport: 'directtls',
      domain: 'silent.localhost',
      openStream: false,
    });
    client.sendRaw(
      "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='silent.localhost' version='1.0'>",
    );
    await client.expectStreamError('remote-connection-failed');
  });

  it('answers remote-connection-failed and drops the hop when the legacy server stalls in the STARTTLS handshake', async () => {
    const client = await RawClient.connect({
      host: '127.0.0.1',
      port: fixture.ports.directtls,
      transport: 'directtls',
      domain: 'stalltls.localhost',
      openStream: false,
    });
    client.sendRaw(
      "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='stalltls.localhost' version='1.0'>",
    );
    await client.expectStreamError('remote-connection-failed', 3000);
    await client.expectClosed();
    expect(stallingTlsSockets.length).toBeGreaterThan(0);
    await waitUntil(
      () => stallingTlsSockets.every((socket) => socket.closed),
      'the stalled upstream socket to be closed by the proxy',
      3000,
    );
  });

  it('survives TLS garbage, half-open sockets and resets without leaking sessions', async () => {
    // Its own proxy, so that the session count says only what this test did.
    const fixture = await startProxyFixture({ server: prosody });
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
    const own = await startProxyFixture({ server: prosody });
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

describe('STARTTLS with stray bytes after <starttls/> (RFC 6120 §5.3.3)', () => {
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

  it('drops a connection that sends neither whitespace nor TLS after <proceed/>', async () => {
    const client = await RawClient.connectPlain({ host: '127.0.0.1', port: fixture.ports.starttls, domain: fixture.domain });
    await client.openStream();
    client.sendRaw(`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> <presence/>`);
    await client.expect((el) => el.name === 'proceed', '<proceed/>');
    await client.expectClosed();
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
