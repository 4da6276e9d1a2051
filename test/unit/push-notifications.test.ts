import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { notificationIq, wakesUser } from '../../src/features/push-notification.js';
import { pushNotifications, type PushSettings } from '../../src/features/push-notifications.js';
import { readRegistrations, storageQuery } from '../../src/features/push-registrations.js';
import { SessionHooks, type SessionHandle } from '../../src/session/hooks.js';
import { stanzaKindOf } from '../../src/xml/stanza-bytes.js';
import { parseElement, xml, type Element } from '../../src/xml/element.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const JID = 'alice@example.org/phone';
const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };

/** A session as the hook sees it; what it sends upstream is parsed and recorded. */
function handle(): SessionHandle & { readonly upstream: Element[]; readonly hibernations: number[] } {
  const upstream: Element[] = [];
  const hibernations: number[] = [];
  return {
    sid: 's1',
    addressKey: '192.0.2.1',
    domain: 'example.org',
    jid: JID,
    awaySinceMs: 1,
    log: pino({ level: 'silent' }),
    upstream,
    sendUpstream: (data) => void upstream.push(parseElement(data)),
    serverOffers: () => false,
    holdBack: () => undefined,
    releaseHeld: () => undefined,
    hibernateFor: (ms) => void hibernations.push(ms),
    hibernations,
  };
}

const REGISTRATION = { jid: 'push.example.net', node: 'n1', resource: 'phone', publishOptions: undefined };

/** The answer to the proxy's iq `request` from whom it went to (the user's own account when it has no `to`), as the session hands it to the hook. */
function answerTo(request: Element, type: 'result' | 'error', payload = '', from = request.attrs.to as string | undefined): Buffer {
  const fromAttr = from === undefined ? '' : ` from='${from}'`;
  return Buffer.from(`<iq type='${type}' id='${String(request.attrs.id)}' to='${JID}'${fromAttr}>${payload}</iq>`);
}

/** The push hooks as a session runs them; `toClient` finds the stanza's kind itself. */
function hooksOf(settings: Partial<PushSettings>, now: () => number) {
  const hooks = new SessionHooks(
    pushNotifications(() => ({ enabled: true, intervalMs: 0, hibernationMs: 0, withSender: false, withBody: false, ...settings }), now),
  );
  return {
    bound: (session: SessionHandle) => hooks.bound(session),
    hibernated: (session: SessionHandle, unacked: string[]) =>
      hooks.hibernated(
        session,
        unacked.map((stanza) => Buffer.from(stanza)),
      ),
    fromClient: (...args: Parameters<SessionHooks['fromClient']>) => hooks.fromClient(...args),
    toClient: (bytes: Buffer, delivery: 'live' | 'queued', session: SessionHandle) =>
      hooks.toClient(bytes, stanzaKindOf(bytes), delivery, session),
    handedOff: (session: SessionHandle) => hooks.handedOff(session),
    adopted: (session: SessionHandle, carried: Record<string, unknown>) => hooks.adopted(session, carried),
  };
}

function setUp(settings: Partial<PushSettings> = {}) {
  let nowMs = 1_000_000;
  const hook = hooksOf({ intervalMs: 60_000, ...settings }, () => nowMs);
  const session = handle();
  hook.bound(session);
  const read = session.upstream.shift()!;
  expect(hook.toClient(answerTo(read, 'result', storageQuery([REGISTRATION]).toString()), 'live', session)).toBeUndefined();
  const queue = (stanza: string) => hook.toClient(Buffer.from(stanza), 'queued', session);
  return { hook, session, queue, advance: (ms: number) => (nowMs += ms) };
}

const MESSAGE = "<message from='carol@example.org/pc' type='chat'><body>hi</body></message>";

/** The client's enable of node `n1-of-<i>`, id `e<i>`. */
const enable = (i: number) =>
  scanFragment(
    Buffer.from(`<iq type='set' id='e${i}'><enable xmlns='urn:xmpp:push:0' jid='push.example.net' node='n1-of-${i}'/></iq>`),
    LIMITS,
  );

