/**
 * The scenario both real-client suites (slixmpp.test.ts, libstrophe.test.ts) run against every
 * legacy server under test, over STARTTLS and direct TLS: a client library nobody here wrote, as a
 * child process speaking the line protocol of test/support/child-client.ts, logs in as alice
 * through a TCP relay to the proxy, enables XEP-0198 with resumption and chats with bob (a scripted
 * RawClient on the proxy). The relay then cuts alice's connection (STARTTLS: FIN, direct TLS: RST;
 * no stream close); bob sends while she is away (the proxy queues it in her hibernating session);
 * the client reconnects by itself through the relay and resumes. Asserted on alice's events, on
 * bob's stanzas and on the proxy's SM events: the resume is a `<resumed/>` (no new session), the
 * missed messages arrive once, in order, with a XEP-0203 delay, nothing is duplicated either way,
 * and the chat goes on.
 *
 * Every client prints: ready {library, version}, authenticated {mechanism}, session_start {jid},
 * sm_enabled {id, resume}, message {from, type, id, body, delay}, disconnected, reconnecting, resumed,
 * sm_failed, closed, error; and takes `send <to> <id> <body>` and `quit`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SmEventMap } from '../../../src/session/events.js';
import type { ChildClient, ChildEvent } from '../../support/child-client.js';
import { legacyServersUnderTest } from '../../support/legacy-server.js';
import { startProxyFixture, USERS, type LoggedIn, type ProxyFixture } from '../../support/proxy-fixture.js';
import type { Element } from '../../support/raw-client.js';
import { startTcpRelay, type TcpRelay } from '../../support/tcp-relay.js';
import { waitUntil } from '../../support/wait.js';

export type ClientTls = 'starttls' | 'directtls';

export interface ClientStartParams {
  /** A bare JID: the server assigns the resource. */
  readonly jid: string;
  readonly password: string;
  readonly host: string;
  readonly port: number;
  readonly tls: ClientTls;
  readonly reconnectDelayMs: number;
}

export interface RealClientSuite {
  /** The library's name, as the client's `ready` event reports it. */
  readonly library: string;
  readonly start: (params: ClientStartParams) => ChildClient;
}

/**
 * Long enough for bob's messages to be queued in the hibernating session before the client comes
 * back (on loopback that takes milliseconds; the test checks the order and fails if it was not so).
 */
const RECONNECT_DELAY_MS = 1_000;
const BEFORE = ['before 1', 'before 2', 'before 3'];
const FROM_ALICE = ['from alice 1', 'from alice 2', 'from alice 3'];
const AWAY = ['while away 1', 'while away 2', 'while away 3'];
const AFTER = ['after resume 1', 'after resume 2'];
const BACK = ['alice is back 1'];

/** How the relay cuts the client's connection, per transport, so that both ways are covered. */
const CUT: Record<ClientTls, 'fin' | 'reset'> = { starttls: 'fin', directtls: 'reset' };

interface SmEventLog {
  readonly started: SmEventMap['hibernationStarted'][0][];
  readonly queued: SmEventMap['stanzaQueuedWhileHibernating'][0][];
  readonly ended: SmEventMap['hibernationEnded'][0][];
  readonly stop: () => void;
}

function recordSmEvents(fixture: ProxyFixture): SmEventLog {
  const events = fixture.proxy.events;
  const log: Omit<SmEventLog, 'stop'> = { started: [], queued: [], ended: [] };
  const onStarted = (e: SmEventMap['hibernationStarted'][0]): void => void log.started.push(e);
  const onQueued = (e: SmEventMap['stanzaQueuedWhileHibernating'][0]): void => void log.queued.push(e);
  const onEnded = (e: SmEventMap['hibernationEnded'][0]): void => void log.ended.push(e);
  events.on('hibernationStarted', onStarted);
  events.on('stanzaQueuedWhileHibernating', onQueued);
  events.on('hibernationEnded', onEnded);
  return {
    ...log,
    stop() {
      events.off('hibernationStarted', onStarted);
      events.off('stanzaQueuedWhileHibernating', onQueued);
      events.off('hibernationEnded', onEnded);
    },
  };
}

