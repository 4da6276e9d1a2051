import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { Element, type RawClient } from '../support/raw-client.js';
import { recordSmEvents, resumeWith, type SmEventLog } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';

// XEP-0357 done by the proxy in front of legacy servers without it (README, Push notifications).
// The "app server" is Bob's client: the proxy publishes to his full JID through Alice's own
// stream, so the legacy server routes it like any iq, and Bob answers as an app server would.

const PUSH = 'urn:xmpp:push:0';
const PUBSUB = 'http://jabber.org/protocol/pubsub';
const DATA = 'jabber:x:data';
const STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const PRIVATE = 'jabber:iq:private';
const STORAGE = 'urn:x-smacks-proxy:push:0';
/** How long "no notification" is waited for: a publish is routed within milliseconds. */
const QUIET_MS = 700;

function form(type: string, fields: Record<string, string>): Element {
  const x = new Element('x', { xmlns: DATA, type });
  for (const [name, value] of Object.entries(fields)) x.c('field', { var: name }).c('value').t(value);
  return x;
}

function fields(x: Element | undefined): Record<string, string> {
  return Object.fromEntries((x?.getChildren('field') ?? []).map((f) => [String(f.attrs.var), f.getChildText('value') ?? '']));
}

async function iq(client: RawClient, type: 'get' | 'set', payload: Element, to?: string): Promise<Element> {
  const id = `push-test-${Math.random().toString(36).slice(2)}`;
  client.send(new Element('iq', { type, id, ...(to === undefined ? {} : { to }) }).cnode(payload).root());
  return client.expect(
    (el) => el.is('iq') && el.attrs.id === id && (el.attrs.type === 'result' || el.attrs.type === 'error'),
    `the answer to ${id}`,
  );
}

const isPublish = (node: string) => (el: Element) =>
  el.is('iq') && el.attrs.type === 'set' && el.getChild('pubsub', PUBSUB)?.getChild('publish')?.attrs.node === node;

