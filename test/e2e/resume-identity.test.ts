import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BEHAVIOUR, legacyServersUnderTest, startLegacyServer, type LegacyServer, type LegacyUser } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS, type RawClient } from '../support/raw-client.js';
import { recordSmEvents, resumeWith, subscribe, type SmEventLog } from '../support/sm-steps.js';
import { startTcpRelay, type TcpRelay } from '../support/tcp-relay.js';

// XEP-0198 §5: "the server MUST verify that the resuming entity is the same as the original
// entity". How the proxy learns the resuming account in front of each legacy server (from the SASL
// exchange when it names the account exactly, else from a throwaway bind on the temporary upstream
// stream), and what that costs the user's contacts and the hibernated session. The upstream runs
// through a relay so that the test reads what the temporary stream said to the legacy server.

const BIND = NS.bind;

/**
 * What alice's hibernated session looks like to the test: a contact (`bob`, whichever account
 * plays him) subscribed to her presence, who sent her `queuedId` while she was away.
 */
interface Hibernated {
  readonly alice: LoggedIn;
  readonly bob: LoggedIn;
  readonly queuedId: string;
}

async function hibernatingAlice(fixture: ProxyFixture, events: SmEventLog, resource: string, contact: LegacyUser): Promise<Hibernated> {
  const alice = await fixture.login('directtls', USERS.alice, { resource, sm: true });
  const bob = await fixture.login('directtls', contact, { resource: `watching-${resource}` });
  alice.client.presence();
  bob.client.presence();
  await subscribe(bob, alice);
  alice.client.drop('reset');
  await events.waitFor('hibernationStarted', alice.jid);
  const queuedId = `away-${resource}`;
  bob.client.sendMessage(alice.jid, 'while you were away', queuedId);
  await events.waitFor('stanzaQueuedWhileHibernating', alice.jid);
  return { alice, bob, queuedId };
}

/**
 * Nothing about alice's resources reached her contact from `since` on (an index into what he
 * received): no presence from a second resource, no unavailable from the hibernated one.
 */
async function contactSawNoResourceOfAlice(bob: LoggedIn, since: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const seen = bob.client.received
    .slice(since)
    .filter(
      (el) => el.is('presence') && String(el.attrs.from).startsWith(`${USERS.alice.username}@${bob.jid.split('@')[1]!.split('/')[0]!}/`),
    );
  expect(seen.map(String), "presence of alice's resources during the resume").toEqual([]);
}

