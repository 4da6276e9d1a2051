/**
 * The Session state machine against in-memory peers, in the unit rig (session-rig.ts). What the
 * end-to-end files can only approach with real time (an ack arriving 1 ms before its deadline, a
 * resume racing the expiry timer) is exact here.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LINGER_TIMING } from '../../src/session/lingering-upstream.js';
import { clientStateIndication } from '../../src/features/client-state-indication.js';
import type { SessionSettings } from '../../src/session/session-deps.js';
import { readSnapshot, writeSnapshot } from '../../src/session/hibernated-snapshot.js';
import { Socket } from 'node:net';
import type { ReleasedUpstream } from '../../src/upstream/upstream-link.js';
import { parseElement } from '../../src/xml/element.js';
import { NS } from '../../src/xml/namespaces.js';
import { STREAM_CLOSE } from '../../src/xml/stream-header.js';
import { ENABLE_WAIT_MS } from '../../src/session/session-setup.js';
import { T0, DOMAIN, USER, SM, SETTINGS, H, D, settle, advance, Rig, Connection } from '../support/session-rig.js';

let rig: Rig;

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(T0);
  rig = new Rig();
});

afterEach(() => {
  vi.useRealTimers();
  // SessionCore.guard turns a bug into a closed session; a test must not pass because of one.
  expect(rig.errors).toEqual([]);
});

describe('Session: a stream header the proxy refuses', () => {
  it('names a 16 KB `to` or `version` in its error text and log only clipped', async () => {
    for (const [attr, condition] of [
      ['to', 'host-unknown'],
      ['version', 'unsupported-version'],
    ] as const) {
      const c = rig.connect();
      const to = attr === 'to' ? 'x'.repeat(16_000) : DOMAIN;
      const version = attr === 'version' ? '9'.repeat(16_000) : '1.0';
      c.client.write(`<stream:stream xmlns='${NS.client}' xmlns:stream='${NS.stream}' to='${to}' version='${version}'>`);
      await settle();
      expect(c.client.failure?.condition).toBe(condition);
      expect(c.client.failure!.message.length).toBeLessThan(200);
      expect(c.client.failure!.message).toContain('(15936 more characters)');
    }
  });
});

describe('Session: acks the client asks for (XEP-0198 §4)', () => {
  it('answers <r/> at once, with h counting only message, presence and iq in jabber:client', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm();
    c.ackRequest();
    expect(c.client.last()).toBe(`<a xmlns='${SM}' h='0'/>`);

    c.send(`<message to='alice@${DOMAIN}' id='c1' type='chat'><body>hi</body></message>`);
    c.send(`<presence/>`);
    c.send(`<iq type='get' id='c2' to='${DOMAIN}'><ping xmlns='${NS.ping}'/></iq>`);
    // Relayed, but not stanzas: a nonza, and an element with a stanza's name in another namespace.
    c.client.write(`<custom xmlns='urn:example:nonza'/>`);
    c.client.write(`<message xmlns='urn:example:not-a-stanza'/>`);
    c.ackRequest();
    expect(c.client.last()).toBe(`<a xmlns='${SM}' h='3'/>`);

    const relayed = c.upstream.sent.slice(-5).map((written) => parseElement(written).name);
    expect(relayed).toEqual(['message', 'presence', 'iq', 'custom', 'message']);
  });
});

describe('Session: when the proxy sends <r/>', () => {
  it('with maxUnackedStanzas 0: one <r/> per burst, after it, at most one outstanding; an <a/> clears it', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm();
    const burst = (ids: string[]): void => ids.forEach((id) => c.stanzaFromServer(c.messageTo(id)));

    burst(['m1', 'm2', 'm3']);
    expect(c.client.requests()).toBe(0); // decided once the burst is written, not per stanza
    await settle();
    expect(c.client.requests()).toBe(1);
    expect(c.client.received.slice(-4).map((written) => parseElement(written).name)).toEqual(['message', 'message', 'message', 'r']);

    burst(['m4', 'm5']);
    await settle();
    expect(c.client.requests()).toBe(1); // the first is still outstanding

    c.ack(3);
    await settle();
    expect(c.client.requests()).toBe(2); // answered, and m4, m5 are unacked

    c.ack(5);
    await settle();
    expect(c.client.requests()).toBe(2); // nothing unacked

    burst(['m6']);
    await settle();
    expect(c.client.requests()).toBe(3);
  });

  it('with maxUnackedStanzas 2: only once more than 2 are unacked', async () => {
    rig = new Rig({ maxUnackedStanzas: 2 });
    const c = await rig.connect().openAndBind();
    c.enableSm();
    c.stanzaFromServer(c.messageTo('m1'));
    c.stanzaFromServer(c.messageTo('m2'));
    await settle();
    expect(c.client.requests()).toBe(0);
    c.stanzaFromServer(c.messageTo('m3'));
    await settle();
    expect(c.client.requests()).toBe(1);
  });
});

describe('Session: maxAckDelayMs', () => {
  it('an <r/> unanswered for maxAckDelayMs emits ackDelayed, drops the link, and the session hibernates', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    expect(c.client.requests()).toBe(1);

    await advance(D - 1);
    expect(rig.seen.ackDelayed).toEqual([]);
    expect(c.client.destroyedBecause).toBeUndefined();

    await advance(1);
    expect(rig.seen.ackDelayed).toEqual([{ sid: c.session.sid, jid: c.jid, unacked: 1, waitedMs: D }]);
    expect(c.client.destroyedBecause).toBe('ack delayed');
    expect(c.session.stateName).toBe('hibernating');
    expect(rig.seen.hibernationStarted).toMatchObject([{ sid: c.session.sid, queued: 1, timeoutMs: H }]);
  });

  it('the timer re-checks: an <a/> 1 ms before it fires keeps the link', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    await advance(D - 1);
    c.ack(1);
    await advance(1);
    await advance(3 * D);
    expect(rig.seen.ackDelayed).toEqual([]);
    expect(c.client.destroyedBecause).toBeUndefined();
    expect(c.session.stateName).toBe('active');
  });

  it('the delay runs from the newest <r/>: an answered one does not shorten the next', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('m1'));
    await settle(); // <r/> at T0
    await advance(D - 1000);
    c.ack(1);
    c.stanzaFromServer(c.messageTo('m2'));
    await settle(); // <r/> at T0 + D - 1000
    expect(c.client.requests()).toBe(2);

    await advance(1000); // the first request's deadline: the timer finds the newer one not overdue
    await advance(D - 1000 - 1);
    expect(rig.seen.ackDelayed).toEqual([]);
    await advance(1);
    expect(rig.seen.ackDelayed).toEqual([{ sid: c.session.sid, jid: c.jid, unacked: 1, waitedMs: D }]);
    expect(c.session.stateName).toBe('hibernating');
  });
});

describe('Session: a full unacked queue (README, Limits)', () => {
  const LIMIT = 3;

  beforeEach(() => {
    rig = new Rig({ maxQueueStanzas: LIMIT });
  });

  /** An active resumable session; the legacy server sends m1..m`count`, the client acks nothing. */
  async function flooded(count: number): Promise<{ c: Connection; smId: string }> {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    for (let i = 1; i <= count; i++) c.stanzaFromServer(c.messageTo(`m${i}`));
    await settle();
    return { c, smId };
  }

  const messageIds = (received: string[]): unknown[] =>
    received.filter((xml) => xml.startsWith('<message')).map((xml) => parseElement(xml).attrs.id);

  it('keeps a connected session: the rest waits, the legacy server is read no further, and acks let it through in order', async () => {
    const { c } = await flooded(5);
    expect(c.session.stateName).toBe('active');
    expect(messageIds(c.client.received)).toEqual(['m1', 'm2', 'm3']);
    expect(c.upstream.paused).toBe(true);
    expect(c.client.requests(), 'the client is asked for an ack').toBe(1);

    c.ack(2);
    expect(messageIds(c.client.received)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(c.upstream.paused, 'nothing waits any more').toBe(false);

    // Full again: the next one waits, and reading stops again.
    c.stanzaFromServer(c.messageTo('m6'));
    expect(messageIds(c.client.received)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(c.upstream.paused).toBe(true);
    c.ack(5);
    expect(messageIds(c.client.received)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5', 'm6']);
    expect(c.upstream.paused).toBe(false);
    expect(c.client.failure).toBeUndefined();
  });

  it('a stanza larger than maxQueueBytes could ever hold ends the session, answered (waiting would never end)', async () => {
    rig = new Rig({ maxQueueBytes: 200 });
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('big', `alice@${DOMAIN}/desk`, 'x'.repeat(300)));
    await settle();
    expect(c.client.failure?.condition).toBe('resource-constraint');
    expect(c.session.stateName).toBe('closed');
    const bounce = c.upstream.sent
      .map((xml) => (xml.startsWith('<message') ? parseElement(xml) : undefined))
      .find((el) => el !== undefined);
    expect([bounce?.attrs.type, bounce?.attrs.id]).toEqual(['error', 'big']);
  });

  it('a hibernating session with stanzas waiting overflows: it ends and answers all of them, queued first, in order', async () => {
    const { c, smId } = await flooded(5);
    c.client.drop();
    expect(c.session.stateName).toBe('closed');
    const bounces = c.upstream.sent.filter((xml) => xml.startsWith('<message')).map((xml) => parseElement(xml));
    expect(bounces.map((b) => [b.attrs.type, b.attrs.id])).toEqual([
      ['error', 'm1'],
      ['error', 'm2'],
      ['error', 'm3'],
      ['error', 'm4'],
      ['error', 'm5'],
    ]);
    expect(rig.registry.recallEnded(smId, Date.now())).toMatchObject({ reason: 'queue-overflow' });
    expect(rig.seen.hibernationEnded).toMatchObject([{ smId, reason: 'queue-overflow' }]);
  });

  it('a resume that takes over the connection gets the replay, then what waited, then reading goes on', async () => {
    const { c, smId } = await flooded(5);
    const c2 = rig.connect();
    await c2.authenticate();
    c2.resume(smId, 1);
    const resumedAt = c2.client.received.indexOf(`<resumed xmlns='${SM}' previd='${smId}' h='0'/>`);
    expect(resumedAt).toBeGreaterThan(-1);
    expect(messageIds(c2.client.received.slice(resumedAt))).toEqual(['m2', 'm3', 'm4']);
    expect(c.upstream.paused, 'm5 still waits: the queue holds m2, m3, m4').toBe(true);
    c2.ack(4);
    expect(messageIds(c2.client.received.slice(resumedAt))).toEqual(['m2', 'm3', 'm4', 'm5']);
    expect(c.upstream.paused).toBe(false);
    expect(c.client.failure?.condition).toBe('conflict');
  });
});

