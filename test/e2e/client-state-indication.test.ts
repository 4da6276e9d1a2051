import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProsody } from '../support/prosody.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { Element } from '../support/raw-client.js';
import { recordSmEvents, resumeWith, subscribe } from '../support/sm-steps.js';

// XEP-0352 done by the proxy in front of legacy servers that lack it (README, Client state
// indication): a contact's presence changes reach an inactive client only when something
// important comes, collapsed to the latest per sender, stamped with when they arrived, in order.

const CSI = 'urn:xmpp:csi:0';
/** How long a held stanza must stay away to count as held: the contact's server routes it within milliseconds. */
const HELD_MS = 700;

const inactive = () => new Element('inactive', { xmlns: CSI });
const active = () => new Element('active', { xmlns: CSI });
const status = (text: string) => new Element('presence').c('status').t(text).root();

function statuses(received: readonly Element[], from: string): string[] {
  return received.filter((el) => el.is('presence') && el.attrs.from === from).map((el) => el.getChildText('status') ?? '');
}

describeEachLegacyServer((kind) => {
  let fixture: ProxyFixture;

  beforeAll(async () => {
    fixture = await startProxyFixture({ kind });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
  });

  /** The phone (with SM) watches Bob's presence; both are available. Each test has a phone account of its own: a subscription is made once. */
  async function phoneAndContact(phone: (typeof USERS)['alice' | 'carol'], resource: string): Promise<{ phone: LoggedIn; bob: LoggedIn }> {
    const alice = await fixture.login('directtls', phone, { resource, sm: true });
    const bob = await fixture.login('directtls', USERS.bob, { resource: `${resource}-contact` });
    alice.client.presence();
    bob.client.presence();
    await subscribe(alice, bob);
    return { phone: alice, bob };
  }

  it('offers <csi/> after authentication, and takes <inactive/> and <active/> without an answer or a word to the server', async () => {
    const client = await fixture.connect('directtls');
    const features = await client.authenticatePlain(USERS.alice.username, USERS.alice.password);
    expect(features.getChildren('csi', CSI)).toHaveLength(1);
    await client.bind('offer');
    client.send(inactive());
    client.send(active());
    // The legacy server would answer an unknown element with a stream error; this query is answered.
    await client.syncWithServer();
    expect(client.received.filter((el) => el.getNS() === CSI)).toEqual([]);
    await client.close();
  });

  it('holds presence while inactive, the latest per contact, until a message, which comes after it', async () => {
    const { phone: alice, bob } = await phoneAndContact(USERS.alice, 'held');
    alice.client.send(inactive());
    await alice.client.syncWithServer();
    for (const text of ['one', 'two', 'three']) bob.client.send(status(text));
    await bob.client.syncWithServer();
    await alice.client.expectNone(
      (el) => el.is('presence') && el.attrs.from === bob.jid,
      "Bob's presence while Alice is inactive",
      HELD_MS,
    );

    const id = bob.client.sendMessage(alice.jid, 'wake up');
    const message = await alice.client.expectMessage((el) => el.attrs.id === id);
    expect(statuses(alice.client.received, bob.jid).slice(-1), 'only the latest presence, once').toEqual(['three']);
    expect(statuses(alice.client.received, bob.jid)).not.toContain('two');
    const presence = alice.client.received.filter((el) => el.is('presence') && el.attrs.from === bob.jid).at(-1)!;
    expect(alice.client.received.indexOf(presence), 'the held presence before the message').toBeLessThan(
      alice.client.received.indexOf(message),
    );
    expect(presence.getChild('delay', 'urn:xmpp:delay')?.attrs.from, 'stamped with when it arrived').toBe(alice.jid.split('/')[0]);
    // Stream management counted what was sent, and only that: the proxy takes Alice's h (one too high ends the stream).
    alice.client.ack();
    await alice.client.syncWithServer();

    // <active/> releases at once what waits (XEP-0352 §5.1), and nothing waits afterwards.
    bob.client.send(status('four'));
    await alice.client.expectNone(
      (el) => el.is('presence') && el.attrs.from === bob.jid && el.getChildText('status') === 'four',
      'held',
      HELD_MS,
    );
    alice.client.send(active());
    await alice.client.expect((el) => el.is('presence') && el.getChildText('status') === 'four', 'the held presence after <active/>');
    bob.client.send(status('five'));
    await alice.client.expect((el) => el.is('presence') && el.getChildText('status') === 'five', 'presence at once while active');
    await alice.client.close();
    await bob.client.close();
  }, 20_000);

  it('a resume while inactive gets what was held, once, in order, and the resumed stream is active', async () => {
    const events = recordSmEvents(fixture.proxy);
    const { phone: carol, bob } = await phoneAndContact(USERS.carol, 'resume');
    carol.client.send(inactive());
    await carol.client.syncWithServer();
    bob.client.send(status('away-1'));
    bob.client.send(status('away-2'));
    await carol.client.expectNone((el) => el.is('presence') && el.attrs.from === bob.jid, 'held', HELD_MS);
    const h = carol.client.stanzasReceived;
    carol.client.drop();
    await events.waitFor('hibernationStarted', carol.jid);
    const id = bob.client.sendMessage(carol.jid, 'while away');
    await events.waitFor('stanzaQueuedWhileHibernating', carol.jid, (event) => event.kind === 'message');

    const { client, answer } = await resumeWith(fixture, USERS.carol, carol.smId!, h);
    expect(answer.name).toBe('resumed');
    const message = await client.expectMessage((el) => el.attrs.id === id);
    const replayed = client.received.slice(0, client.received.indexOf(message) + 1);
    expect(statuses(replayed, bob.jid), 'the latest held presence, replayed before the message').toEqual(['away-2']);
    bob.client.send(status('back'));
    await client.expect((el) => el.is('presence') && el.getChildText('status') === 'back', 'presence at once: XEP-0352 §5.2');
    expect(client.received.filter((el) => el.is('message') && el.attrs.id === id)).toHaveLength(1);
    await client.close();
    await bob.client.close();
  }, 20_000);
});

describe('in front of Prosody with its own CSI (mod_csi_simple)', () => {
  let server: LegacyServer;
  let fixture: ProxyFixture;

  beforeAll(async () => {
    server = await startProsody({ users: Object.values(USERS), csi: true });
    fixture = await startProxyFixture({ server });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await server?.stop();
  });

  it("passes the server's <csi/> and the client's nonzas unchanged", async () => {
    const client = await fixture.connect('directtls');
    const features = await client.authenticatePlain(USERS.alice.username, USERS.alice.password);
    expect(features.getChildren('csi', CSI), "the server's offer, not a second one").toHaveLength(1);
    const alice = { client, jid: await client.bind('native'), smId: undefined };
    const bob = await fixture.login('directtls', USERS.bob, { resource: 'native-contact' });
    client.presence();
    bob.client.presence();
    await subscribe(alice, bob);

    // Anything Alice sends after <inactive/> counts as activity to mod_csi_simple, which then flushes for 5 s: she stays quiet.
    client.send(inactive());
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const text of ['one', 'two']) bob.client.send(status(text));
    await bob.client.syncWithServer();
    await client.expectNone((el) => el.is('presence') && el.attrs.from === bob.jid, 'held by Prosody', HELD_MS);
    const id = bob.client.sendMessage(alice.jid, 'wake up');
    await client.expectMessage((el) => el.attrs.id === id);
    // mod_csi_simple keeps every presence; the proxy would have kept only the latest.
    expect(statuses(client.received, bob.jid).slice(-2)).toEqual(['one', 'two']);
    await client.close();
    await bob.client.close();
  }, 20_000);
});