describeEachLegacyServer((kind) => {
  let fixture: ProxyFixture;
  let events: SmEventLog;
  /** The app server: answers each publish with a result unless told otherwise. */
  let appServer: LoggedIn;
  let carol: LoggedIn;

  beforeAll(async () => {
    fixture = await startProxyFixture({ kind });
    events = recordSmEvents(fixture.proxy);
    appServer = await fixture.login('directtls', USERS.bob, { resource: 'app-server' });
    carol = await fixture.login('directtls', USERS.carol, { resource: 'sender' });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
  });

  /** The next publish to `node`, answered with a result (or the given error condition). */
  async function nextPublish(node: string, error?: string): Promise<Element> {
    const publish = await appServer.client.expect(isPublish(node), `a notification published to ${node}`);
    const answer = new Element('iq', {
      type: error === undefined ? 'result' : 'error',
      id: publish.attrs.id as string,
      to: publish.attrs.from as string,
    });
    if (error !== undefined) answer.c('error', { type: 'cancel' }).c(error, { xmlns: STANZAS });
    appServer.client.send(answer);
    return publish;
  }

  async function enablePush(phone: LoggedIn, node: string): Promise<Element> {
    const enable = new Element('enable', { xmlns: PUSH, jid: appServer.jid, node });
    enable.cnode(form('submit', { FORM_TYPE: 'http://jabber.org/protocol/pubsub#publish-options', secret: `secret-of-${node}` }));
    return iq(phone.client, 'set', enable);
  }

  /** What the user's private XML storage holds for the proxy: the registrations' nodes. */
  async function storedNodes(): Promise<string[]> {
    const reader = await fixture.login('directtls', USERS.alice, { resource: 'reader' });
    const answer = await iq(
      reader.client,
      'get',
      new Element('query', { xmlns: PRIVATE }).c('push-registrations', { xmlns: STORAGE }).root(),
    );
    await reader.client.close();
    expect(answer.attrs.type).toBe('result');
    const stored = answer.getChild('query', PRIVATE)?.getChild('push-registrations', STORAGE);
    return (stored?.getChildren('registration') ?? []).map((r) => String(r.attrs.node));
  }

  /** Alice's phone goes away without a word; the proxy hibernates its session. */
  async function goAway(phone: LoggedIn): Promise<number> {
    const h = phone.client.stanzasReceived;
    phone.client.drop();
    await events.waitFor('hibernationStarted', phone.jid);
    return h;
  }

  it('answers enable, keeps the registration in private storage, and says so in disco#info', async () => {
    const phone = await fixture.login('directtls', USERS.alice, { resource: 'phone', sm: true });
    const enabled = await enablePush(phone, 'node-1');
    expect(enabled.attrs.type, enabled.toString()).toBe('result');
    const bare = phone.jid.split('/')[0]!;
    const disco = await iq(phone.client, 'get', new Element('query', { xmlns: 'http://jabber.org/protocol/disco#info' }), bare);
    // Prosody, ejabberd and jabberd2 all answer for the account (identity account/registered).
    expect(disco.attrs.type, disco.toString()).toBe('result');
    expect(
      disco
        .getChild('query')!
        .getChildren('feature')
        .map((f) => f.attrs.var),
    ).toContain(PUSH);
    await phone.client.close();
    expect(await storedNodes()).toEqual(['node-1']);
  });

  it('notifies once while hibernating, not again within the interval; the resume replays each message once', async () => {
    const phone = await fixture.login('directtls', USERS.alice, { resource: 'phone', sm: true });
    expect((await enablePush(phone, 'node-1')).attrs.type).toBe('result');
    const h = await goAway(phone);

    const first = carol.client.sendMessage(phone.jid, 'are you there?');
    const publish = await nextPublish('node-1');
    const summary = fields(
      publish.getChild('pubsub', PUBSUB)!.getChild('publish')!.getChild('item')!.getChild('notification', PUSH)!.getChild('x', DATA),
    );
    expect(summary).toEqual({ FORM_TYPE: 'urn:xmpp:push:summary', 'message-count': '1', 'last-message-body': 'New Message!' });
    const options = fields(publish.getChild('pubsub', PUBSUB)!.getChild('publish-options')!.getChild('x', DATA));
    expect(options.secret).toBe('secret-of-node-1');
    expect(publish.attrs.from).toBe(phone.jid);

    const second = carol.client.sendMessage(phone.jid, 'hello?');
    await events.waitFor('stanzaQueuedWhileHibernating', phone.jid, (event) => event.queued >= 2);
    await appServer.client.expectNone(isPublish('node-1'), 'a second notification within the interval', QUIET_MS);

    const { client, answer } = await resumeWith(fixture, USERS.alice, phone.smId!, h);
    expect(answer.name).toBe('resumed');
    await client.expectMessage((el) => el.attrs.id === second);
    const ids = client.received.filter((el) => el.is('message')).map((el) => el.attrs.id);
    expect(ids).toEqual([first, second]);
    await client.close();
  });

  it('notifies at once, as the hibernation starts, what the phone had not acknowledged', async () => {
    const phone = await fixture.login('directtls', USERS.alice, { resource: 'phone', sm: true });
    expect((await enablePush(phone, 'node-1')).attrs.type).toBe('result');
    // Sent to the phone, never acknowledged: its connection may have died with it on the way.
    const id = carol.client.sendMessage(phone.jid, 'did you get this?');
    await phone.client.expectMessage((el) => el.attrs.id === id);
    const h = await goAway(phone);
    const publish = await nextPublish('node-1');
    expect(publish.toString()).toContain('<value>1</value>');
    const { client, answer } = await resumeWith(fixture, USERS.alice, phone.smId!, h - 1);
    expect(answer.name).toBe('resumed');
    await client.expectMessage((el) => el.attrs.id === id);
    await client.close();
  });

  it('keeps the registration for the next session and a new proxy process; an app server error removes it', async () => {
    // A proxy that has never seen Alice: what it knows comes from the legacy server.
    const restarted = await startProxyFixture({ server: fixture.server });
    const restartedEvents = recordSmEvents(restarted.proxy);
    try {
      const phone = await restarted.login('directtls', USERS.alice, { resource: 'phone', sm: true });
      // The registration is read at bind; a query answered afterwards shows it was read.
      await phone.client.syncWithServer();
      const h = phone.client.stanzasReceived;
      phone.client.drop();
      await restartedEvents.waitFor('hibernationStarted', phone.jid);
      carol.client.sendMessage(phone.jid, 'after a restart');
      await nextPublish('node-1', 'item-not-found');
      await waitUntil(async () => (await storedNodes()).length === 0, 'the registration removed from private storage', 5000);
      carol.client.sendMessage(phone.jid, 'no one to notify');
      await restartedEvents.waitFor('stanzaQueuedWhileHibernating', phone.jid, (event) => event.queued >= 2);
      await appServer.client.expectNone(isPublish('node-1'), 'a notification to a removed registration', QUIET_MS);
      const { client } = await resumeWith(restarted, USERS.alice, phone.smId!, h);
      await client.close();
    } finally {
      await restarted.stop();
    }
  }, 30_000);

  it('disable removes the registrations of that app server; a bad request is refused', async () => {
    const phone = await fixture.login('directtls', USERS.alice, { resource: 'phone', sm: true });
    expect((await enablePush(phone, 'node-2')).attrs.type).toBe('result');
    expect((await enablePush(phone, 'node-3')).attrs.type).toBe('result');
    expect(await storedNodes()).toEqual(['node-2', 'node-3']);
    const disabled = await iq(phone.client, 'set', new Element('disable', { xmlns: PUSH, jid: appServer.jid, node: 'node-2' }));
    expect(disabled.attrs.type).toBe('result');
    expect(await storedNodes()).toEqual(['node-3']);
    expect((await iq(phone.client, 'set', new Element('disable', { xmlns: PUSH, jid: appServer.jid }))).attrs.type).toBe('result');
    expect(await storedNodes()).toEqual([]);
    const bad = await iq(phone.client, 'set', new Element('enable', { xmlns: PUSH, jid: appServer.jid }));
    expect(bad.getChild('error')?.getChild('bad-request', STANZAS)).toBeDefined();
    await phone.client.close();
  });
});