describe('Session: a client held back (XEP-0352, README, Client state indication)', () => {
  const CSI = 'urn:xmpp:csi:0';
  const presenceFrom = (c: Connection, who: string) => `<presence from='${who}@${DOMAIN}/x' to='${c.jid}'/>`;
  /** A rig whose sessions run the CSI hook, offered. */
  const csiRig = (settings: Partial<SessionSettings> = {}) =>
    new Rig(settings, [
      clientStateIndication(
        () => true,
        () => Date.now(),
      ),
    ]);
  const composingFrom = (c: Connection, id: string) =>
    `<message from='alice@${DOMAIN}/desk' to='${c.jid}' id='${id}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>`;

  it('releases what is held once it reaches the queue limits, counted then, in order', async () => {
    rig = csiRig({ maxQueueStanzas: 3 });
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.send(`<inactive xmlns='${CSI}'/>`);
    c.stanzaFromServer(presenceFrom(c, 'carol'));
    c.stanzaFromServer(presenceFrom(c, 'dave'));
    expect(c.client.received.filter((xml) => xml.startsWith('<presence'))).toEqual([]);
    c.ackRequest();
    expect(c.client.last(), 'nothing held is counted').toBe(`<a xmlns='${SM}' h='0'/>`);
    c.stanzaFromServer(presenceFrom(c, 'erin'));
    const released = c.client.received.filter((xml) => xml.startsWith('<presence')).map((xml) => parseElement(xml).attrs.from);
    expect(released).toEqual([`carol@${DOMAIN}/x`, `dave@${DOMAIN}/x`, `erin@${DOMAIN}/x`]);
    c.ack(3);
    expect(c.client.failure, 'the client acks exactly what it got').toBeUndefined();
  });

  it('releases what is held when the client sends a stanza (its radio is awake), and goes on holding', async () => {
    rig = csiRig();
    const c = await rig.connect().openAndBind();
    c.send(`<inactive xmlns='${CSI}'/>`);
    c.stanzaFromServer(presenceFrom(c, 'carol'));
    const presences = () => c.client.received.filter((xml) => xml.startsWith('<presence')).map((xml) => parseElement(xml).attrs.from);
    expect(presences()).toEqual([]);
    c.send(`<message to='carol@${DOMAIN}' type='chat'><body>hi</body></message>`);
    expect(presences()).toEqual([`carol@${DOMAIN}/x`]);
    c.stanzaFromServer(presenceFrom(c, 'dave'));
    expect(presences(), 'still inactive').toEqual([`carol@${DOMAIN}/x`]);
  });

  it('hands what it holds back, after the unacknowledged, to a new login of the resource', async () => {
    rig = csiRig();
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('m1', `alice@${DOMAIN}/desk`, 'one'));
    c.send(`<inactive xmlns='${CSI}'/>`);
    c.stanzaFromServer(presenceFrom(c, 'carol'));
    const c2 = rig.connect();
    await c2.authenticate();
    c2.client.write(`<iq type='set' id='bind_2'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`);
    c.upstream.closeStream();
    await settle();
    await c2.boundWithoutEnable(c.jid);
    const received = c2.client.elements();
    const after = received.slice(received.findIndex((el) => el.attrs.id === 'bind_2') + 1);
    expect(after.map((el) => [el.name, el.attrs.id ?? el.attrs.from])).toEqual([
      ['message', 'm1'],
      ['presence', `carol@${DOMAIN}/x`],
    ]);
  });

  it('answers what is held when a session without stream management ends, as unacknowledged stanzas', async () => {
    rig = csiRig();
    const c = await rig.connect().openAndBind();
    c.send(`<inactive xmlns='${CSI}'/>`);
    c.stanzaFromServer(composingFrom(c, 'cs1'));
    expect(c.client.received.filter((xml) => xml.startsWith('<message'))).toEqual([]);
    c.client.drop();
    await settle();
    expect(c.session.stateName).toBe('closed');
    const bounced = c.upstream.sent.filter((xml) => xml.startsWith('<message')).map((xml) => parseElement(xml));
    expect(bounced.map((b) => [b.attrs.type, b.attrs.id])).toEqual([['error', 'cs1']]);
  });
});

