/**
 * The load generator, a peer process of its own (its CPU time is not the proxy's). The runner forks
 * this file and drives it with commands, one family per benchmark:
 *
 * - `relay*`: a few connections that each keep a bounded window of fixed-size `<message/>`s in
 *   flight towards an echoing upstream and count the echoes (bytes are counted, not parsed, once the
 *   session is set up); with SM the client acks every `ackEvery` echoes and answers every `<r/>`.
 * - `sessions*`: many idle sessions (memory, scale), dropping them (hibernation), queueing stanzas
 *   for them, and a probe session that measures echo round trips.
 * - `e2e*`: pairs of clients, A sends to B, B acks when SM is on; latency from a timestamp in the body.
 * - `resume*`: one session dropped and resumed over and over, each time with a stanza queued.
 */
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { percentiles, serve, sleep } from './bench-util.js';
import { BenchXmpp, PatternCounter, childText, fixedSizeMessage, type SmState, type XmppClientOptions } from './xmpp-bench-client.js';

interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly domain: string;
}

function clientOptions(endpoint: Endpoint, username: string, password: string, extra: Partial<XmppClientOptions> = {}): XmppClientOptions {
  return { host: endpoint.host, port: endpoint.port, tls: endpoint.tls, domain: endpoint.domain, username, password, ...extra };
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at once; resolves with the results. */
async function pool<T>(count: number, concurrency: number, task: (i: number) => Promise<T>): Promise<PromiseSettledResult<T>[]> {
  const results: PromiseSettledResult<T>[] = new Array(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await task(i) };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

function closeAndWait(clients: readonly BenchXmpp[], timeoutMs: number): Promise<void> {
  for (const client of clients) client.close();
  const all = Promise.all(clients.map((c) => c.closed));
  return Promise.race([all.then(() => undefined), sleep(timeoutMs)]).then(() => {
    for (const client of clients) client.destroy();
  });
}

// --- relay: throughput through an echoing upstream ---------------------------------------------

interface RelayConnection {
  readonly client: BenchXmpp;
  sent: number;
  received: number;
  bytes: number;
  lastAck: number;
}

interface RelayArgs extends Endpoint {
  readonly connections: number;
  readonly stanzaBytes: number;
  /** Stanzas each connection keeps in flight at most. */
  readonly windowStanzas: number;
  readonly sm: boolean;
  /** With SM: send `<a/>` unasked after this many echoes (besides answering each `<r/>`). */
  readonly ackEvery: number;
}

const relay = {
  connections: [] as RelayConnection[],
  sending: false,
};

async function relayStart(args: RelayArgs): Promise<{ connections: number }> {
  relay.sending = true;
  const burst = Buffer.from(fixedSizeMessage(args.stanzaBytes, `echo@${args.domain}`).repeat(args.windowStanzas));
  const refill = Math.max(1, Math.floor(args.windowStanzas / 2));
  const started = await pool(args.connections, args.connections, async (i) => {
    const client = await BenchXmpp.login(clientOptions(args, `relay${i}`, 'secret'), `relay${i}`);
    if (args.sm) await client.enableSm(true);
    const conn: RelayConnection = { client, sent: 0, received: 0, bytes: 0, lastAck: 0 };
    const messages = new PatternCounter('</message>');
    const requests = new PatternCounter('<r xmlns');
    const topUp = (): void => {
      if (!relay.sending) return;
      const room = args.windowStanzas - (conn.sent - conn.received);
      if (room < refill) return;
      client.send(burst.subarray(0, room * args.stanzaBytes));
      conn.sent += room;
    };
    client.rawMode((chunk) => {
      conn.bytes += chunk.length;
      conn.received += messages.count(chunk);
      if (args.sm) {
        const asked = requests.count(chunk) > 0;
        if (asked || conn.received - conn.lastAck >= args.ackEvery) {
          client.send(`<a xmlns='urn:xmpp:sm:3' h='${conn.received}'/>`);
          conn.lastAck = conn.received;
        }
      }
      topUp();
    });
    topUp();
    return conn;
  });
  const failures = started.filter((r) => r.status === 'rejected');
  if (failures.length > 0)
    throw new Error(`relay: ${failures.length} connections failed: ${String((failures[0] as PromiseRejectedResult).reason)}`);
  relay.connections = started.map((r) => (r as PromiseFulfilledResult<RelayConnection>).value);
  return { connections: relay.connections.length };
}

function relayMark(): { t: number; messages: number; bytes: number } {
  let messages = 0;
  let bytes = 0;
  for (const c of relay.connections) {
    messages += c.received;
    bytes += c.bytes;
  }
  return { t: performance.now(), messages, bytes };
}

async function relayStop(): Promise<{ lost: number }> {
  relay.sending = false;
  const deadline = performance.now() + 3000;
  while (performance.now() < deadline && relay.connections.some((c) => c.received < c.sent)) await sleep(10);
  const lost = relay.connections.reduce((sum, c) => sum + (c.sent - c.received), 0);
  await closeAndWait(
    relay.connections.map((c) => c.client),
    3000,
  );
  relay.connections = [];
  return { lost };
}

// --- sessions: many idle sessions, hibernation, queued stanzas, probe --------------------------

interface SessionsOpenArgs extends Endpoint {
  readonly count: number;
  readonly concurrency: number;
  readonly sm: boolean;
  readonly resume: boolean;
  /** Local addresses to spread connections over (more than one multiplies the ephemeral ports). */
  readonly localAddresses?: readonly string[];
}

const sessions: BenchXmpp[] = [];
let sessionSerial = 0;
let probeClient: BenchXmpp | undefined;

async function sessionsOpen(args: SessionsOpenArgs): Promise<{ opened: number; failed: number; seconds: number; firstError?: string }> {
  const start = performance.now();
  const results = await pool(args.count, args.concurrency, async () => {
    const n = sessionSerial++;
    const localAddress = args.localAddresses?.[n % args.localAddresses.length];
    const client = await BenchXmpp.login(clientOptions(args, `idle${n}`, 'secret', { localAddress, timeoutMs: 30_000 }), `s${n}`);
    if (args.sm) await client.enableSm(args.resume);
    sessions.push(client);
    return true;
  });
  const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  return {
    opened: results.length - failed.length,
    failed: failed.length,
    seconds: (performance.now() - start) / 1000,
    ...(failed.length > 0 ? { firstError: String(failed[0]!.reason) } : {}),
  };
}

/** Each session sends `k` messages through the echoing upstream and waits for the `k` echoes, without acking them. */
async function sessionsQueue(args: { k: number; stanzaBytes: number; domain: string }): Promise<{ queued: number }> {
  const message = fixedSizeMessage(args.stanzaBytes, `echo@${args.domain}`);
  await pool(sessions.length, 200, async (i) => {
    const client = sessions[i]!;
    client.autoAck = false;
    const target = client.stanzasReceived + args.k;
    const done = new Promise<void>((resolve) => {
      client.onStanza = () => {
        if (client.stanzasReceived >= target) resolve();
      };
    });
    client.send(message.repeat(args.k));
    await Promise.race([done, sleep(20_000)]);
    client.onStanza = undefined;
  });
  return { queued: sessions.length * args.k };
}

/** Drops every session's connection without a stream close: the proxy hibernates them. */
async function sessionsDrop(): Promise<{ dropped: number }> {
  const dropped = sessions.length;
  for (const client of sessions) client.destroy();
  await Promise.race([Promise.all(sessions.map((c) => c.closed)), sleep(10_000)]);
  sessions.length = 0;
  return { dropped };
}

async function sessionsClose(): Promise<{ closed: number }> {
  const closed = sessions.length;
  await closeAndWait(sessions.splice(0), 10_000);
  probeClient?.destroy();
  probeClient = undefined;
  return { closed };
}

/** Echo round trips on one extra session, one at a time: the latency a user of a loaded proxy sees. */
async function probe(
  args: Endpoint & { count: number; stanzaBytes: number; gapMs: number },
): Promise<{ p50: number; p99: number; max: number }> {
  if (probeClient === undefined) {
    probeClient = await BenchXmpp.login(clientOptions(args, 'probe', 'secret'), 'probe');
    await probeClient.enableSm(true);
  }
  const client = probeClient;
  const message = fixedSizeMessage(args.stanzaBytes, `echo@${args.domain}`);
  const rtts: number[] = [];
  for (let i = 0; i < args.count; i++) {
    const echoed = client.expect((e) => e.localName === 'message', 'probe echo');
    const t = performance.now();
    client.send(message);
    await echoed;
    rtts.push(performance.now() - t);
    if (args.gapMs > 0) await sleep(args.gapMs);
  }
  const [p50, p99, max] = percentiles(rtts, [50, 99, 100]);
  return { p50: p50!, p99: p99!, max: max! };
}

// --- e2e: pairs through a real server -----------------------------------------------------------

interface E2ePair {
  readonly a: BenchXmpp;
  readonly b: BenchXmpp;
  readonly bJid: string;
  sent: number;
  delivered: number;
}

const e2e = {
  pairs: [] as E2ePair[],
  latencies: [] as number[],
  recording: false,
  onDelivered: undefined as ((pair: E2ePair) => void) | undefined,
  bodyBytes: 64,
};

interface E2eSetupArgs extends Endpoint {
  readonly pairs: number;
  readonly userA: string;
  readonly userB: string;
  readonly password: string;
  readonly mechanism: 'PLAIN' | 'SCRAM-SHA-1';
  readonly sm: boolean;
  readonly bodyBytes: number;
}

async function e2eSetup(args: E2eSetupArgs): Promise<{ pairs: number }> {
  e2e.bodyBytes = args.bodyBytes;
  const made = await pool(args.pairs, 4, async (i) => {
    const a = await BenchXmpp.login(clientOptions(args, args.userA, args.password, { mechanism: args.mechanism }), `a${i}`);
    const b = await BenchXmpp.login(clientOptions(args, args.userB, args.password, { mechanism: args.mechanism }), `b${i}`);
    if (args.sm) {
      await a.enableSm(true);
      await b.enableSm(true);
    }
    const pair: E2ePair = { a, b, bJid: b.jid!, sent: 0, delivered: 0 };
    b.onStanza = (element) => {
      if (element.localName !== 'message') return;
      const body = childText(element.bytes, 'body');
      if (body === undefined) return;
      pair.delivered++;
      if (e2e.recording) e2e.latencies.push(performance.now() - Number.parseFloat(body));
      e2e.onDelivered?.(pair);
    };
    return pair;
  });
  const failures = made.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  if (failures.length > 0) throw new Error(`e2e setup: ${failures.length} pairs failed: ${String(failures[0]!.reason)}`);
  e2e.pairs = made.map((r) => (r as PromiseFulfilledResult<E2ePair>).value);
  return { pairs: e2e.pairs.length };
}

function e2eSend(pair: E2ePair): void {
  const stamp = performance.now().toFixed(3);
  const body = stamp + ' '.repeat(Math.max(0, e2e.bodyBytes - stamp.length));
  pair.a.send(`<message to='${pair.bJid}' type='chat' id='m${pair.sent}'><body>${body}</body></message>`);
  pair.sent++;
}

interface E2eRunArgs {
  readonly mode: 'saturate' | 'rate';
  readonly durationMs: number;
  /** saturate: messages in flight per pair. */
  readonly window: number;
  /** rate: messages per second over all pairs. */
  readonly ratePerSec: number;
  /** Also return every latency sample (for pooling percentiles over repetitions). */
  readonly samples?: boolean;
}

async function e2eRun(args: E2eRunArgs): Promise<{
  sent: number;
  delivered: number;
  deliveredTotal: number;
  seconds: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  lost: number;
  samples?: number[];
}> {
  const pairs = e2e.pairs;
  const base = pairs.map((p) => ({ sent: p.sent, delivered: p.delivered }));
  e2e.latencies = [];
  e2e.recording = true;
  let sending = true;
  const start = performance.now();
  let timer: NodeJS.Timeout | undefined;
  if (args.mode === 'saturate') {
    e2e.onDelivered = (pair) => {
      if (sending && pair.sent - pair.delivered < args.window) e2eSend(pair);
    };
    for (const pair of pairs) for (let k = 0; k < args.window; k++) e2eSend(pair);
  } else {
    const perPair = args.ratePerSec / pairs.length / 1000;
    timer = setInterval(() => {
      const elapsed = performance.now() - start;
      pairs.forEach((pair, i) => {
        const due = Math.floor(perPair * elapsed) - (pair.sent - base[i]!.sent);
        // Open loop, but never more than 1000 in flight per pair (a stalled server must not grow this without end).
        for (let k = 0; k < due && pair.sent - pair.delivered < 1000; k++) e2eSend(pair);
      });
    }, 1);
  }
  await sleep(args.durationMs);
  sending = false;
  const seconds = (performance.now() - start) / 1000;
  const deliveredInWindow = pairs.reduce((sum, p, i) => sum + p.delivered - base[i]!.delivered, 0);
  if (timer !== undefined) clearInterval(timer);
  const deadline = performance.now() + 3000;
  while (performance.now() < deadline && pairs.some((p) => p.delivered < p.sent)) await sleep(5);
  e2e.recording = false;
  e2e.onDelivered = undefined;
  const sent = pairs.reduce((sum, p, i) => sum + p.sent - base[i]!.sent, 0);
  const delivered = pairs.reduce((sum, p, i) => sum + p.delivered - base[i]!.delivered, 0);
  const [p50, p90, p99, max] = percentiles(e2e.latencies, [50, 90, 99, 100]);
  const result = {
    sent,
    delivered: deliveredInWindow,
    deliveredTotal: delivered,
    seconds,
    p50: p50!,
    p90: p90!,
    p99: p99!,
    max: max!,
    lost: sent - delivered,
  };
  return args.samples === true ? { ...result, samples: e2e.latencies.map((x) => Math.round(x * 1000) / 1000) } : result;
}

async function e2eTeardown(): Promise<boolean> {
  await closeAndWait(
    e2e.pairs.flatMap((p) => [p.a, p.b]),
    5000,
  );
  e2e.pairs = [];
  return true;
}

// --- resume: drop and resume one session, again and again ---------------------------------------

interface Resumer {
  readonly options: XmppClientOptions;
  client: BenchXmpp;
  readonly state: SmState;
}

/** Resumable sessions by slot name (so that an aged and a fresh session can be compared). */
const resumers = new Map<string, Resumer>();

function resumerIn(slot: string | undefined): Resumer {
  const resumer = resumers.get(slot ?? 'main');
  if (resumer === undefined) throw new Error(`resumeSetup the slot ${slot ?? 'main'} first`);
  return resumer;
}

async function resumeSetup(
  args: Endpoint & { username: string; password: string; mechanism: 'PLAIN' | 'SCRAM-SHA-1'; slot?: string },
): Promise<{ jid: string }> {
  const slot = args.slot ?? 'main';
  const previous = resumers.get(slot);
  if (previous !== undefined) await closeAndWait([previous.client], 3000);
  const options = clientOptions(args, args.username, args.password, { mechanism: args.mechanism });
  const client = await BenchXmpp.login(options, `resumer-${slot}`);
  await client.enableSm(true);
  resumers.set(slot, { options, client, state: client.sm! });
  return { jid: client.jid! };
}

export interface CycleTimes {
  /** ms from the connect call: TCP up, TLS up, SASL success, `<resumed/>`, first replayed stanza. */
  tcp: number[];
  tls: number[];
  auth: number[];
  resumed: number[];
  replay: number[];
  /** Connections whose TLS session was resumed from a ticket. */
  tlsReused: number;
}

/**
 * `count` cycles of: send a message to the session's own full JID (so the server sends one back
 * while the client is away), drop the connection right after it is written, wait `gapMs`, then time
 * a new connection up to `<resumed/>` and the first replayed stanza.
 */
async function resumeCycles(args: {
  count: number;
  gapMs: number;
  tlsResumption: boolean;
  withStanza: boolean;
  slot?: string;
}): Promise<CycleTimes> {
  const times: CycleTimes = { tcp: [], tls: [], auth: [], resumed: [], replay: [], tlsReused: 0 };
  const resumer = resumerIn(args.slot);
  const options = resumer.options;
  let tlsSession: Buffer | undefined;
  for (let i = 0; i < args.count; i++) {
    const old = resumer.client;
    if (args.withStanza) {
      await new Promise<void>((resolve) =>
        old.socket.write(`<message to='${old.jid}' type='chat'><body>cycle ${i}</body></message>`, () => resolve()),
      );
    }
    tlsSession = old.tlsSession ?? tlsSession;
    old.destroy();
    await old.closed;
    await sleep(args.gapMs);
    const client = await BenchXmpp.connect({ ...options, tlsSession: args.tlsResumption ? tlsSession : undefined });
    const t0 = client.times.start;
    times.tcp.push(client.times.tcp - t0);
    times.tls.push(client.times.secure - t0);
    if ((client.socket as { isSessionReused?: () => boolean }).isSessionReused?.() === true) times.tlsReused++;
    const replayed = args.withStanza ? client.expect((e) => e.localName === 'message', 'replayed message', 10_000) : undefined;
    replayed?.catch(() => undefined);
    await client.open();
    await client.authenticate();
    times.auth.push(performance.now() - t0);
    await client.resumeSm(resumer.state);
    times.resumed.push(performance.now() - t0);
    if (replayed !== undefined) {
      await replayed;
      times.replay.push(performance.now() - t0);
    }
    resumer.client = client;
  }
  return times;
}

/** `count` messages to the session's own JID and back (the server or fake upstream echoes), `window` in flight. */
async function resumeEcho(args: { count: number; window: number; stanzaBytes: number; slot?: string }): Promise<{ seconds: number }> {
  const client = resumerIn(args.slot).client;
  const message = fixedSizeMessage(args.stanzaBytes, client.jid!);
  let sent = 0;
  let received = 0;
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`resumeEcho: ${received}/${args.count} echoes after 60 s`)), 60_000);
    client.onStanza = () => {
      received++;
      if (received >= args.count) {
        clearTimeout(timer);
        resolve();
      } else if (sent < args.count) {
        sent++;
        client.send(message);
      }
    };
    for (; sent < Math.min(args.window, args.count); sent++) client.send(message);
  });
  client.onStanza = undefined;
  return { seconds: (performance.now() - start) / 1000 };
}

async function resumeTeardown(): Promise<boolean> {
  await closeAndWait(
    [...resumers.values()].map((r) => r.client),
    3000,
  );
  resumers.clear();
  return true;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  serve({
    relayStart,
    relayMark,
    relayStop,
    sessionsOpen,
    sessionsQueue,
    sessionsDrop,
    sessionsClose,
    probe,
    e2eSetup,
    e2eRun,
    e2eTeardown,
    resumeSetup,
    resumeCycles,
    resumeEcho,
    resumeTeardown,
  });
}
