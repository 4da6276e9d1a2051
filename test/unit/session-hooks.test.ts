import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { sessionLimit } from '../../src/features/session-limit.js';
import { failedLoginBackoff } from '../../src/features/failed-login-backoff.js';
import { FailedLogins } from '../../src/session/failed-logins.js';
import { BUILTIN_HOOKS } from '../../src/features/builtin-hooks.js';
import { pingAnswer, pingWhileAway } from '../../src/features/ping-while-away.js';
import { transportRefusals } from '../../src/features/transport-refusals.js';
import { SessionHooks, type SessionHandle, type SessionHook } from '../../src/session/hooks.js';
import { parseElement, xml } from '../../src/xml/element.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const scanned = (text: string) => scanFragment(Buffer.from(text), LIMITS);

/** A session as a hook sees it; what the hook sends upstream is recorded. */
function handle(jid: string | undefined = 'a@localhost/r'): SessionHandle & { readonly upstream: string[] } {
  const upstream: string[] = [];
  return {
    sid: 's1',
    addressKey: '192.0.2.1',
    domain: 'localhost',
    jid,
    awaySinceMs: undefined,
    log: pino({ level: 'silent' }),
    upstream,
    sendUpstream: (data) => void upstream.push(data),
    serverOffers: () => false,
    holdBack: () => undefined,
    releaseHeld: () => undefined,
    hibernateFor: () => undefined,
  };
}

describe('SessionHooks: the order and the verdicts', () => {
  const seen: string[] = [];
  const recorder = (name: string, verdict: ReturnType<NonNullable<SessionHook['fromClient']>>): SessionHook => ({
    name,
    fromClient: () => {
      seen.push(name);
      return verdict;
    },
  });

  it('asks from-client hooks in order; the first that answers decides and the rest are not asked', () => {
    seen.length = 0;
    const hooks = new SessionHooks([
      recorder('first', undefined),
      recorder('second', { kind: 'answer-nonza', nonza: '<x/>' }),
      recorder('third', { kind: 'answer-nonza', nonza: '<y/>' }),
    ]);
    expect(hooks.fromClient(scanned('<a/>'), 'active', handle())).toEqual({ kind: 'answer-nonza', nonza: '<x/>' });
    expect(seen).toEqual(['first', 'second']);
  });

  it('passes each to-client hook what the one before it returned, and stops at a drop', () => {
    const calls: string[] = [];
    const hooks = new SessionHooks([
      { name: 'upper', toClient: (bytes) => (calls.push('upper'), Buffer.from(bytes.toString().toUpperCase())) },
      { name: 'drop-x', toClient: (bytes) => (calls.push('drop-x'), bytes.includes('X') ? undefined : bytes) },
      { name: 'never', toClient: (bytes) => (calls.push('never'), bytes) },
    ]);
    expect(hooks.toClient(Buffer.from('<a/>'), 'message', 'live', handle())?.toString()).toBe('<A/>');
    expect(calls).toEqual(['upper', 'drop-x', 'never']);
    calls.length = 0;
    expect(hooks.toClient(Buffer.from('<x/>'), 'message', 'live', handle())).toBeUndefined();
    expect(calls).toEqual(['upper', 'drop-x']);
  });

  it('asks a hook only in the phases, for the deliveries and the kinds of stanza it names', () => {
    const calls: string[] = [];
    const hooks = new SessionHooks([
      { name: 'pre-auth', phases: ['authenticating'], fromClient: () => (calls.push('pre-auth'), undefined) },
      { name: 'any-phase', fromClient: () => (calls.push('any-phase'), undefined) },
      { name: 'away', deliveries: ['queued'], toClient: (bytes) => (calls.push('away'), bytes) },
      { name: 'any-delivery', toClient: (bytes) => (calls.push('any-delivery'), bytes) },
      { name: 'iq-only', kinds: ['iq'], toClient: (bytes) => (calls.push('iq-only'), bytes) },
    ]);
    hooks.fromClient(scanned('<a/>'), 'authenticating', handle());
    hooks.fromClient(scanned('<a/>'), 'active', handle());
    hooks.toClient(Buffer.from('<a/>'), 'message', 'live', handle());
    hooks.toClient(Buffer.from('<a/>'), 'presence', 'queued', handle());
    hooks.toClient(Buffer.from('<iq/>'), 'iq', 'live', handle());
    expect(calls).toEqual(['pre-auth', 'any-phase', 'any-phase', 'any-delivery', 'away', 'any-delivery', 'any-delivery', 'iq-only']);
  });

  it('lets every hook without an opinion stay out: no hooks, the bytes themselves', () => {
    const bytes = Buffer.from('<message/>');
    const hooks = new SessionHooks([]);
    expect(hooks.toClient(bytes, 'message', 'queued', handle())).toBe(bytes);
    expect(hooks.replay(bytes, 0, handle())).toBe(bytes);
    expect(hooks.fromClient(scanned('<a/>'), 'authenticating', handle())).toBeUndefined();
    expect(hooks.advertise('post-auth', xml('stream:features'))).toEqual([]);
  });

  it('collects advertised features in hook order', () => {
    const hooks = new SessionHooks([
      { name: 'one', advertise: () => [xml('one', { xmlns: 'urn:x:1' })] },
      { name: 'two', advertise: (phase) => (phase === 'post-auth' ? [xml('two', { xmlns: 'urn:x:2' })] : []) },
    ]);
    expect(hooks.advertise('pre-auth', xml('stream:features')).map((e) => e.name)).toEqual(['one']);
    expect(hooks.advertise('post-auth', xml('stream:features')).map((e) => e.name)).toEqual(['one', 'two']);
  });
});

