/**
 * Steps the stream-management end-to-end files share: several connections, or a client and the
 * proxy's events, put together into one protocol step (a resume on a fresh connection, a presence
 * subscription between two accounts, the replay of N messages). Single-connection verbs live on
 * RawClient.
 */
import type { SmEventMap } from '../../src/session/events.js';
import type { Proxy } from '../../src/proxy.js';
import type { LegacyServer, LegacyUser } from './legacy-server.js';
import type { LoggedIn, ProxyFixture } from './proxy-fixture.js';
import { NS, RawClient, type Element, type RawTransport } from './raw-client.js';

export { bodies } from './sm-scenarios.js';

/** The next `count` messages `client` receives, in arrival order; the error says how many came. */
export async function collectMessages(client: RawClient, count: number, what: string, timeoutMs = 5000): Promise<Element[]> {
  const messages: Element[] = [];
  for (let i = 0; i < count; i++) {
    messages.push(
      await client
        .expectMessage(() => true, timeoutMs)
        .catch((err: Error) => {
          throw new Error(`${what}: got ${messages.length} of ${count}: ${err.message}`);
        }),
    );
  }
  return messages;
}

/** The defined condition of a `<failed/>` (XEP-0198 §5): its child in the stanza-error namespace. */
export function failedCondition(failed: Element): string | undefined {
  return failed.getChildElements().find((c) => c.getNS() === NS.stanzas && c.name !== 'text')?.name;
}

/**
 * Another client of `user`, logged in to the legacy server directly (its plain c2s port, not
 * through the proxy) and bound to `resource`: binding the resource of a session the proxy holds
 * makes the server end that session's stream for a resource conflict (RFC 6120 §7.7.2.2).
 */
export async function loginDirect(server: LegacyServer, user: LegacyUser, resource: string): Promise<RawClient> {
  const client = await RawClient.connectPlain({ host: server.host, port: server.c2sPort, domain: server.domain });
  await client.openStream();
  await client.login(user.username, user.password, { resource });
  return client;
}

/** A fresh connection that authenticates as `user` and sends `<resume previd h/>`: the answer is `<resumed/>` or `<failed/>`. */
export async function resumeWith(
  fx: ProxyFixture,
  user: { username: string; password: string },
  previd: string,
  h: number,
  transport: RawTransport = 'directtls',
): Promise<{ client: RawClient; answer: Element }> {
  const client = await fx.connect(transport);
  await client.authenticatePlain(user.username, user.password);
  const answer = await client.resume(previd, h);
  return { client, answer };
}

/**
 * Makes `watcher` subscribed to `target`'s presence (RFC 6121 §3); both must be available. Done
 * when the target's available presence reaches the watcher.
 */
export async function subscribe(watcher: Pick<LoggedIn, 'client' | 'jid'>, target: Pick<LoggedIn, 'client' | 'jid'>): Promise<void> {
  const watcherBare = watcher.jid.split('/')[0]!;
  watcher.client.presence({ to: target.jid.split('/')[0]!, type: 'subscribe' });
  await target.client.expect((el) => el.is('presence') && el.attrs.type === 'subscribe', 'the subscription request');
  target.client.presence({ to: watcherBare, type: 'subscribed' });
  await watcher.client.expect(
    (el) => el.is('presence') && el.attrs.from === target.jid && el.attrs.type === undefined,
    "the target's available presence",
  );
}

/** The events about a bound session: each names its `jid`. */
type SmEventName = 'ackDelayed' | 'hibernationStarted' | 'hibernationEnded' | 'stanzaQueuedWhileHibernating' | 'resumed';
type SmEvent<K extends SmEventName> = SmEventMap[K][0];

/** Every SM event a proxy emitted since {@link recordSmEvents}, by name, in order. */
export interface SmEventLog {
  of<K extends SmEventName>(name: K): readonly SmEvent<K>[];
  /** Waits until an event `name` for `jid` satisfies `predicate`; the error names what was awaited and what came. */
  waitFor<K extends SmEventName>(name: K, jid: string, predicate?: (event: SmEvent<K>) => boolean, timeoutMs?: number): Promise<SmEvent<K>>;
}

const SM_EVENT_NAMES: readonly SmEventName[] = [
  'ackDelayed',
  'hibernationStarted',
  'hibernationEnded',
  'stanzaQueuedWhileHibernating',
  'resumed',
];
const POLL_MS = 20;

export function recordSmEvents(proxy: Proxy): SmEventLog {
  const seen = new Map<SmEventName, unknown[]>(SM_EVENT_NAMES.map((name) => [name, []]));
  for (const name of SM_EVENT_NAMES) {
    proxy.events.on(name, (event: unknown) => {
      seen.get(name)!.push(event);
    });
  }
  const of = <K extends SmEventName>(name: K): readonly SmEvent<K>[] => seen.get(name) as SmEvent<K>[];
  return {
    of,
    async waitFor(name, jid, predicate = () => true, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = of(name).find((event) => event.jid === jid && predicate(event));
        if (found !== undefined) return found;
        if (Date.now() > deadline) {
          const forJid = of(name).filter((event) => event.jid === jid);
          throw new Error(`timed out after ${timeoutMs} ms waiting for a ${name} event for ${jid}; got ${JSON.stringify(forJid)}`);
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    },
  };
}
