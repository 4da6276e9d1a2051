import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../support/proxy-fixture.js';
import { NS, type RawClient } from '../support/raw-client.js';
import { bodies, collectMessages, resumeWith, subscribe } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';

// "Nothing acknowledged is lost silently" at the end of a session (README, What it does): a
// contact keeps sending to the user's full JID across the moment the session ends, and every
// message must be accounted for: received by the user's client, answered to the sender with an
// error (by the proxy, or by the legacy server once the resource is gone), or kept by the legacy
// server's offline storage for the user's next login. The sender is behind a second proxy, so that
// a shutdown of the user's proxy leaves it alone.

const SEND_EVERY_MS = 10;

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  /** The user's proxy. */
  let fixture: ProxyFixture;
  /** The contact's proxy, never stopped during a test. */
  let contacts: ProxyFixture;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server, streamManagement: { hibernationSeconds: 1, maxHibernationSeconds: 1 } });
    contacts = await startProxyFixture({ server });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await contacts?.stop();
    await server?.stop();
  });

  /** Sends two messages to `to` every SEND_EVERY_MS until `untilMs` has passed; returns their ids in order. */
  async function sendFor(sender: RawClient, to: string, untilMs: number, prefix: string): Promise<string[]> {
    const ids: string[] = [];
    const deadline = Date.now() + untilMs;
    while (Date.now() < deadline) {
      ids.push(sender.sendMessage(to, `m${ids.length}`, `${prefix}-${ids.length}`));
      ids.push(sender.sendMessage(to, `m${ids.length}`, `${prefix}-${ids.length}`));
      await new Promise((resolve) => setTimeout(resolve, SEND_EVERY_MS));
    }
    return ids;
  }

  /** The ids of `<message/>` elements `client` received, errors or not. */
  function messageIds(client: RawClient, type: 'error' | 'not-error'): Set<string> {
    return new Set(
      client.received
        .filter((el) => el.is('message') && (el.attrs.type === 'error') === (type === 'error'))
        .map((el) => el.attrs.id as string),
    );
  }

  /**
   * Every id in `sent` was received by the user before the end (`delivered`), bounced to the
   * sender, or is delivered from offline storage when the user logs in again.
   */
  async function expectAllAccountedFor(sent: readonly string[], delivered: ReadonlySet<string>, sender: RawClient, resource: string) {
    const later = await fixture.login('directtls', USERS.alice, { resource });
    later.client.presence();
    const missing = (): string[] => {
      const bounced = messageIds(sender, 'error');
      const offline = messageIds(later.client, 'not-error');
      return sent.filter((id) => !delivered.has(id) && !bounced.has(id) && !offline.has(id));
    };
    await waitUntil(() => missing().length === 0, 'every message delivered, bounced or stored offline', 8000).catch(() => undefined);
    expect(missing(), `lost of ${sent.length}`).toEqual([]);
    await later.client.close();
  }

  async function contact(resource: string): Promise<LoggedIn> {
    return contacts.login('directtls', USERS.bob, { resource });
  }

  it('at expiry: messages queued while hibernating and those arriving as the session ends are all answered', async () => {
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'expiry', sm: true });
    alice.client.presence();
    await alice.client.syncWithServer();
    const bob = await contact('expiry');
    alice.client.drop();
    await waitUntil(() => fixture.proxy.registry.sessions().next().value?.stateName === 'hibernating', 'alice to hibernate');
    // Hibernation lasts 1 s: the messages cross its end by a second.
    const sent = await sendFor(bob.client, alice.jid, 2000, 'exp');
    await waitUntil(() => fixture.proxy.registry.size === 0, 'the session to end');
    await expectAllAccountedFor(sent, new Set(), bob.client, 'after-expiry');
    await bob.client.close();
  }, 30_000);

  it('at a stream error: what the client had not acknowledged and what arrives after are answered', async () => {
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'error', sm: true });
    alice.client.presence();
    await alice.client.syncWithServer();
    const bob = await contact('error');
    const sending = sendFor(bob.client, alice.jid, 1500, 'err');
    await new Promise((resolve) => setTimeout(resolve, 500));
    // Not well-formed: the proxy ends the stream with <not-well-formed/>.
    alice.client.sendRaw('<message><</message>');
    await alice.client.expectClosed();
    const sent = await sending;
    // Received by the client, but never acknowledged: answered to the sender too (at least once).
    const delivered = messageIds(alice.client, 'not-error');
    await expectAllAccountedFor(sent, delivered, bob.client, 'after-error');
    await bob.client.close();
  }, 30_000);

  it('at a clean close: what arrives after the client closed its stream is answered', async () => {
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'close', sm: true });
    alice.client.presence();
    await alice.client.syncWithServer();
    const bob = await contact('close');
    const sending = sendFor(bob.client, alice.jid, 1500, 'cls');
    await new Promise((resolve) => setTimeout(resolve, 500));
    alice.client.ack();
    await alice.client.close();
    const sent = await sending;
    await expectAllAccountedFor(sent, messageIds(alice.client, 'not-error'), bob.client, 'after-close');
    await bob.client.close();
  }, 30_000);

  describe('at shutdown', () => {
    let doomed: ProxyFixture;

    beforeAll(async () => {
      doomed = await startProxyFixture({ server, streamManagement: { hibernationSeconds: 60 } });
    });

    afterAll(async () => {
      await doomed?.stop();
    });

    it("a hibernating session's queue and what arrives while the proxy stops are answered", async () => {
      const alice = await doomed.login('directtls', USERS.alice, { resource: 'shutdown', sm: true });
      alice.client.presence();
      await alice.client.syncWithServer();
      const bob = await contact('shutdown');
      alice.client.drop();
      await waitUntil(() => doomed.proxy.registry.sessions().next().value?.stateName === 'hibernating', 'alice to hibernate');
      const sending = sendFor(bob.client, alice.jid, 1000, 'sht');
      await new Promise((resolve) => setTimeout(resolve, 700));
      const stopped = doomed.proxy.stop();
      const sent = await sending;
      await stopped;
      await expectAllAccountedFor(sent, new Set(), bob.client, 'after-shutdown');
      await bob.client.close();
    }, 30_000);
  });

  describe('a new login of the same resource instead of a resume', () => {
    let patient: ProxyFixture;

    beforeAll(async () => {
      patient = await startProxyFixture({ server, streamManagement: { hibernationSeconds: 60 } });
    });

    afterAll(async () => {
      await patient?.stop();
    });

    /** The `<message/>` ids `client` received after the result of its bind, in order. */
    const idsAfterBind = (client: RawClient): string[] => {
      const bindAt = client.received.findIndex((el) => el.is('iq') && el.getChild('bind', NS.bind) !== undefined);
      return client.received
        .slice(bindAt)
        .filter((el) => el.is('message'))
        .map((el) => el.attrs.id as string);
    };

    it.each([{ how: 'hibernating' }, { how: 'attached' }] as const)(
      'hands the unacknowledged messages of a session still $how to the login, first and in order; nothing is bounced',
      async ({ how }) => {
        const resource = `relogin-${how}`;
        const alice = await patient.login('directtls', USERS.alice, { resource, sm: true });
        alice.client.presence();
        await alice.client.syncWithServer();
        const bob = await contact(resource);
        const queued = ['Q1', 'Q2', 'Q3'].map((id) => bob.client.sendMessage(alice.jid, `queued ${id}`, id));
        // Received or not, never acknowledged: the app is killed, or gives up on a dead connection.
        await alice.client.expectMessage((m) => m.attrs.id === 'Q3');
        if (how === 'hibernating') {
          alice.client.drop();
          await waitUntil(() => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
        }
        const again = await patient.login('directtls', USERS.alice, { resource });
        expect(again.jid).toBe(alice.jid);
        await again.client.expectMessage((m) => m.attrs.id === 'Q3');
        expect(idsAfterBind(again.client).slice(0, 3)).toEqual(queued);
        bob.client.sendMessage(alice.jid, 'after the login', 'A1');
        await again.client.expectMessage((m) => m.attrs.id === 'A1');
        if (how === 'attached') {
          // RFC 6120 §4.9.3.3, as the legacy server itself would have said.
          await alice.client.expectStreamError('conflict');
        }
        expect(messageIds(bob.client, 'error'), 'no message bounced').toEqual(new Set());
        await again.client.close();
        await bob.client.close();
      },
      30_000,
    );

    it('holds them for an <enable/> the login sends after its bind result: counted, a cut then loses nothing', async () => {
      const resource = 'relogin-enable-late';
      const alice = await patient.login('directtls', USERS.alice, { resource, sm: true });
      const bob = await contact(resource);
      const queued = ['E1', 'E2'].map((id) => bob.client.sendMessage(alice.jid, `queued ${id}`, id));
      await alice.client.expectMessage((m) => m.attrs.id === 'E2');
      alice.client.drop();
      await waitUntil(() => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');

      const again = await patient.login('directtls', USERS.alice, { resource });
      const enabled = await again.client.enableSm({ resume: true });
      expect(enabled.name).toBe('enabled');
      await again.client.expectMessage((m) => m.attrs.id === 'E2');
      const enabledAt = again.client.received.findIndex((el) => el.is('enabled', NS.sm3));
      const firstAt = again.client.received.findIndex((el) => el.is('message') && el.attrs.id === 'E1');
      expect(firstAt, 'after <enabled/>').toBeGreaterThan(enabledAt);

      // Never acknowledged, then cut: the resume replays them, so they were counted.
      again.client.drop();
      await waitUntil(
        () => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating' && s.smId === enabled.attrs.id),
        'the login to hibernate',
      );
      const { client: back, answer } = await resumeWith(patient, USERS.alice, enabled.attrs.id as string, 0);
      expect(answer.name).toBe('resumed');
      expect(bodies(await collectMessages(back, 2, 'the replay'))).toEqual(queued.map((id) => `queued ${id}`));
      expect(messageIds(bob.client, 'error'), 'no message bounced').toEqual(new Set());
      await back.close();
      await bob.client.close();
    }, 30_000);
  });

  // Last in the file: the restart ends every stream of this legacy server.
  describe.runIf(kind !== 'jabberd2')('across a restart of the legacy server', () => {
    let patient: ProxyFixture;

    beforeAll(async () => {
      patient = await startProxyFixture({ server, streamManagement: { hibernationSeconds: 60 } });
    });

    afterAll(async () => {
      await patient?.stop();
    });

    it('resumes a hibernating session on a new upstream stream bound to the same resource: its presence told again, its queue replayed, nothing lost', async () => {
      const alice = await patient.login('directtls', USERS.alice, { resource: 'restart', sm: true });
      alice.client.presence();
      const bob = await contact('restart');
      bob.client.presence();
      await subscribe(bob, alice);
      bob.client.sendMessage(alice.jid, 'seen', 'R0');
      await alice.client.expectMessage((m) => m.attrs.id === 'R0');
      alice.client.ack();
      await alice.client.ackRequest();
      alice.client.drop();
      await waitUntil(() => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'), 'alice to hibernate');
      const queued = ['R1', 'R2', 'R3'];
      for (const id of queued) bob.client.sendMessage(alice.jid, id.toLowerCase(), id);
      await waitUntil(
        () => [...patient.proxy.registry.sessions()].some((s) => s.snapshot()?.sm.queue.entries.length === queued.length),
        'the three messages to be queued',
      );

      await server.restart!();
      await waitUntil(() => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'stranded'), 'the session to be stranded');
      // Bob's own stream ended with the restart: he logs in again, and is online before alice comes back.
      const bobAgain = await contact('after-restart');
      bobAgain.client.presence();
      await bobAgain.client.syncWithServer();

      const { client, answer } = await resumeWith(patient, USERS.alice, alice.smId!, alice.client.stanzasReceived);
      expect(answer.name).toBe('resumed');
      const messages = await Promise.all(queued.map((id) => client.expectMessage((m) => m.attrs.id === id)));
      expect(messages.map((m) => m.getChildText('body'))).toEqual(['r1', 'r2', 'r3']);
      expect(client.received.filter((el) => el.is('message')).map((el) => el.attrs.id)).toEqual(queued);
      // The restarted server knows alice's session again, under the same full JID: her presence
      // reaches her contact, and his messages reach her.
      await bobAgain.client.expect(
        (el) => el.is('presence') && el.attrs.from === alice.jid && el.attrs.type === undefined,
        "alice's presence, told again to the restarted server",
      );
      bobAgain.client.sendMessage(alice.jid, 'again', 'R4');
      await client.expectMessage((m) => m.attrs.id === 'R4');
      expect(await client.ackRequest(), 'the session counted her stanzas from before the restart').toBeGreaterThan(0);
      await client.close();
      await bobAgain.client.close();
    }, 60_000);

    it('keeps a connected session through the restart: its client is cut off without a stream error, resumes, and gets what it had not acknowledged', async () => {
      const alice = await patient.login('directtls', USERS.alice, { resource: 'connected-restart', sm: true });
      alice.client.presence();
      await alice.client.syncWithServer();
      const bob = await contact('connected-restart');
      bob.client.sendMessage(alice.jid, 'unacked', 'C1');
      await alice.client.expectMessage((m) => m.attrs.id === 'C1');
      // Alice received C1 but has not acknowledged it when the server stops.
      await server.restart!();
      await alice.client.expectClosed();
      expect(alice.client.received.filter((el) => el.is('error', NS.stream)).map(String), 'no stream error').toEqual([]);
      await waitUntil(() => [...patient.proxy.registry.sessions()].some((s) => s.stateName === 'stranded'), 'the session to be stranded');

      const { client, answer } = await resumeWith(patient, USERS.alice, alice.smId!, 0);
      expect(answer.name).toBe('resumed');
      await client.expectMessage((m) => m.attrs.id === 'C1');
      const bobAgain = await contact('connected-restart-again');
      bobAgain.client.sendMessage(alice.jid, 'after', 'C2');
      await client.expectMessage((m) => m.attrs.id === 'C2');
      await client.close();
      await bobAgain.client.close();
    }, 60_000);
  });
});