/** The session goes on after the resume: a message from bob arrives on the resumed stream. */
async function stillChatting(resumed: RawClient, { alice, bob }: Hibernated): Promise<void> {
  const id = `after-${bob.client.received.length}`;
  bob.client.sendMessage(alice.jid, 'and now', id);
  await resumed.expectMessage((m) => m.attrs.id === id);
}

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let relay: TcpRelay;
  let fixture: ProxyFixture;
  let events: SmEventLog;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    relay = await startTcpRelay(server.host, server.c2sPort);
    fixture = await startProxyFixture({
      server,
      streamManagement: { maxHibernationSeconds: 600 },
      domains: { [server.domain]: { upstream: { host: '127.0.0.1', port: relay.port, connectTimeoutSeconds: 2 } } },
    });
    events = recordSmEvents(fixture.proxy);
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await relay?.stop();
    await server?.stop();
  });

  /**
   * Resumes alice's session as `user`; returns the answer and what the temporary upstream stream
   * sent the legacy server (with jabberd2, the proxy may have reconnected once: README,
   * Compatibility; then the transcripts of both connections).
   */
  async function resumeAs(user: LegacyUser, smId: string): Promise<{ client: RawClient; answer: string; temporaryStream: string }> {
    const before = relay.connections.length;
    const { client, answer } = await resumeWith(fixture, user, smId, 0);
    const opened = relay.connections.slice(before);
    expect(opened.length, 'upstream connections for the resuming client').toBeGreaterThanOrEqual(1);
    return { client, answer: answer.name, temporaryStream: opened.map((connection) => connection.fromProxy).join('') };
  }

  it('refuses an authorization identity naming another account (ejabberd would log bob in as alice); the stream goes on', async () => {
    const client = await fixture.connect('directtls');
    const before = relay.connections.length;
    const asAlice = Buffer.from(`alice@${server.domain}\0${USERS.bob.username}\0${USERS.bob.password}`).toString('base64');
    client.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${asAlice}</auth>`);
    const failure = await client.expect((el) => el.is('failure', NS.sasl), 'the SASL failure');
    expect(failure.getChild('invalid-authzid')).toBeDefined();
    const opened = relay.connections.slice(before);
    expect(opened.map((connection) => connection.fromProxy).join(''), 'the <auth/> never reached the legacy server').not.toContain(asAlice);
    await client.authenticatePlain(USERS.bob.username, USERS.bob.password);
    expect(await client.bind('own-account')).toBe(`bob@${server.domain}/own-account`);
    await client.close();
  });

  it('SASL names the account exactly: no second resource is bound upstream, contacts see nothing, the missed message is replayed', async () => {
    const hibernated = await hibernatingAlice(fixture, events, 'sasl-named', USERS.bob);
    const since = hibernated.bob.client.received.length;
    const { client, answer, temporaryStream } = await resumeAs(USERS.alice, hibernated.alice.smId!);
    expect(answer).toBe('resumed');
    expect(temporaryStream, 'the temporary stream bound no resource').not.toContain(BIND);
    await client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
    await contactSawNoResourceOfAlice(hibernated.bob, since);
    await stillChatting(client, hibernated);
    await client.close();
    await hibernated.bob.client.close();
  });

  it('another spelling of the user name (ALICE) is left to the legacy server: a throwaway bind, invisible to contacts', async () => {
    const hibernated = await hibernatingAlice(fixture, events, 'other-spelling', USERS.carol);
    const since = hibernated.bob.client.received.length;
    const shouting = { username: USERS.alice.username.toUpperCase(), password: USERS.alice.password };
    const smId = hibernated.alice.smId!;
    switch (BEHAVIOUR[kind].upperCaseLogin) {
      case 'binds-canonical': {
        const { client, answer, temporaryStream } = await resumeAs(shouting, smId);
        expect(temporaryStream, 'the identity check bound a resource on the temporary stream').toContain(BIND);
        expect(answer).toBe('resumed');
        await client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
        await stillChatting(client, hibernated);
        await contactSawNoResourceOfAlice(hibernated.bob, since);
        await client.close();
        break;
      }
      case 'binds-as-typed': {
        // The server binds ALICE@localhost: the same account but for ASCII case, which every
        // server's rule folds (README, Resumption and the legacy server). Resumed.
        const { client, answer, temporaryStream } = await resumeAs(shouting, smId);
        expect(temporaryStream, 'the identity check bound a resource on the temporary stream').toContain(BIND);
        expect(answer).toBe('resumed');
        await client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
        await stillChatting(client, hibernated);
        await contactSawNoResourceOfAlice(hibernated.bob, since);
        await client.close();
        break;
      }
      case 'refused': {
        // ALICE is no account on this server: SASL fails before any resume is asked.
        const client = await fixture.connect('directtls');
        await expect(client.authenticatePlain(shouting.username, shouting.password)).rejects.toThrow(/not-authorized/);
        const again = await resumeAs(USERS.alice, smId);
        expect(again.answer).toBe('resumed');
        await again.client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
        await contactSawNoResourceOfAlice(hibernated.bob, since);
        await again.client.close();
        break;
      }
    }
    await hibernated.bob.client.close();
  });
});

describe.runIf(legacyServersUnderTest().includes('ejabberd'))(
  'in front of ejabberd allowing one resource per account (max_user_sessions: 1)',
  () => {
    let server: LegacyServer;
    let fixture: ProxyFixture;
    let events: SmEventLog;

    beforeAll(async () => {
      const { startEjabberd } = await import('../support/ejabberd.js');
      server = await startEjabberd({ users: Object.values(USERS), maxUserSessions: 1 });
      fixture = await startProxyFixture({ server, streamManagement: { maxHibernationSeconds: 600 } });
      events = recordSmEvents(fixture.proxy);
    }, 60_000);

    afterAll(async () => {
      await fixture?.stop();
      await server?.stop();
    });

    it('resumes: the SASL exchange confirms the account, so no second resource replaces the hibernated session', async () => {
      const hibernated = await hibernatingAlice(fixture, events, 'one-resource', USERS.bob);
      const { client, answer } = await resumeWith(fixture, USERS.alice, hibernated.alice.smId!, 0);
      expect(answer.name).toBe('resumed');
      await client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
      await stillChatting(client, hibernated);
      await client.close();
      await hibernated.bob.client.close();
    });

    it('another spelling (ALICE) needs the throwaway bind, which replaces the hibernated session: the resume fails cleanly, nothing queued is lost', async () => {
      const hibernated = await hibernatingAlice(fixture, events, 'one-resource-shouting', USERS.carol);
      const shouting = { username: USERS.alice.username.toUpperCase(), password: USERS.alice.password };
      const { client, answer } = await resumeWith(fixture, shouting, hibernated.alice.smId!, 0);
      expect(answer.toString()).toMatch(/^<failed /);
      expect(answer.getChildText('text'), 'the <failed/> says why').toMatch(/legacy server/);
      await client.bind('after-failed');
      await client.expectMessage((m) => m.attrs.id === hibernated.queuedId);
      await client.expectNone((el) => el.is('error', NS.stream), 'a stream error after the failed resume', 1000);
      await client.close();
      await hibernated.bob.client.close();
    });
  },
);