describe('push notifications while hibernating', () => {
  it('publishes one notification per interval while the queue grows, counting what arrived meanwhile', () => {
    const { session, queue, advance } = setUp({ withSender: true });
    expect(queue(MESSAGE)?.toString()).toBe(MESSAGE);
    const [first] = session.upstream.splice(0);
    expect(first?.attrs.to).toBe('push.example.net');
    const form = first!.getChild('pubsub')!.getChild('publish')!.getChild('item')!.getChild('notification')!.getChild('x')!;
    const fields = Object.fromEntries(form.getChildren('field').map((f) => [f.attrs.var, f.getChildText('value')]));
    expect(fields).toEqual({
      FORM_TYPE: 'urn:xmpp:push:summary',
      'message-count': '1',
      'last-message-sender': 'carol@example.org',
      'last-message-body': 'New Message!',
    });

    queue(MESSAGE);
    queue("<presence from='carol@example.org/pc'/>");
    expect(session.upstream, 'within the interval').toEqual([]);
    advance(60_000);
    queue(MESSAGE);
    expect(session.upstream.map((iq) => iq.getChild('pubsub')!.toString())).toHaveLength(1);
    expect(session.upstream[0]!.toString()).toContain('<value>3</value>');
  });

  it('counts what the client had not acknowledged, and keeps the session longer', () => {
    const { hook, session, queue } = setUp({ hibernationMs: 259_200_000 });
    hook.hibernated(session, ["<presence from='carol@example.org/pc'/>"]);
    expect(session.hibernations, 'longer while not woken').toEqual([259_200_000]);
    expect(session.upstream, 'nothing that wakes').toEqual([]);
    queue(MESSAGE);
    expect(session.upstream).toHaveLength(1);
    expect(session.hibernations, 'kept longer also once woken: ending would bounce what it holds').toEqual([259_200_000]);

    (session as { awaySinceMs: number }).awaySinceMs = 2;
    hook.hibernated(session, [MESSAGE, MESSAGE]);
    expect(session.upstream[1]!.toString(), 'the unacked ones, at once').toContain('<field var="message-count"><value>2</value></field>');
  });

  it('counts afresh when the client went away again', () => {
    const { session, queue } = setUp({ intervalMs: 60_000 });
    queue(MESSAGE);
    queue(MESSAGE);
    expect(session.upstream.splice(0)[0]!.toString()).toContain('<field var="message-count"><value>1</value></field>');
    // Resumed, then lost again: a new hibernation, a new count, no interval carried over.
    (session as { awaySinceMs: number }).awaySinceMs = 2;
    queue(MESSAGE);
    expect(session.upstream[0]!.toString()).toContain('<field var="message-count"><value>1</value></field>');
  });

  it('removes a registration the app server says is gone, and keeps one it answers with a passing error', () => {
    const { hook, session, queue, advance } = setUp({ intervalMs: 0 });
    const error = (condition: string) => `<error type='cancel'><${condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>`;
    queue(MESSAGE);
    const timedOut = session.upstream.shift()!;
    expect(hook.toClient(answerTo(timedOut, 'error', error('remote-server-timeout')), 'queued', session)).toBeUndefined();
    expect(session.upstream, 'a passing error changes nothing').toEqual([]);

    advance(1);
    queue(MESSAGE);
    const gone = session.upstream.shift()!;
    expect(hook.toClient(answerTo(gone, 'error', error('item-not-found')), 'queued', session)).toBeUndefined();
    const reread = session.upstream.shift()!;
    expect(reread.attrs.type).toBe('get');
    hook.toClient(answerTo(reread, 'result', storageQuery([REGISTRATION]).toString()), 'queued', session);
    const written = session.upstream.shift()!;
    expect(written.attrs.type).toBe('set');
    expect(readRegistrations(written.getChild('query'))).toEqual([]);
    expect(hook.toClient(answerTo(written, 'result'), 'queued', session)).toBeUndefined();
    queue(MESSAGE);
    expect(session.upstream, 'no registration left').toEqual([]);
  });

  it('never publishes for what would not wake the user, nor for registrations of another resource', () => {
    const { session, queue } = setUp();
    queue("<message from='carol@example.org/pc'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    queue("<presence from='carol@example.org/pc'/>");
    expect(session.upstream).toEqual([]);
    const other = hooksOf({}, () => 0);
    const elsewhere = handle();
    other.bound(elsewhere);
    const read = elsewhere.upstream.shift()!;
    other.toClient(answerTo(read, 'result', storageQuery([{ ...REGISTRATION, resource: 'tablet' }]).toString()), 'live', elsewhere);
    other.toClient(Buffer.from(MESSAGE), 'queued', elsewhere);
    expect(elsewhere.upstream).toEqual([]);
  });
});

describe('push notifications across an upgrade (README, Upgrading)', () => {
  it('carry the registrations and the counts to the next process: no read of private storage, the interval kept', () => {
    const { hook, session, queue, advance } = setUp({ withBody: true });
    const publishOptions = xml(
      'x',
      { xmlns: 'jabber:x:data', type: 'submit' },
      xml('field', { var: 'secret' }, xml('value', {}, 's3cret')),
    );
    // The registration as stored, with publish-options: what the app server needs to accept a notification.
    hook.fromClient(
      scanFragment(
        Buffer.from(
          `<iq type='set' id='e1'><enable xmlns='urn:xmpp:push:0' jid='push.example.net' node='n1'>${publishOptions.toString()}</enable></iq>`,
        ),
        LIMITS,
      ),
      'active',
      session,
    );
    const read = session.upstream.shift()!;
    hook.toClient(answerTo(read, 'result', storageQuery([REGISTRATION]).toString()), 'live', session);
    const write = session.upstream.shift()!;
    hook.toClient(answerTo(write, 'result'), 'live', session);
    queue(MESSAGE);
    queue(MESSAGE);
    expect(session.upstream.splice(0), 'one notification, the second held by the interval').toHaveLength(1);

    const carried = JSON.parse(JSON.stringify(hook.handedOff(session))) as Record<string, unknown>;
    let nowMs = 1_000_000 + 30_000;
    const next = hooksOf({ intervalMs: 60_000, withBody: true }, () => nowMs);
    const adopted = handle();
    next.adopted(adopted, carried);
    expect(adopted.upstream, 'nothing read from private storage, nothing notified within the interval').toEqual([]);
    next.toClient(Buffer.from(MESSAGE), 'queued', adopted);
    expect(adopted.upstream).toEqual([]);
    nowMs += 30_000;
    advance(60_000);
    next.toClient(Buffer.from(MESSAGE), 'queued', adopted);
    const [notification] = adopted.upstream.splice(0);
    expect(notification?.attrs.to).toBe('push.example.net');
    expect(notification?.toString(), 'two before the upgrade, two after').toContain('<value>4</value>');
    expect(notification?.getChild('pubsub')?.getChild('publish-options')?.toString()).toContain('s3cret');
  });

  it('leave the state behind when what arrives cannot be read: registrations are read again at the next bind', () => {
    const next = hooksOf({}, () => 0);
    const adopted = handle();
    next.adopted(adopted, { 'push-notifications': { registrations: 'not a list', wakers: 1, notified: 0 } });
    next.toClient(Buffer.from(MESSAGE), 'queued', adopted);
    expect(adopted.upstream).toEqual([]);
    expect(next.handedOff(adopted), 'a session that knows no registrations carries nothing').toEqual({});
  });
});

describe('the client side of XEP-0357', () => {
  it("answers enable once the registration is stored, and adds urn:xmpp:push:0 to its own account's disco#info only", () => {
    const { hook, session } = setUp();
    const enable = scanFragment(
      Buffer.from("<iq type='set' id='e1'><enable xmlns='urn:xmpp:push:0' jid='push.example.net' node='n2'/></iq>"),
      LIMITS,
    );
    expect(hook.fromClient(enable, 'active', session)).toEqual({ kind: 'consumed' });
    const read = session.upstream.shift()!;
    expect(hook.toClient(answerTo(read, 'result', storageQuery([REGISTRATION]).toString()), 'live', session)).toBeUndefined();
    const write = session.upstream.shift()!;
    expect(readRegistrations(write.getChild('query')).map((r) => r.node)).toEqual(['n1', 'n2']);
    expect(hook.toClient(answerTo(write, 'result'), 'live', session)?.toString()).toBe(`<iq type='result' id='e1' to='${JID}'></iq>`);

    const disco = (from: string, node = '') =>
      Buffer.from(
        `<iq type='result' id='d' from='${from}'><query xmlns='http://jabber.org/protocol/disco#info'${node}><identity category='account' type='registered'/></query></iq>`,
      );
    expect(hook.toClient(disco('alice@example.org'), 'live', session)?.toString()).toContain('<feature var="urn:xmpp:push:0"/>');
    expect(hook.toClient(disco('bob@example.org'), 'live', session)?.toString()).not.toContain('urn:xmpp:push:0');
    expect(hook.toClient(disco('alice@example.org', " node='x'"), 'live', session)?.toString()).not.toContain('urn:xmpp:push:0');
  });

  it("takes an answer only from whom the request went to: a contact's forgery reaches the client unchanged", () => {
    const { hook, session, queue } = setUp();
    queue(MESSAGE);
    const publish = session.upstream.shift()!;
    const forged = answerTo(
      publish,
      'error',
      "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
      'mallory@example.org/x',
    );
    expect(hook.toClient(forged, 'queued', session)).toBe(forged);
    expect(session.upstream, 'the registration stays').toEqual([]);
    const enable = scanFragment(
      Buffer.from("<iq type='set' id='e1'><enable xmlns='urn:xmpp:push:0' jid='p.example' node='n'/></iq>"),
      LIMITS,
    );
    hook.fromClient(enable, 'active', session);
    const read = session.upstream.shift()!;
    const fake = answerTo(read, 'result', '', 'mallory@example.org');
    expect(hook.toClient(fake, 'live', session), 'not the server: passed on, the read still pending').toBe(fake);
    expect(hook.toClient(answerTo(read, 'result', '', 'alice@example.org'), 'live', session)).toBeUndefined();
    expect(String(read.attrs.id)).toMatch(/^smacks-proxy-push-[0-9a-f-]{36}$/);
  });

  it('runs registration changes one after another, so that a pipelined second enable keeps the first', () => {
    const { hook, session } = setUp();
    hook.fromClient(enable(1), 'active', session);
    hook.fromClient(enable(2), 'active', session);
    const firstRead = session.upstream.shift()!;
    expect(session.upstream, 'the second waits for the first').toEqual([]);
    hook.toClient(answerTo(firstRead, 'result', storageQuery([REGISTRATION]).toString()), 'live', session);
    const firstWrite = session.upstream.shift()!;
    const stored = readRegistrations(firstWrite.getChild('query'));
    expect(stored.map((r) => r.node)).toEqual(['n1', 'n1-of-1']);
    expect(hook.toClient(answerTo(firstWrite, 'result'), 'live', session)?.toString()).toContain("id='e1'");
    const secondRead = session.upstream.shift()!;
    hook.toClient(answerTo(secondRead, 'result', storageQuery(stored).toString()), 'live', session);
    expect(readRegistrations(session.upstream.shift()!.getChild('query')).map((r) => r.node)).toEqual(['n1', 'n1-of-1', 'n1-of-2']);
  });

  it('refuses an enable while too many changes wait, and keeps at most 5 registrations, the newest', () => {
    const { hook, session } = setUp();
    for (let i = 0; i < 9; i++) expect(hook.fromClient(enable(i), 'active', session)).toEqual({ kind: 'consumed' });
    const refused = hook.fromClient(enable(9), 'active', session);
    expect(refused && 'stanza' in refused ? refused.stanza : '').toContain('resource-constraint');

    const read = session.upstream.shift()!;
    const six = [1, 2, 3, 4, 5, 6].map((i) => ({ ...REGISTRATION, node: `old${i}` }));
    hook.toClient(answerTo(read, 'result', storageQuery(six).toString()), 'live', session);
    const written = readRegistrations(session.upstream.shift()!.getChild('query')).map((r) => r.node);
    expect(written).toEqual(['old3', 'old4', 'old5', 'old6', 'n1-of-0']);
  });

  it("refuses the user's own account as an app server", () => {
    const { hook, session } = setUp();
    const own = scanFragment(
      Buffer.from("<iq type='set' id='o'><enable xmlns='urn:xmpp:push:0' jid='Alice@example.org' node='n'/></iq>"),
      LIMITS,
    );
    const verdict = hook.fromClient(own, 'active', session);
    expect(verdict && 'stanza' in verdict ? verdict.stanza : '').toContain('bad-request');
  });

  it('an app server that never answers holds nothing up: the oldest notification gives way', () => {
    const { hook, session, queue } = setUp({ intervalMs: 0 });
    for (let i = 0; i < 20; i++) queue(MESSAGE);
    expect(session.upstream.filter((iq) => iq.getChild('pubsub') !== undefined)).toHaveLength(20);
    session.upstream.splice(0);
    expect(hook.fromClient(enable(1), 'active', session)).toEqual({ kind: 'consumed' });
    expect(session.upstream[0]!.attrs.type).toBe('get');
    // The answer of a notification that gave way comes late: it is the proxy's, not the client's.
    const late = Buffer.from(`<iq type='result' id='smacks-proxy-push-gone' from='push.example.net' to='${JID}'/>`);
    expect(hook.toClient(late, 'live', session)).toBeUndefined();
  });

  it('sends, at the end of the interval, a notification the interval held back', () => {
    vi.useFakeTimers();
    try {
      const { session, queue, advance } = setUp({ intervalMs: 60_000 });
      queue(MESSAGE);
      advance(10_000);
      queue(MESSAGE);
      expect(session.upstream).toHaveLength(1);
      advance(50_000);
      vi.advanceTimersByTime(50_000);
      expect(session.upstream).toHaveLength(2);
      expect(session.upstream[1]!.toString()).toContain('<field var="message-count"><value>2</value></field>');
      vi.advanceTimersByTime(120_000);
      expect(session.upstream, 'nothing new: nothing more').toHaveLength(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('leaves push iqs to another entity, and everything when disabled, to the legacy server', () => {
    const { hook, session } = setUp();
    const toOther = scanFragment(
      Buffer.from("<iq type='set' id='e1' to='bob@example.org'><enable xmlns='urn:xmpp:push:0' jid='p' node='n'/></iq>"),
      LIMITS,
    );
    expect(hook.fromClient(toOther, 'active', session)).toBeUndefined();
    const off = hooksOf({ enabled: false }, () => 0);
    const mine = scanFragment(Buffer.from("<iq type='set' id='e2'><enable xmlns='urn:xmpp:push:0' jid='p' node='n'/></iq>"), LIMITS);
    expect(off.fromClient(mine, 'active', session)).toBeUndefined();
  });
});

describe('wakesUser and the notification', () => {
  it.each([
    ["<message type='chat'><body>x</body></message>", true],
    ["<message><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", true],
    ["<message><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", true],
    ["<presence type='subscribe'/>", true],
    ["<message type='groupchat'><body>x</body></message>", false],
    ["<message type='error'><body>x</body></message>", false],
    ["<message><received xmlns='urn:xmpp:receipts' id='m'/></message>", false],
    ['<presence/>', false],
    ["<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>", false],
  ])('%s → %s', (stanza, wakes) => {
    expect(wakesUser(parseElement(stanza))).toBe(wakes);
  });

  it('keeps publish-options and round-trips registrations through private storage', () => {
    const options = xml('x', { xmlns: 'jabber:x:data', type: 'submit' }, xml('field', { var: 'secret' }, xml('value', {}, 's3')));
    const registration = { jid: 'p.example', node: 'n', resource: 'r', publishOptions: options };
    const [read] = readRegistrations(parseElement(storageQuery([registration]).toString()));
    expect(read).toMatchObject({ jid: 'p.example', node: 'n', resource: 'r' });
    expect(read!.publishOptions?.toString()).toBe(options.toString());
    expect(notificationIq(read!, { messageCount: 2 }).getChild('pubsub')!.getChild('publish-options')!.toString()).toContain('s3');
  });
});