describe('Session: handed to the next process (an upgrade, README Upgrading)', () => {
  /** A resumable session with three unacked stanzas and its presence shown, whose client vanished. */
  async function hibernating(): Promise<{ c: Connection; smId: string }> {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.send(`<presence/>`);
    c.stanzaFromServer(c.messageTo('m1'));
    c.stanzaFromServer(c.messageTo('m2'));
    c.send(`<a xmlns='${SM}' h='1'/>`);
    c.stanzaFromServer(c.messageTo('m3'));
    await settle();
    c.client.drop();
    expect(c.session.stateName).toBe('hibernating');
    return { c, smId };
  }

  const released = (): ReleasedUpstream => ({ socket: new Socket(), serverHeader: Buffer.from(`<stream:stream xmlns='${NS.client}'>`) });

  it('leaves without a trace here: no byte upstream, no event, no memory, not resumable here any more', async () => {
    const { c, smId } = await hibernating();
    const written = c.upstream.sent.length;
    const endedBefore = rig.seen.hibernationEnded.length;
    c.upstream.releasable = released();
    const handed = c.session.handOff();
    expect(handed?.upstream).toBe(c.upstream.releasable);
    expect(handed?.session).toMatchObject({
      sid: c.session.sid,
      jid: c.jid,
      domain: DOMAIN,
      presenceShown: true,
      sinceMs: T0,
      expiresAtMs: T0 + H,
    });
    expect(handed?.session.serverFeatures).toContain(NS.bind);
    expect(handed?.session.sm).toMatchObject({ id: smId, h: 1, queue: { sent: 3, acked: 1 } });
    expect(c.session.stateName).toBe('closed');
    expect(c.upstream.sent.length).toBe(written);
    expect(rig.seen.hibernationEnded.length).toBe(endedBefore);
    expect(rig.seen.sessionEnded).toEqual([]);
    expect(rig.registry.findResumable(smId)).toBeUndefined();
    expect(rig.registry.recallEnded(smId, Date.now())).toBeUndefined();
    expect([rig.registry.size, rig.budget.usedBytes]).toEqual([0, 0]);
  });

  it('stays when it cannot go now: not resumable, or its upstream stream refuses (a TLS hop, an element half read)', async () => {
    const notResumable = await rig.connect().openAndBind();
    notResumable.enableSm();
    notResumable.upstream.releasable = released();
    expect(notResumable.session.handOff()).toBeUndefined();
    expect(notResumable.session.stateName).toBe('active');

    const { c, smId } = await hibernating();
    expect(c.session.handOff()).toBeUndefined();
    expect(c.session.stateName).toBe('hibernating');
    expect(rig.registry.findResumable(smId)).toBe(c.session);
  });

  it('takes an attached session with its client link, still open but no longer the session: what the client sends then is not counted', async () => {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.send(`<presence/>`);
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    c.upstream.releasable = released();
    const handed = c.session.handOff();
    expect(handed?.link).toBe(c.client);
    expect(c.client.ended, 'dropped by the caller once the next process holds the session').toBe(false);
    expect(handed?.session.sm).toMatchObject({ id: smId, h: 1, queue: { sent: 1, acked: 0 } });
    expect(rig.seen.hibernationStarted).toMatchObject([{ smId }]);
    const written = c.upstream.sent.length;
    c.send(`<message to='alice@${DOMAIN}' id='late'/>`);
    expect(c.upstream.sent.length).toBe(written);
    expect(c.session.stateName).toBe('closed');
  });

  it('resumes at the next process with the exact replay, its expiry counted on from the snapshot', async () => {
    const { c, smId } = await hibernating();
    c.upstream.releasable = released();
    const handed = readSnapshot(JSON.parse(JSON.stringify(writeSnapshot(c.session.handOff()!.session))));
    await advance(1_000);

    const next = new Rig();
    const adopted = next.adopt(handed);
    expect(adopted.session.stateName).toBe('hibernating');
    expect(adopted.session.summary()).toMatchObject({ sid: c.session.sid, jid: c.jid, hibernatingSinceMs: T0, queued: 2 });
    expect(adopted.upstream.keepaliveMs).toBe(SETTINGS.upstreamKeepaliveMs);
    adopted.upstream.write(c.messageTo('m4'));

    const back = next.connect();
    await back.authenticate();
    back.resume(smId, 1);
    const resumedAt = back.client.received.indexOf(`<resumed xmlns='${SM}' previd='${smId}' h='1'/>`);
    expect(resumedAt).toBeGreaterThan(-1);
    const replay = back.client.received.slice(resumedAt + 1).map((xml) => parseElement(xml));
    expect(replay.map((el) => [el.name, el.attrs.id])).toEqual([
      ['message', 'm2'],
      ['message', 'm3'],
      ['message', 'm4'],
      ['r', undefined],
    ]);
    // The client's stanzas go to the adopted stream: the one the user logged in on.
    back.send(`<message to='alice@${DOMAIN}' id='out'/>`);
    expect(adopted.upstream.sent.at(-1)).toContain("id='out'");
    expect(next.errors).toEqual([]);
  });

  it('a resume of a session in the other process gets no answer: the connection is dropped, the client connects again', async () => {
    rig.registry.expectArrivals(['on-its-way']);
    const c = rig.connect();
    await c.authenticate();
    c.resume('on-its-way', 0);
    expect(c.client.ended, 'dropped').toBe(true);
    expect(
      c.client.received.some((xml) => xml.includes('<failed')),
      'no <failed/>',
    ).toBe(false);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ reason: 'moved' });
  });

  it('expires at the next process when the snapshot said, answering its queue and saying the user is gone', async () => {
    const { c } = await hibernating();
    c.upstream.releasable = released();
    const handed = c.session.handOff()!.session;
    await advance(H - 10);
    const next = new Rig();
    const adopted = next.adopt(handed);
    await advance(9);
    expect(adopted.session.stateName).toBe('hibernating');
    await advance(1);
    expect(adopted.session.stateName).toBe('closed');
    await advance(LINGER_TIMING.quietMs);
    const written = adopted.upstream.sent.map((xml) => (xml === STREAM_CLOSE ? xml : parseElement(xml)));
    expect(written.map((el) => (typeof el === 'string' ? el : [el.name, el.attrs.type, el.attrs.id]))).toEqual([
      ['message', 'error', 'm2'],
      ['message', 'error', 'm3'],
      ['presence', 'unavailable', undefined],
      STREAM_CLOSE,
    ]);
    expect(next.seen.hibernationEnded).toMatchObject([{ reason: 'expired', hibernatedMs: H }]);
  });
});

