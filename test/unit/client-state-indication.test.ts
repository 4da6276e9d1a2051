import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { clientStateIndication, holdVerdict } from '../../src/features/client-state-indication.js';
import type { SessionHandle } from '../../src/session/hooks.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';
import { HeldStanzas } from '../../src/session/held-stanzas.js';
import { parseElement } from '../../src/xml/element.js';

const ROOM = 'room@muc.example.org';
/** The user joined ROOM as "Ally"; no other room's join was seen. */
const mentionable = (room: string) => (room === ROOM ? ['Ally', 'alice'] : undefined);
const verdict = (xml: string) => holdVerdict(parseElement(xml), mentionable);

describe('holdVerdict: what waits while the client is inactive (XEP-0352 §3.2)', () => {
  it.each([
    [
      'available presence, latest per sender',
      "<presence from='bob@example.org/phone'><show>away</show></presence>",
      'presence bob@example.org/phone',
    ],
    ['unavailable presence', "<presence from='bob@example.org/phone' type='unavailable'/>", 'presence bob@example.org/phone'],
    [
      'a chat state alone, latest per sender',
      "<message from='bob@example.org/phone' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/><thread>t1</thread></message>",
      'chat-state bob@example.org/phone',
    ],
  ])('holds %s under a key', (_what, xml, key) => {
    expect(verdict(xml)).toEqual({ key });
  });

  it.each([
    ['a receipt', "<message from='bob@example.org/phone'><received xmlns='urn:xmpp:receipts' id='m1'/></message>"],
    [
      'a headline (PEP)',
      "<message from='bob@example.org' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'/></message>",
    ],
    ['a groupchat message that mentions nobody', `<message from='${ROOM}/carol' type='groupchat'><body>lunch?</body></message>`],
    [
      'a carbon of a received chat state',
      "<message from='alice@example.org'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@example.org/pc'><paused xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></received></message>",
    ],
  ])('holds %s without a key', (_what, xml) => {
    expect(verdict(xml)).toEqual({});
  });

  it.each([
    ['an iq', "<iq from='example.org' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>"],
    ['a subscription request', "<presence from='bob@example.org' type='subscribe'/>"],
    ['a presence error', "<presence from='bob@example.org' type='error'/>"],
    ['a message with a body', "<message from='bob@example.org/phone' type='chat'><body>hi</body></message>"],
    ['a message error', "<message from='bob@example.org' type='error'><error type='cancel'/></message>"],
    ['a subject (the last step of a room join)', `<message from='${ROOM}' type='groupchat'><subject>topic</subject></message>`],
    ['an OMEMO message', "<message from='bob@example.org/phone'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"],
    ['an OpenPGP message', "<message from='bob@example.org/phone'><openpgp xmlns='urn:xmpp:openpgp:0'>x</openpgp></message>"],
    ['a call invitation', "<message from='bob@example.org/phone'><propose xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>"],
    ['a direct room invitation', `<message from='bob@example.org/phone'><x xmlns='jabber:x:conference' jid='${ROOM}'/></message>`],
    [
      'a mediated room invitation',
      `<message from='${ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='bob@example.org'/></x></message>`,
    ],
    ['a groupchat message naming the nickname', `<message from='${ROOM}/carol' type='groupchat'><body>ally: lunch?</body></message>`],
    ['a groupchat message naming the account', `<message from='${ROOM}/carol' type='groupchat'><body>Alice, lunch?</body></message>`],
    [
      'a groupchat message of a room whose join was not seen',
      "<message from='other@muc.example.org/carol' type='groupchat'><body>x</body></message>",
    ],
    [
      'a carbon of a received message with a body',
      "<message from='alice@example.org'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@example.org/pc'><body>hi</body></message></forwarded></received></message>",
    ],
    [
      'a carbon of what the user sent elsewhere',
      "<message from='alice@example.org'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='bob@example.org'><active xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></sent></message>",
    ],
  ])('lets %s through at once', (_what, xml) => {
    expect(verdict(xml)).toBeUndefined();
  });
});

describe('HeldStanzas', () => {
  const b = (text: string) => Buffer.from(text);

  it('keeps arrival order; a keyed stanza replaces the earlier one of its key and moves to the end', () => {
    const held = new HeldStanzas();
    held.hold(b('p1-bob'), 'presence bob');
    held.hold(b('receipt'), undefined);
    held.hold(b('p1-carol'), 'presence carol');
    held.hold(b('p2-bob'), 'presence bob');
    held.hold(b('marker'), undefined);
    expect(held.length).toBe(4);
    expect(held.bytes).toBe('receipt'.length + 'p1-carol'.length + 'p2-bob'.length + 'marker'.length);
    expect(held.superseded).toBe(1);
    expect(held.take().map(String)).toEqual(['receipt', 'p1-carol', 'p2-bob', 'marker']);
    expect(held.length).toBe(0);
    expect(held.bytes).toBe(0);
  });

  it('starts not holding, for every client link', () => {
    expect(new HeldStanzas().holding).toBe(false);
  });
});

describe('the CSI hook across an upgrade (README, Upgrading)', () => {
  const session = (): SessionHandle => ({
    sid: 's1',
    addressKey: '192.0.2.1',
    domain: 'example.org',
    jid: 'alice@example.org/phone',
    awaySinceMs: 1,
    log: pino({ level: 'silent' }),
    sendUpstream: () => undefined,
    serverOffers: () => false,
    holdBack: () => undefined,
    releaseHeld: () => undefined,
    hibernateFor: () => undefined,
  });
  const join = scanFragment(Buffer.from(`<presence to='${ROOM}/Ally'><x xmlns='http://jabber.org/protocol/muc'/></presence>`), {
    maxStanzaBytes: 65536,
    maxDepth: 16,
  });
  const chatter = Buffer.from(`<message from='${ROOM}/carol' type='groupchat'><body>lunch?</body></message>`);

  it('carries the rooms joined, so that room chatter still waits at the next process', () => {
    const before = clientStateIndication(
      () => true,
      () => 0,
    );
    const old = session();
    before.fromClient?.(join, 'active', old);
    const carried = JSON.parse(JSON.stringify(before.handedOff?.(old))) as unknown;
    expect(carried).toEqual({ [ROOM]: 'Ally' });

    const after = clientStateIndication(
      () => true,
      () => 0,
    );
    const unknown = session();
    expect(after.hold?.(chatter, unknown), 'a room whose join was not seen counts as mentioning').toBeUndefined();
    const adopted = session();
    after.adopted?.(adopted, carried);
    expect(after.hold?.(chatter, adopted)).toMatchObject({ bytes: expect.any(Buffer) });
    expect(after.handedOff?.(session()), 'no rooms, nothing carried').toBeUndefined();
  });
});