/** [`${prefix}1`, bodies[0]], [`${prefix}2`, bodies[1]], …: the ids and bodies bob sends. */
const zip = (prefix: string, bodies: readonly string[]): [string, string][] => bodies.map((body, i) => [`${prefix}${i + 1}`, body]);
const bodyOf = (message: Element): string | undefined => message.getChildText('body') ?? undefined;
const stringField = (event: ChildEvent, field: string): string => {
  const value = event[field];
  if (typeof value !== 'string') throw new Error(`event ${JSON.stringify(event)}: '${field}' is not a string`);
  return value;
};

export function describeRealClientResumption(suite: RealClientSuite): void {
  describe.each(legacyServersUnderTest())(`${suite.library} through the proxy to %s`, (kind) => {
    let fixture: ProxyFixture;
    let relay: TcpRelay | undefined;
    let alice: ChildClient | undefined;
    let bob: LoggedIn | undefined;
    let smEvents: SmEventLog | undefined;

    beforeAll(async () => {
      fixture = await startProxyFixture({ kind });
    });

    afterEach(async () => {
      smEvents?.stop();
      await alice?.kill();
      // Bob acknowledges what he received before closing, as a client should: the proxy would
      // otherwise bounce it to alice at the close, as mod_smacks does.
      if (bob !== undefined && !bob.client.isClosed) {
        bob.client.ack();
        await bob.client.close().catch(() => bob?.client.drop());
      }
      await relay?.stop();
      alice = undefined;
      bob = undefined;
      relay = undefined;
      smEvents = undefined;
    });

    afterAll(async () => {
      await fixture?.stop();
    });

    it.each(['starttls', 'directtls'] as const)('over %s: logs in, chats, is cut, resumes with nothing lost or duplicated', async (tls) => {
      const clientRelay = await startTcpRelay('127.0.0.1', fixture.ports[tls]);
      relay = clientRelay;
      const sm = recordSmEvents(fixture);
      smEvents = sm;
      const loggedIn = await fixture.login('starttls', USERS.bob, { sm: true });
      bob = loggedIn;
      const bobClient = loggedIn.client;
      const bobJid = loggedIn.jid;

      // Login: SASL relayed to the legacy server, stream management enabled with resumption.
      const client = suite.start({
        jid: `${USERS.alice.username}@${fixture.domain}`,
        password: USERS.alice.password,
        host: '127.0.0.1',
        port: clientRelay.port,
        tls,
        reconnectDelayMs: RECONNECT_DELAY_MS,
      });
      alice = client;
      const ready = await client.expectEvent('ready');
      expect(ready.library).toBe(suite.library);
      const authenticated = await client.expectEvent('authenticated');
      const aliceJid = stringField(await client.expectEvent('session_start'), 'jid');
      expect(aliceJid.startsWith(`${USERS.alice.username}@${fixture.domain}/`)).toBe(true);
      const enabled = await client.expectEvent('sm_enabled');
      expect(enabled.resume).toBe(true);
      console.info(
        `${suite.library} ${String(ready.version)} via ${tls} to ${kind}: SASL ${String(authenticated.mechanism)}, bound ${aliceJid}`,
      );

      // Chat both ways.
      const sendFromBob = (bodies: readonly string[], idPrefix: string): void =>
        zip(idPrefix, bodies).forEach(([id, body]) => bobClient.sendMessage(aliceJid, body, id));
      const expectAtAlice = async (bodies: readonly string[]): Promise<ChildEvent[]> => {
        const received: ChildEvent[] = [];
        for (const body of bodies)
          received.push(
            await client.expectEvent('message', (e) => e.from === bobJid && e.body === body, `the message '${body}' from ${bobJid}`),
          );
        return received;
      };
      const sendFromAlice = (bodies: readonly string[], idPrefix: string): void =>
        zip(idPrefix, bodies).forEach(([id, body]) => client.send(`send ${bobJid} ${id} ${body}`));
      const expectAtBob = async (bodies: readonly string[]): Promise<void> => {
        for (const body of bodies) await bobClient.expectMessage((m) => m.attrs.from === aliceJid && bodyOf(m) === body);
      };

      sendFromBob(BEFORE, 'b');
      for (const message of await expectAtAlice(BEFORE)) expect(message.delay).toBeNull();
      sendFromAlice(FROM_ALICE, 'a');
      await expectAtBob(FROM_ALICE);

      // The cut: no stream close from either side; the proxy keeps alice's session.
      const open = clientRelay.connections.filter((c) => !c.closed);
      expect(open).toHaveLength(1);
      open[0]!.cut(CUT[tls]);
      await client.expectEvent('disconnected', () => true, 'the client to notice the cut');
      await waitUntil(() => sm.started.some((e) => e.jid === aliceJid), `the proxy to hibernate ${aliceJid}`);

      // Bob writes while she is away: queued in the hibernating session.
      sendFromBob(AWAY, 'w');
      await waitUntil(
        () => sm.queued.filter((e) => e.jid === aliceJid && e.kind === 'message').length === AWAY.length,
        `the proxy to queue ${AWAY.length} messages for hibernating ${aliceJid} (queued: ${JSON.stringify(sm.queued)})`,
      );
      client.assertNone((e) => e.event === 'reconnecting', `reconnect before bob's messages were queued (raise RECONNECT_DELAY_MS)`);

      // The client comes back by itself, through the relay, and resumes.
      await client.expectEvent('reconnecting', () => true, 'the client to reconnect on its own', RECONNECT_DELAY_MS + 5_000);
      const resumed = await client.expectEvent('resumed', () => true, '<resumed/>');
      expect(clientRelay.connections).toHaveLength(2);
      await waitUntil(() => sm.ended.some((e) => e.jid === aliceJid), `the hibernation of ${aliceJid} to end`);
      expect(sm.ended.filter((e) => e.jid === aliceJid).map((e) => e.reason)).toEqual(['resumed']);
      for (const message of await expectAtAlice(AWAY)) {
        expect(typeof message.delay, `a XEP-0203 <delay/> on the replayed ${JSON.stringify(message)}`).toBe('string');
      }

      // The chat goes on both ways.
      sendFromBob(AFTER, 'r');
      for (const message of await expectAtAlice(AFTER)) expect(message.delay).toBeNull();
      sendFromAlice(BACK, 'k');
      await expectAtBob(BACK);

      // Alice's view: every message bob sent, once, in order (the last one came after any
      // duplicate of the earlier ones could have), none bounced; one session, resumed once, never
      // re-bound. (Only this test's bob counts: a server may keep messages for an earlier test's
      // alice and hand them to this one.)
      const fromBob = client.events
        .filter((e) => e.event === 'message' && e.from === bobJid)
        .map(({ type, id, body }) => ({ type, id, body }));
      const sentByBob = [...zip('b', BEFORE), ...zip('w', AWAY), ...zip('r', AFTER)].map(([id, body]) => ({ type: 'chat', id, body }));
      expect(fromBob, `alice's events:\n${client.events.map((e) => JSON.stringify(e)).join('\n')}`).toEqual(sentByBob);
      expect(client.events.filter((e) => e.event === 'session_start')).toHaveLength(1);
      expect(client.events.filter((e) => e.event === 'sm_enabled')).toHaveLength(1);
      expect(client.events.filter((e) => e.event === 'resumed')).toEqual([resumed]);
      client.assertNone((e) => e.event === 'sm_failed' || e.event === 'unparsed' || e.event === 'error', 'failure or unparsed output');

      // Bob's view: alice's messages once, in order, from the one full JID.
      const fromAlice = bobClient.received.filter((s) => s.is('message') && s.attrs.from === aliceJid).map(bodyOf);
      expect(fromAlice).toEqual([...FROM_ALICE, ...BACK]);

      await client.stop();
      expect(client.exit).toBe('exited with code 0');
      expect(client.events.at(-1)?.event).toBe('closed');
    });
  });
}