describe('Session: hibernation expiry', () => {
  /** An active resumable session with three unacked stanzas, whose client then vanished. */
  async function hibernatingWithUnacked(): Promise<{ c: Connection; smId: string }> {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.send(`<presence/>`); // inbound h = 1
    c.stanzaFromServer(c.messageTo('m1', `alice@${DOMAIN}/desk`, 'one'));
    c.stanzaFromServer(`<iq from='bob@${DOMAIN}/lap' to='${c.jid}' id='q1' type='get'><query xmlns='jabber:iq:version'/></iq>`);
    c.stanzaFromServer(`<presence from='carol@${DOMAIN}/x' to='${c.jid}'/>`);
    await settle();
    c.client.drop();
    expect(c.session.stateName).toBe('hibernating');
    return { c, smId };
  }

  it('after hibernationMs: unacked stanzas answered to their senders, the upstream closed, hibernationEnded expired', async () => {
    const { c, smId } = await hibernatingWithUnacked();
    c.stanzaFromServer(c.messageTo('m2', `dave@${DOMAIN}/y`, 'two'));
    expect(rig.seen.stanzaQueuedWhileHibernating).toMatchObject([{ smId, queued: 4, kind: 'message' }]);
    const before = c.upstream.sent.length;

    await advance(H - 1);
    expect(c.session.stateName).toBe('hibernating');
    expect(c.upstream.sent.length).toBe(before);

    await advance(1);
    expect(c.session.stateName).toBe('closed');
    // The upstream stream lingers for late stanzas, and closes once it was quiet (lingering-upstream.ts).
    expect(c.upstream.closed).toBe(false);
    await advance(LINGER_TIMING.quietMs);
    const written = c.upstream.sent.slice(before);
    expect(written.at(-1)).toBe(STREAM_CLOSE);
    // The client was available: the legacy server hears it is not, after the answers (RFC 6121 §4.5).
    expect(written.at(-2)).toBe("<presence type='unavailable'/>");
    const bounces = written.slice(0, -2).map((xml) => parseElement(xml));
    // The presence is dropped; message and iq get errors with their original ids.
    expect(bounces.map((b) => [b.name, b.attrs.type, b.attrs.to, b.attrs.id])).toEqual([
      ['message', 'error', `alice@${DOMAIN}/desk`, 'm1'],
      ['iq', 'error', `bob@${DOMAIN}/lap`, 'q1'],
      ['message', 'error', `dave@${DOMAIN}/y`, 'm2'],
    ]);
    const conditions = bounces.map((b) => b.getChild('error')?.getChildElements()[0]);
    expect(conditions.map((el) => [el?.name, el?.attrs.xmlns])).toEqual([
      ['recipient-unavailable', NS.stanzas],
      ['service-unavailable', NS.stanzas],
      ['recipient-unavailable', NS.stanzas],
    ]);
    expect(bounces[0]?.getChildText('body')).toBe('one');

    expect(c.upstream.closed).toBe(true);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.hibernationEnded).toEqual([{ sid: c.session.sid, jid: c.jid, smId, reason: 'expired', hibernatedMs: H }]);
    expect(rig.registry.findResumable(smId)).toBeUndefined();
    expect(rig.registry.recallEnded(smId, Date.now())).toMatchObject({ reason: 'expired', h: 1, bareJid: USER });
    expect(rig.registry.size).toBe(0);
    expect(rig.budget.usedBytes).toBe(0);
  });

  it('answers stanzas that reach the ended session until its upstream stream closes; later ones are counted, and the summary line says so', async () => {
    const { c } = await hibernatingWithUnacked();
    const lines = rig.lines;
    await advance(H);
    expect(c.session.stateName).toBe('closed');
    const before = c.upstream.sent.length;

    // The legacy server had not read the unavailable presence yet: a message and an iq arrive late.
    await advance(LINGER_TIMING.quietMs - 1);
    c.stanzaFromServer(c.messageTo('late1', `erin@${DOMAIN}/z`, 'late'));
    c.stanzaFromServer(`<presence from='erin@${DOMAIN}/z' to='${c.jid}' type='unavailable'/>`);
    await advance(LINGER_TIMING.quietMs - 1);
    c.stanzaFromServer(`<iq from='erin@${DOMAIN}/z' to='${c.jid}' id='late2' type='set'><query xmlns='jabber:iq:roster'/></iq>`);
    const answered = c.upstream.sent.slice(before).map((xml) => parseElement(xml));
    expect(answered.map((el) => [el.name, el.attrs.type, el.attrs.id])).toEqual([
      ['message', 'error', 'late1'],
      ['iq', 'error', 'late2'],
    ]);
    expect(c.upstream.closed, 'each late stanza restarts the quiet period').toBe(false);

    await advance(LINGER_TIMING.quietMs);
    expect(c.upstream.closed).toBe(true);
    // Between the proxy's close and the server's: nothing may be written any more (RFC 6120 §4.4).
    c.stanzaFromServer(c.messageTo('late3', `erin@${DOMAIN}/z`, 'too late'));
    expect(c.upstream.sent.at(-1)).toBe(STREAM_CLOSE);
    expect(
      lines.some((line) => line.msg === 'session ended'),
      'the summary waits for the upstream connection to end',
    ).toBe(false);
    c.upstream.closeStream();
    const summary = lines.find((line) => line.msg === 'session ended');
    expect(summary).toMatchObject({ reason: 'expired', late: { answered: 2, dropped: 1, unanswerable: 1 } });
    expect(lines.find((line) => line.code === 'PROXY_ERR_LATE_STANZA_UNANSWERED')).toMatchObject({ unanswerable: 1 });
    expect(rig.lingering.count).toBe(0);
  });

  it('a new session binding the same resource waits for the ended one to close upstream, and gets what reached it behind the close', async () => {
    const { c } = await hibernatingWithUnacked();
    await advance(H);
    expect(c.upstream.closed).toBe(false);

    const c2 = rig.connect();
    await c2.authenticate();
    c2.client.write(`<iq type='set' id='bind_2'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`);
    // Not relayed yet: the legacy server would end the lingering stream for a resource conflict
    // and read no answer written to it any more. The lingering stream closes at once instead.
    expect(c2.upstream.sent.some((xml) => xml.includes('bind_2'))).toBe(false);
    expect(c.upstream.closed).toBe(true);
    c.stanzaFromServer(c.messageTo('behind-close', `erin@${DOMAIN}/z`, 'routed before the server read the close'));
    c.upstream.closeStream();
    await settle();
    expect(c2.upstream.sent.some((xml) => xml.includes('bind_2'))).toBe(true);
    await c2.boundWithoutEnable(c.jid);
    expect(c2.session.stateName).toBe('active');
    const received = c2.client.elements();
    const bindAt = received.findIndex((el) => el.attrs.id === 'bind_2');
    expect(received.slice(bindAt).map((el) => [el.name, el.attrs.id])).toEqual([
      ['iq', 'bind_2'],
      ['message', 'behind-close'],
    ]);
    expect(rig.lines.find((line) => line.msg === 'session ended' && line.reason === 'expired')).toMatchObject({
      late: { handedOver: 1, unanswerable: 0 },
    });
  });

  describe('a new login of the same resource, instead of a resume (README, What it does)', () => {
    const bindPhone = `<iq type='set' id='bind_2'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`;
    const relayed = (c: Connection): boolean => c.upstream.sent.some((xml) => xml.includes('bind_2'));
    const afterBind = (c: Connection): (string | undefined)[][] => {
      const received = c.client.elements();
      return received.slice(received.findIndex((el) => el.attrs.id === 'bind_2')).map((el) => [el.name, el.attrs.id as string | undefined]);
    };
    /** A new login binding the resource, `pipelined` behind its bind; the old stream's close is answered. */
    const loginAgain = async (old: Connection, pipelined = ''): Promise<Connection> => {
      const next = rig.connect();
      await next.authenticate();
      next.client.write(bindPhone + pipelined);
      old.upstream.closeStream();
      await settle();
      return next;
    };

    it('ends the hibernating session: its queue, then what reached its stream behind the close, go to the login first', async () => {
      const { c, smId } = await hibernatingWithUnacked();
      const c2 = rig.connect();
      await c2.authenticate();
      c2.client.write(bindPhone);
      expect(c.session.stateName).toBe('closed');
      expect(relayed(c2), 'the bind waits until the old stream is closed: no resource conflict upstream').toBe(false);
      expect(c.upstream.closed).toBe(true);
      c.stanzaFromServer(c.messageTo('behind-close', `erin@${DOMAIN}/z`, 'routed before the server read the close'));
      c.upstream.closeStream();
      await settle();
      expect(relayed(c2)).toBe(true);
      await c2.boundWithoutEnable(c.jid);
      expect(afterBind(c2)).toEqual([
        ['iq', 'bind_2'],
        ['message', 'm1'],
        ['iq', 'q1'],
        ['presence', undefined],
        ['message', 'behind-close'],
      ]);
      expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['replaced']);
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({
        jid: c.jid,
        reason: 'replaced',
        unacked: { bounced: 0, dropped: 0, lost: 0, handedOver: 3 },
        late: { handedOver: 1, answered: 0, unanswerable: 0 },
      });
      expect(rig.budget.usedBytes).toBe(0);

      // A late <resume/> of the old session learns what became of it, with its h.
      const c3 = rig.connect();
      await c3.authenticate();
      c3.resume(smId, 0);
      const failed = c3.client.elements().at(-1);
      expect(failed?.name).toBe('failed');
      expect(failed?.attrs.h).toBe('1');
      expect(failed?.getChildText('text')).toMatch(/replaced by a new login/);
    });

    it('tells an attached session conflict, and hands its unacknowledged stanzas to the login', async () => {
      const c = await rig.connect().openAndBind();
      c.enableSm({ resume: true });
      c.stanzaFromServer(c.messageTo('m1', `alice@${DOMAIN}/desk`, 'one'));
      c.stanzaFromServer(c.messageTo('m2', `alice@${DOMAIN}/desk`, 'two'));
      c.ack(1);
      const c2 = rig.connect();
      await c2.authenticate();
      c2.client.write(bindPhone);
      expect(c.client.failure?.condition).toBe('conflict');
      c.upstream.closeStream();
      await settle();
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ reason: 'replaced', code: 'PROXY_ERR_SM_REPLACED' });
      await c2.boundWithoutEnable(c.jid);
      expect(afterBind(c2)).toEqual([
        ['iq', 'bind_2'],
        ['message', 'm2'],
      ]);
    });

    it('hands a stranded queue to the login', async () => {
      const { c } = await hibernatingWithUnacked();
      c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
      expect(c.session.stateName).toBe('stranded');
      const c2 = rig.connect();
      await c2.authenticate();
      c2.client.write(bindPhone);
      expect(c.session.stateName).toBe('closed');
      expect(relayed(c2), 'no stream of the session is left to wait for').toBe(true);
      await c2.boundWithoutEnable(c.jid);
      expect(afterBind(c2)).toEqual([
        ['iq', 'bind_2'],
        ['message', 'm1'],
        ['iq', 'q1'],
        ['presence', undefined],
      ]);
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ reason: 'replaced', unacked: { lost: 0 } });
    });

    it('gives the login what an expired session answered on a stream the server stopped without reading', async () => {
      rig = new Rig({ strandedMs: 10 * H });
      const { c, smId } = await hibernatingWithUnacked();
      await advance(H);
      expect(c.session.stateName).toBe('closed');
      // The answers went out; then the server stops instead of answering the close.
      expect(c.upstream.sent.some((xml) => xml.includes("type='error'") || xml.includes('type="error"'))).toBe(true);
      c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
      c.upstream.closeStream();
      await settle();
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ reason: 'expired', late: { unread: 2 } });
      // The client comes back late: its resume fails, and the bind that follows gets them.
      const c2 = rig.connect();
      await c2.authenticate();
      c2.resume(smId, 1);
      expect(c2.client.elements().at(-1)?.name).toBe('failed');
      c2.client.write(bindPhone);
      expect(relayed(c2)).toBe(true);
      await c2.boundWithoutEnable(c.jid);
      expect(afterBind(c2)).toEqual([
        ['iq', 'bind_2'],
        ['message', 'm1'],
        ['iq', 'q1'],
      ]);
    });

    it('counts the handed-over stanzas in stream management when the login pipelined <enable/> behind its bind', async () => {
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c, `<enable xmlns='${SM}' resume='true'/>`);
      c2.upstream.answerBind(c.jid);
      const received = c2.client.elements();
      const bindAt = received.findIndex((el) => el.attrs.id === 'bind_2');
      expect(received.slice(bindAt).map((el) => el.name)).toEqual(['iq', 'enabled', 'message', 'iq', 'presence']);
      expect(c2.session.summary().queued, 'kept until the client acknowledges them').toBe(3);
    });

    it('holds the handed-over stanzas, and what comes behind them, for an <enable/> sent after the bind result: then counts them', async () => {
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.stanzaFromServer(c2.messageTo('live', `erin@${DOMAIN}/z`, 'routed after the bind'));
      expect(afterBind(c2), 'nothing before the client says whether it enables').toEqual([['iq', 'bind_2']]);
      c2.client.write(`<enable xmlns='${SM}' resume='true'/>`);
      expect(afterBind(c2).map(([name, id]) => (name === 'enabled' ? name : (id ?? name)))).toEqual([
        'bind_2',
        'enabled',
        'm1',
        'q1',
        'presence',
        'live',
      ]);
      expect(c2.session.summary().queued, 'kept until the client acknowledges them').toBe(4);
      await advance(ENABLE_WAIT_MS);
      expect(
        c2.client.elements().filter((el) => el.attrs.id === 'm1'),
        'the wait ended with the <enable/>: nothing twice',
      ).toHaveLength(1);
    });

    it('gives a login that does not enable stream management the handed-over stanzas ENABLE_WAIT_MS after its bind result, in order', async () => {
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.send(`<presence/>`);
      c2.stanzaFromServer(c2.messageTo('live', `erin@${DOMAIN}/z`, 'routed after the bind'));
      await advance(ENABLE_WAIT_MS - 1);
      expect(afterBind(c2)).toEqual([['iq', 'bind_2']]);
      await advance(1);
      expect(afterBind(c2).map(([name, id]) => id ?? name)).toEqual(['bind_2', 'm1', 'q1', 'presence', 'live']);
    });

    it('answers the handed-over stanzas when the login ends while they wait for its <enable/>', async () => {
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.client.write(STREAM_CLOSE);
      await settle();
      expect(c2.client.elements().some((el) => el.name === 'message')).toBe(false);
      c2.upstream.closeStream();
      await settle();
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ jid: c.jid, reason: 'closed', unacked: { bounced: 2, lost: 0 } });
      const bounces = c2.upstream.sent.filter((xml) => xml.includes("type='error'") || xml.includes('type="error"'));
      expect(bounces.map((xml) => parseElement(xml).attrs.id)).toEqual(['m1', 'q1']);
    });

    it('lets an answer to the login’s own request through while the handed-over stanzas wait for its <enable/>', async () => {
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      // RFC 3921 §3: some clients wait for this answer before they enable stream management.
      c2.send(`<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>`);
      c2.stanzaFromServer(`<iq type='result' id='sess'/>`);
      c2.stanzaFromServer(`<iq from='bob@${DOMAIN}/lap' to='${c.jid}' id='q2' type='get'><ping xmlns='${NS.ping}'/></iq>`);
      expect(afterBind(c2)).toEqual([
        ['iq', 'bind_2'],
        ['iq', 'sess'],
      ]);
      c2.client.write(`<enable xmlns='${SM}' resume='true'/>`);
      expect(afterBind(c2).map(([name, id]) => (name === 'enabled' ? name : (id ?? name)))).toEqual([
        'bind_2',
        'sess',
        'enabled',
        'm1',
        'q1',
        'presence',
        'q2',
      ]);
    });

    it('keeps what waits for <enable/> for the next login of the resource when the legacy server ends the login’s stream', async () => {
      rig = new Rig({ strandedMs: H });
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.upstream.write(`<stream:error><conflict xmlns='${NS.streams}'/></stream:error>`);
      await settle();
      expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ jid: c.jid, reason: 'upstream-lost', unacked: { lost: 0 } });
      expect(rig.lingering.kept.count).toBe(1);
      const c3 = rig.connect();
      await c3.authenticate();
      c3.client.write(bindPhone);
      c3.upstream.answerBind(c.jid);
      c3.client.write(`<enable xmlns='${SM}' resume='true'/>`);
      expect(afterBind(c3).map(([name, id]) => (name === 'enabled' ? name : (id ?? name)))).toEqual([
        'bind_2',
        'enabled',
        'm1',
        'q1',
        'presence',
      ]);
    });

    it('holds as much as the queue could take before <enable/>; a stanza beyond that releases everything', async () => {
      rig = new Rig({ maxQueueStanzas: 4 });
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.stanzaFromServer(c2.messageTo('live1', `erin@${DOMAIN}/z`, 'a fourth'));
      expect(afterBind(c2), 'four waiting: what the queue takes once enabled').toEqual([['iq', 'bind_2']]);
      c2.stanzaFromServer(c2.messageTo('live2', `erin@${DOMAIN}/z`, 'a fifth'));
      expect(afterBind(c2).map(([name, id]) => id ?? name)).toEqual(['bind_2', 'm1', 'q1', 'presence', 'live1', 'live2']);
    });

    it('keeps the latest presence of a contact only, while the client is inactive (XEP-0352) and the hand-over waits', async () => {
      rig = new Rig({}, [
        clientStateIndication(
          () => true,
          () => Date.now(),
        ),
      ]);
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(c.jid);
      c2.send(`<inactive xmlns='urn:xmpp:csi:0'/>`);
      c2.stanzaFromServer(`<presence from='dave@${DOMAIN}/x' to='${c.jid}' id='p1'/>`);
      c2.stanzaFromServer(`<presence from='dave@${DOMAIN}/x' to='${c.jid}' id='p2'/>`);
      c2.client.write(`<enable xmlns='${SM}' resume='true'/>`);
      const presences = c2.client.elements().filter((el) => el.name === 'presence' && el.attrs.from === `dave@${DOMAIN}/x`);
      expect(presences.map((el) => el.attrs.id)).toEqual(['p2']);
    });

    it('keeps what it could not hand over when a pipelined element ends the new session first', async () => {
      rig = new Rig({ strandedMs: H });
      const { c } = await hibernatingWithUnacked();
      const c2 = rig.connect();
      await c2.authenticate();
      // An ack of stanzas never sent: the stream ends (XEP-0198 §4) before the hand-over.
      c2.client.write(bindPhone + `<enable xmlns='${SM}' resume='true'/><a xmlns='${SM}' h='99'/>`);
      c.upstream.closeStream();
      await settle();
      c2.upstream.answerBind(c.jid);
      expect(c2.session.stateName).toBe('closed');
      expect(rig.lingering.kept.count).toBe(1);
      expect(rig.budget.usedBytes).toBe(0);
    });

    it("keeps the rest when a handed-over stanza overflows the new session's queue", async () => {
      rig = new Rig({ strandedMs: H, maxQueueBytes: 400 });
      const c = await rig.connect().openAndBind();
      c.enableSm({ resume: true });
      // Together exactly the queue's 400 bytes.
      const small = `<message from='alice@${DOMAIN}/desk' to='${c.jid}' id='small'/>`;
      const frame = c.messageTo('big', `alice@${DOMAIN}/desk`, '');
      c.stanzaFromServer(c.messageTo('big', `alice@${DOMAIN}/desk`, 'x'.repeat(400 - small.length - frame.length)));
      c.stanzaFromServer(small);
      await settle();
      c.client.drop();
      const c2 = await loginAgain(c, `<enable xmlns='${SM}' resume='true'/>`);
      c2.upstream.answerBind(c.jid);
      // The delay stamp makes the first one too large for the queue: the session ends with it.
      expect(c2.session.stateName).toBe('closed');
      expect(rig.lingering.kept.take(() => true).map((bytes) => parseElement(bytes.toString()).attrs.id)).toEqual(['small']);
      expect(rig.budget.usedBytes).toBe(0);
    });

    it('stamps a handed-over message with the time the proxy first sent it (XEP-0203)', async () => {
      const { c } = await hibernatingWithUnacked();
      await advance(60_000);
      const c2 = await loginAgain(c);
      await c2.boundWithoutEnable(c.jid);
      const m1 = c2.client.elements().find((el) => el.attrs.id === 'm1');
      expect(m1?.getChild('delay', 'urn:xmpp:delay')?.attrs.stamp).toBe(new Date(T0).toISOString());
    });

    it('keeps the queue for the next login of the resource when this one ends before its bind is granted', async () => {
      rig = new Rig({ strandedMs: H });
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      expect(relayed(c2)).toBe(true);
      c2.client.drop();
      expect(c2.session.stateName).toBe('closed');
      expect(rig.lingering.kept.count).toBe(1);
      const c3 = rig.connect();
      await c3.authenticate();
      c3.client.write(bindPhone);
      expect(relayed(c3)).toBe(true);
      await c3.boundWithoutEnable(c.jid);
      expect(afterBind(c3)).toEqual([
        ['iq', 'bind_2'],
        ['message', 'm1'],
        ['iq', 'q1'],
        ['presence', undefined],
      ]);
      expect(rig.lingering.kept.count).toBe(0);
    });

    it('keeps the queue for its own account when the server binds the login to another', async () => {
      rig = new Rig({ strandedMs: H });
      const { c } = await hibernatingWithUnacked();
      const c2 = await loginAgain(c);
      c2.upstream.answerBind(`mallory@${DOMAIN}/phone`);
      expect(afterBind(c2)).toEqual([['iq', 'bind_2']]);
      expect(rig.lingering.kept.count).toBe(1);
    });

    it.each([
      ['another resource', 'PLAIN', 'tablet'],
      ['a SASL exchange that names no account (EXTERNAL)', 'EXTERNAL', 'phone'],
    ] as const)('replaces nothing for %s', async (_what, mechanism, resource) => {
      const { c } = await hibernatingWithUnacked();
      const c2 = rig.connect();
      await c2.authenticate({ mechanism });
      c2.client.write(`<iq type='set' id='bind_2'><bind xmlns='${NS.bind}'><resource>${resource}</resource></bind></iq>`);
      expect(relayed(c2)).toBe(true);
      expect(c.session.stateName).toBe('hibernating');
    });
  });

  it('keeps the queue when the legacy server ends a hibernating stream: the resume fails with h, and the next bind gets the queue first', async () => {
    const { c, smId } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    expect(c.session.stateName).toBe('stranded');
    expect(c.upstream.destroyed).toBe(true);
    expect(rig.seen.hibernationEnded).toEqual([]);

    const c2 = rig.connect();
    await c2.authenticate();
    c2.resume(smId, 1); // the client had m1
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.attrs.h).toBe('1');
    expect(failed?.getChildText('text')).toMatch(/bind again/);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['upstream-lost']);
    expect(rig.budget.usedBytes).toBe(0);

    // The identity check bound the session's resource, and the server gave another: the client's
    // bind is answered with that one, and the queue follows it.
    c2.client.write(`<iq type='set' id='bind_2'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`);
    const bindAnswer = c2.client.elements().find((el) => el.attrs.id === 'bind_2');
    expect(bindAnswer?.getChild('bind', NS.bind)?.getChildText('jid')).toBe(`${USER}/identity-check`);
    c2.stanzaFromServer(`<message from='erin@${DOMAIN}/z' to='${USER}/identity-check' id='after'/>`);
    await advance(ENABLE_WAIT_MS); // no <enable/> after the bind result: the hand-over waited for one
    const received = c2.client.elements();
    const bindAt = received.findIndex((el) => el.attrs.id === 'bind_2');
    // m1 was acknowledged by the resume's h; the iq and the presence waited, then what is new.
    expect(received.slice(bindAt).map((el) => [el.name, el.attrs.id])).toEqual([
      ['iq', 'bind_2'],
      ['iq', 'q1'],
      ['presence', undefined],
      ['message', 'after'],
    ]);
  });

  it("keeps a stranded queue a failed resume took for the session's own resource when that stream ends before binding", async () => {
    rig = new Rig({ strandedMs: H });
    const { c, smId } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    const c2 = rig.connect();
    await c2.authenticate();
    c2.resume(smId, 1);
    expect(c2.client.elements().at(-1)?.name).toBe('failed');
    c2.client.drop();
    expect(rig.lingering.kept.count).toBe(1);
    const c3 = rig.connect();
    await c3.authenticate();
    c3.client.write(`<iq type='set' id='bind_3'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`);
    await c3.boundWithoutEnable(c.jid);
    const received = c3.client.elements();
    const bindAt = received.findIndex((el) => el.attrs.id === 'bind_3');
    expect(received.slice(bindAt).map((el) => [el.name, el.attrs.id])).toEqual([
      ['iq', 'bind_3'],
      ['iq', 'q1'],
      ['presence', undefined],
    ]);
  });

  it('goes on over the resuming stream when it binds the same full JID: carbons and presence told again, <resumed/>, the replay', async () => {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.send(`<iq type='set' id='carbons'><enable xmlns='${NS.carbons}'/></iq>`);
    c.send(`<presence><show>away</show></presence>`);
    c.stanzaFromServer(c.messageTo('m1'));
    c.stanzaFromServer(c.messageTo('m2'));
    await settle();
    c.client.drop();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    expect(c.session.stateName).toBe('stranded');

    const c2 = rig.connect();
    await c2.authenticate();
    const start = c2.client.elements().length;
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='1'/>`);
    // Even with SASL naming the account, the check binds the session's own resource.
    const identityBind = c2.upstream.sent.findLast((xml) => xml.includes(NS.bind));
    expect(identityBind).toContain('<resource>phone</resource>');
    const before = c2.upstream.sent.length;
    c2.upstream.answerBind(c.jid);

    expect(c.session.stateName).toBe('active');
    expect(c2.session.stateName).toBe('closed');
    expect(c2.upstream.closed, 'the resuming stream is the session’s now').toBe(false);
    const told = c2.upstream.sent.slice(before);
    expect(told[0]).toMatch(new RegExp(`^<iq type='set' id='smacks-renew-[0-9a-f]+'><enable xmlns='${NS.carbons}'/></iq>$`));
    expect(told[1]).toBe('<presence><show>away</show></presence>');
    const received = c2.client.elements().slice(start);
    expect(received.map((el) => [el.name, el.attrs.id])).toEqual([
      ['resumed', undefined],
      ['message', 'm2'],
      ['r', undefined],
    ]);
    expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['resumed']);

    // The stream goes on: the answer to the proxy's own request stays with the proxy, the rest reaches the client.
    c2.upstream.write(`<iq type='result' id='${parseElement(told[0]!).attrs.id as string}'/>`);
    c2.upstream.write(c.messageTo('m3'));
    expect(
      c2.client
        .elements()
        .slice(start + received.length)
        .map((el) => [el.name, el.attrs.id]),
    ).toEqual([['message', 'm3']]);
    c2.client.write(`<message to='bob@${DOMAIN}' id='out'><body>back</body></message>`);
    expect(c2.upstream.sent.at(-1)).toContain("id='out'");
  });

  it('a connected resumable session outlives its upstream stream: the client is cut off without a stream error, the queue waits stranded', async () => {
    const c = await rig.connect().openAndBind();
    c.enableSm({ resume: true });
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    await settle();
    expect(c.client.failure, 'no stream error to the client').toBeUndefined();
    expect(c.client.destroyedBecause).toMatch(/resume/);
    expect(c.session.stateName).toBe('stranded');
    expect(rig.seen.hibernationStarted).toHaveLength(1);
  });

  it.each(['conflict', 'policy-violation'])(
    'a connected session that the legacy server refuses (%s, not going away) gets the error and ends',
    async (condition) => {
      const c = await rig.connect().openAndBind();
      c.enableSm({ resume: true });
      c.upstream.write(`<stream:error><${condition} xmlns='${NS.streams}'/></stream:error>`);
      await settle();
      expect(c.client.received.some((xml) => xml.includes(`<${condition}`))).toBe(true);
      expect(c.session.stateName).toBe('closed');
    },
  );

  it('never binds the resource of a session that a resource conflict ended: another session holds it now', async () => {
    const { c, smId } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><conflict xmlns='${NS.streams}'/></stream:error>`);
    expect(c.session.stateName).toBe('stranded');
    const c2 = rig.connect();
    await c2.authenticate();
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='1'/>`);
    expect(
      c2.upstream.sent.filter((xml) => xml.includes(NS.bind)),
      'SASL named the account: no bind at all',
    ).toEqual([]);
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.getChildText('text')).toMatch(/bind again/);
  });

  it('loses a stranded queue at expiry, with a warning that counts it', async () => {
    const { c } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    await advance(H);
    expect(c.session.stateName).toBe('closed');
    expect(rig.lines.find((line) => line.msg?.toString().startsWith('unacked stanzas dropped unanswered'))).toMatchObject({ dropped: 3 });
    expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['expired']);
    // The metrics and integrations learn whose queue it was.
    expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ jid: c.jid, reason: 'expired', unacked: { lost: 3 } });
  });

  it('keeps a stranded queue for strandedMs after the stream ended, when that is longer than the hibernation left', async () => {
    rig = new Rig({ strandedMs: 3 * H });
    const { c, smId } = await hibernatingWithUnacked();
    await advance(H / 2);
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    await advance(3 * H - 1);
    expect(c.session.stateName).toBe('stranded');
    // A client that comes back this late still gets its queue, after the bind its failed resume asks for.
    const c2 = rig.connect();
    await c2.authenticate();
    c2.resume(smId, 1);
    expect(c2.client.elements().at(-1)?.getChildText('text')).toMatch(/bind again/);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ unacked: { lost: 0 } });
  });

  it('keeps a stranded queue to the end of its hibernation when that is later than strandedMs', async () => {
    rig = new Rig({ strandedMs: H / 10 });
    const { c } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    await advance(H - 1);
    expect(c.session.stateName).toBe('stranded');
    await advance(1);
    expect(c.session.stateName).toBe('closed');
  });

  it('ends a stranded session strandedMs after its stream ended: its queue is lost, counted', async () => {
    rig = new Rig({ strandedMs: 3 * H });
    const { c } = await hibernatingWithUnacked();
    c.upstream.write(`<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`);
    await advance(3 * H);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.sessionEnded.at(-1)).toMatchObject({ reason: 'expired', unacked: { lost: 3 } });
  });

  it('does not hold a bind whose SASL exchange names no account: nothing of the ended session may reach another account', async () => {
    const { c } = await hibernatingWithUnacked();
    await advance(H);
    const c2 = rig.connect();
    await c2.authenticate({ mechanism: 'EXTERNAL' });
    c2.client.write(`<iq type='set' id='bind_3'><bind xmlns='${NS.bind}'><resource>phone</resource></bind></iq>`);
    expect(c2.upstream.sent.some((xml) => xml.includes('bind_3'))).toBe(true);
    expect(c.upstream.closed, 'the ended session lingers on').toBe(false);
  });

  it('closes the upstream stream at the latest after the longest linger, however busy it is', async () => {
    const { c } = await hibernatingWithUnacked();
    await advance(H);
    for (let waited = 0; waited < LINGER_TIMING.maxMs - 100; waited += 100) {
      c.stanzaFromServer(`<presence from='erin@${DOMAIN}/z' to='${c.jid}'/>`);
      await advance(100);
    }
    expect(c.upstream.closed).toBe(false);
    await advance(100);
    expect(c.upstream.closed).toBe(true);
  });

  it('a resume 1 ms before expiry wins, and the old timer does not end a later hibernation', async () => {
    const { c, smId } = await hibernatingWithUnacked();
    await advance(H - 1);
    const c2 = rig.connect();
    await c2.authenticate();
    c2.resume(smId, 0);
    // <resumed/>, the replay of everything unacked in order, then an <r/> asking whether it arrived.
    const resumedAt = c2.client.received.indexOf(`<resumed xmlns='${SM}' previd='${smId}' h='1'/>`);
    expect(resumedAt).toBeGreaterThan(-1);
    const after = c2.client.received.slice(resumedAt + 1).map((xml) => parseElement(xml));
    expect(after.map((el) => [el.name, el.attrs.id])).toEqual([
      ['message', 'm1'],
      ['iq', 'q1'],
      ['presence', undefined],
      ['r', undefined],
    ]);
    expect(c.session.stateName).toBe('active');
    expect(c2.session.stateName).toBe('closed');

    c2.client.drop(); // hibernates again, 1 ms before the first hibernation's expiry
    expect(c.session.stateName).toBe('hibernating');
    await advance(1);
    expect(c.session.stateName).toBe('hibernating');
    expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['resumed']);

    await advance(H - 2);
    expect(c.session.stateName).toBe('hibernating');
    await advance(1);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.hibernationEnded.map((e) => [e.reason, e.hibernatedMs])).toEqual([
      ['resumed', H - 1],
      ['expired', H],
    ]);
  });

  it('expiry during the resume identity check: the resume fails with the reason and the final h', async () => {
    const { c, smId } = await hibernatingWithUnacked();
    await advance(H - 1);
    const c2 = rig.connect();
    await c2.authenticate({ mechanism: 'EXTERNAL' });
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    expect(c2.session.stateName).toBe('resuming'); // the legacy server has not answered the identity bind

    await advance(1);
    expect(c.session.stateName).toBe('closed');
    expect(rig.seen.hibernationEnded.map((e) => e.reason)).toEqual(['expired']);

    c2.upstream.answerBind(`${USER}/identity-check`);
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.attrs.h).toBe('1');
    expect(failed?.getChild('item-not-found', NS.stanzas)).toBeDefined();
    expect(failed?.getChildText('text')).toMatch(/^the session expired/);
    expect(c2.session.stateName).toBe('authenticated');
  });
});

describe('Session: <a h/> above what was sent (XEP-0198 §6)', () => {
  it('ends the stream with undefined-condition and <handled-count-too-high h send-count/>', async () => {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.stanzaFromServer(c.messageTo('m1'));
    c.stanzaFromServer(c.messageTo('m2'));
    await settle();
    c.ack(2); // all that was sent: fine
    expect(c.client.failure).toBeUndefined();

    c.ack(5);
    expect(c.client.failure?.condition).toBe('undefined-condition');
    expect(c.client.failure?.appCondition).toEqual({ name: 'handled-count-too-high', xmlns: SM, attrs: { h: '5', 'send-count': '2' } });
    expect(c.client.last()).toContain(`<handled-count-too-high xmlns='${SM}' h='5' send-count='2'/>`);
    expect(c.session.stateName).toBe('closed');
    await advance(LINGER_TIMING.quietMs);
    expect(c.upstream.closed).toBe(true);
    expect(rig.registry.recallEnded(smId, Date.now())?.reason).toBe('error');
  });
});

describe('Session: the resuming account, from SASL or from the legacy server (XEP-0198 §5)', () => {
  async function hibernating(): Promise<{ c: Connection; smId: string }> {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    c.client.drop();
    expect(c.session.stateName).toBe('hibernating');
    return { c, smId };
  }

  const identityBinds = (c: Connection) => c.upstream.sent.filter((xml) => xml.includes(NS.bind));

  it('a SASL exchange naming exactly the hibernated account resumes with no second resource bound upstream', async () => {
    const { c, smId } = await hibernating();
    const c2 = rig.connect();
    await c2.authenticate({ as: 'user' });
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    expect(identityBinds(c2)).toEqual([]);
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(true);
    expect(c.session.stateName).toBe('active');
  });

  /** A new connection through SASL success (as `user`) and the client's restart, its `<resume/>` pipelined before the upstream restarted. */
  async function pipelinedResume(smId: string): Promise<Connection> {
    const c2 = rig.connect();
    c2.client.openStream();
    await settle();
    c2.upstream = rig.takeUpstream();
    c2.upstream.openStream();
    c2.upstream.write(`<stream:features><mechanisms xmlns='${NS.sasl}'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`);
    c2.client.write(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${Buffer.from('\0user\0secret').toString('base64')}</auth>`);
    c2.upstream.write(`<success xmlns='${NS.sasl}'/>`);
    c2.client.openStream();
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    return c2;
  }

  it("a <resume/> pipelined behind the stream restart is answered after the restarted stream's features (Monal)", async () => {
    const { c, smId } = await hibernating();
    const c2 = await pipelinedResume(smId);
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(false);
    c2.upstream.openStream();
    c2.upstream.write(`<stream:features><bind xmlns='${NS.bind}'/></stream:features>`);
    const featuresAt = c2.client.received.findIndex((xml) => xml.startsWith('<stream:features') && xml.includes(NS.bind));
    const resumedAt = c2.client.received.findIndex((xml) => xml.startsWith('<resumed'));
    expect(featuresAt).toBeGreaterThan(-1);
    expect(resumedAt).toBeGreaterThan(featuresAt);
    expect(identityBinds(c2)).toEqual([]);
    expect(c.session.stateName).toBe('active');
  });

  it('the hibernated session expires while the resume waits for the features: <failed/> says so, with its h', async () => {
    const { c, smId } = await hibernating();
    await advance(SETTINGS.hibernationMs - 1);
    const c2 = await pipelinedResume(smId);
    await advance(1);
    expect(c.session.stateName).toBe('closed');
    c2.upstream.openStream();
    c2.upstream.write(`<stream:features><bind xmlns='${NS.bind}'/></stream:features>`);
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.attrs.h).toBe('0');
    expect(failed?.getChildText('text')).toMatch(/^the session expired/);
    expect(c2.session.stateName).toBe('authenticated');
  });

  it('the client goes away while its resume waits for the features: the hibernated session is untouched', async () => {
    const { c, smId } = await hibernating();
    const c2 = await pipelinedResume(smId);
    c2.client.drop();
    c2.upstream.openStream();
    c2.upstream.write(`<stream:features><bind xmlns='${NS.bind}'/></stream:features>`);
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(false);
    expect(c.session.stateName).toBe('hibernating');
    expect(rig.seen.hibernationEnded).toEqual([]);
  });

  it('another spelling of the name is left to the server: its bind answer decides (here: the same account)', async () => {
    const { c, smId } = await hibernating();
    const c2 = rig.connect();
    await c2.authenticate({ as: 'USER' });
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    expect(c2.session.stateName).toBe('resuming');
    expect(identityBinds(c2)).toHaveLength(1);
    c2.upstream.answerBind(`${USER}/identity-check`);
    // The bind may have replaced the hibernated session (one resource per account): a round trip on its stream first.
    await settle();
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(false);
    c.upstream.answerProbe();
    await settle();
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(true);
    expect(c.session.stateName).toBe('active');
    expect(
      c.client.received.concat(c2.client.received).some((xml) => xml.includes('smacks-probe-')),
      'the answer reaches no client',
    ).toBe(false);
  });

  it('a bind that made the legacy server replace the hibernated session: the round trip finds its stream gone; the resume fails, the queue follows the next bind', async () => {
    const { c, smId } = await hibernating();
    const c2 = rig.connect();
    await c2.authenticate({ as: 'USER' });
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    c2.upstream.answerBind(`${USER}/identity-check`);
    // What ejabberd with max_user_sessions: 1 does to the older stream, before it reads the ping.
    c.upstream.write(`<stream:error><conflict xmlns='${NS.streams}'/></stream:error>`);
    await settle();
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.getChildText('text')).toMatch(/^the legacy server ended the session/);
    expect(c2.client.received.some((xml) => xml.startsWith('<resumed'))).toBe(false);
    c2.client.write(`<iq type='set' id='b2'><bind xmlns='${NS.bind}'/></iq>`);
    await advance(ENABLE_WAIT_MS); // no <enable/> after the bind result: the hand-over waited for one
    expect(
      c2.client
        .elements()
        .filter((el) => el.name === 'message')
        .map((el) => el.attrs.id),
    ).toEqual(['m1']);
  });

  it('a round trip that timed out is not reused: the next resume waits for one of its own', async () => {
    const { c } = await hibernating();
    const probes = (): number => c.upstream.sent.filter((xml) => xml.includes("id='smacks-probe-")).length;
    const first = c.session.probeUpstream();
    expect(probes()).toBe(1);
    expect(c.session.probeUpstream(), 'asked again while it waits: the same round trip').toBe(first);
    await advance(10_000);
    await first;
    const second = c.session.probeUpstream();
    expect(second).not.toBe(first);
    expect(probes()).toBe(2);
  });

  it('a SASL name of another account is not trusted either way: the bind answer refuses it', async () => {
    const { c, smId } = await hibernating();
    const c2 = rig.connect();
    await c2.authenticate({ as: 'mallory' });
    c2.client.write(`<resume xmlns='${SM}' previd='${smId}' h='0'/>`);
    c2.upstream.answerBind(`mallory@${DOMAIN}/identity-check`);
    c.upstream.answerProbe();
    await settle();
    const failed = c2.client.elements().at(-1);
    expect(failed?.name).toBe('failed');
    expect(failed?.getChildText('text')).toBe('the session belongs to another account');
    expect(c.session.stateName).toBe('hibernating');
  });
});

describe('Session: a hibernated session written out', () => {
  it('gives its account, its times and its SM state while hibernating, and nothing otherwise', async () => {
    const c = await rig.connect().openAndBind();
    const smId = c.enableSm({ resume: true }).attrs.id as string;
    expect(c.session.snapshot()).toBeUndefined();
    c.send(`<presence/>`);
    c.stanzaFromServer(c.messageTo('m1'));
    await settle();
    c.client.drop();
    const snapshot = c.session.snapshot();
    expect(snapshot).toMatchObject({ domain: DOMAIN, jid: c.jid, sm: { id: smId, h: 1, resumable: true, queue: { sent: 1, acked: 0 } } });
    expect(snapshot!.expiresAtMs - snapshot!.sinceMs).toBe(SETTINGS.hibernationMs);
    expect(snapshot!.sm.queue.entries.map((e) => e.bytes.toString())).toEqual([c.messageTo('m1')]);
  });
});