describe('pingAnswer (XEP-0199 §4.2)', () => {
  it("answers the legacy server's ping to the client with a result to its sender, same id", () => {
    const answer = pingAnswer(
      Buffer.from("<iq type='get' id='p&amp;1' from='localhost' to='a@localhost/r'><ping xmlns='urn:xmpp:ping'/></iq>"),
    );
    expect(parseElement(answer!).attrs).toEqual({ type: 'result', to: 'localhost', id: 'p&1' });
  });

  it.each([
    ['a ping result', "<iq type='result' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"],
    ['another iq get', "<iq type='get' id='v1' from='b@localhost/x'><query xmlns='jabber:iq:version'/></iq>"],
    ['a message mentioning the namespace', "<message from='b@localhost/x'><body>urn:xmpp:ping</body></message>"],
    ['a message carrying a ping element', "<message type='get' from='b@localhost/x'><ping xmlns='urn:xmpp:ping'/></message>"],
  ])('leaves %s alone', (_label, text) => {
    expect(pingAnswer(Buffer.from(text))).toBeUndefined();
  });
});

describe('built-in hooks', () => {
  const ping = Buffer.from("<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");

  it('answers a ping upstream and drops it while the session hibernates', () => {
    const session = handle();
    expect(pingWhileAway.toClient?.(ping, 'queued', session)).toBeUndefined();
    expect(session.upstream).toEqual(["<iq type='result' to='localhost' id='p1'/>"]);
  });

  it('leaves a ping to an attached client to the client', () => {
    const session = handle();
    expect(new SessionHooks(BUILTIN_HOOKS).toClient(ping, 'iq', 'live', session)).toBe(ping);
    expect(session.upstream).toEqual([]);
  });

  it('refuses STARTTLS (then the stream closes) and compression (the stream goes on) in every phase', () => {
    for (const phase of ['authenticating', 'authenticated', 'active'] as const) {
      expect(transportRefusals.fromClient?.(scanned("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), phase, handle())).toEqual({
        kind: 'answer-nonza',
        nonza: "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        thenClose: 'client asked for STARTTLS twice',
      });
      const compress = transportRefusals.fromClient?.(
        scanned("<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>"),
        phase,
        handle(),
      );
      expect(compress).toEqual({
        kind: 'answer-nonza',
        nonza: "<failure xmlns='http://jabber.org/protocol/compress'><unsupported-method/></failure>",
      });
    }
  });

  it('stamps a replayed message with the time it was first sent, from the bare JID, and leaves other stanzas alone', () => {
    const hooks = new SessionHooks(BUILTIN_HOOKS);
    const stamped = hooks.replay(
      Buffer.from("<message to='a@localhost/r'><body>hi</body></message>"),
      Date.UTC(2026, 0, 2, 3, 4, 5),
      handle(),
    );
    const delay = parseElement(stamped).getChild('delay', 'urn:xmpp:delay');
    expect(delay?.attrs).toEqual({ xmlns: 'urn:xmpp:delay', from: 'a@localhost', stamp: '2026-01-02T03:04:05.000Z' });
    const presence = Buffer.from("<presence from='b@localhost/x'/>");
    expect(hooks.replay(presence, 0, handle())).toBe(presence);
  });

  it('answers XEP-0078 and foreign authzids only before authentication', () => {
    const hooks = new SessionHooks(BUILTIN_HOOKS);
    const iqAuth = scanned("<iq type='get' id='a1'><query xmlns='jabber:iq:auth'/></iq>");
    expect(hooks.fromClient(iqAuth, 'authenticating', handle())).toMatchObject({ kind: 'answer-stanza' });
    expect(hooks.fromClient(iqAuth, 'active', handle())).toBeUndefined();
    const foreign = scanned(
      `<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${Buffer.from('alice@localhost\0bob\0pw').toString('base64')}</auth>`,
    );
    expect(hooks.fromClient(foreign, 'authenticating', handle())).toMatchObject({ kind: 'answer-nonza' });
    expect(hooks.fromClient(foreign, 'authenticated', handle())).toBeUndefined();
  });
});

describe('session limit at bind (RFC 6120 §7.6.2.1)', () => {
  const bind = scanned("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>");

  it('answers a bind with resource-constraint once maxSessions are bound, and lets it through below', () => {
    let bound = 2;
    const hooks = new SessionHooks([
      sessionLimit(
        () => bound,
        () => 2,
      ),
    ]);
    const verdict = hooks.fromClient(bind, 'authenticated', handle());
    expect(verdict?.kind).toBe('answer-stanza');
    const iq = parseElement(verdict?.kind === 'answer-stanza' ? verdict.stanza : '<none/>');
    expect([iq.attrs.type, iq.attrs.id]).toEqual(['error', 'b1']);
    expect(iq.getChild('error')?.getChild('resource-constraint', 'urn:ietf:params:xml:ns:xmpp-stanzas')).toBeDefined();
    bound = 1;
    expect(hooks.fromClient(bind, 'authenticated', handle())).toBeUndefined();
  });

  it('leaves every other element alone, and binds after authentication only', () => {
    const hooks = new SessionHooks([
      sessionLimit(
        () => 10,
        () => 1,
      ),
    ]);
    expect(
      hooks.fromClient(scanned("<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>"), 'authenticated', handle()),
    ).toBeUndefined();
    expect(hooks.fromClient(bind, 'active', handle())).toBeUndefined();
  });
});

describe('failed-login back-off', () => {
  const auth = scanned(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>`);

  it("refuses an <auth/> from an address in back-off with temporary-auth-failure, and lets others' through", () => {
    const failedLogins = new FailedLogins({ maxFailedLogins: 1, backoffMs: 30_000 });
    failedLogins.failed('192.0.2.1', 1000);
    const hooks = new SessionHooks([failedLoginBackoff(failedLogins, () => 2000)]);
    const verdict = hooks.fromClient(auth, 'authenticating', handle());
    expect(verdict).toEqual({
      kind: 'answer-nonza',
      nonza:
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/>" +
        "<text xml:lang='en'>too many failed logins from your address; try again in 29 s</text></failure>",
    });
    expect(hooks.fromClient(auth, 'authenticating', { ...handle(), addressKey: '192.0.2.9' })).toBeUndefined();
  });
});
