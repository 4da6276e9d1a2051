/**
 * Storm benchmark: is every acknowledged stanza accounted for when sessions are cut, resumed and
 * expire all the time? Receivers (one account, a resource each, stream management with
 * resumption) sit behind the proxy in front of the legacy Prosody (mod_smacks off; Prosody 0.12
 * loads mod_offline by itself, so a message for a resource that is gone is stored offline).
 * Senders (another account, through the same proxy, no stream management) send numbered messages
 * to the receivers' full JIDs at a steady rate. Meanwhile receivers are cut at random (the socket
 * destroyed, no stream close) and come back after a random time: most within the hibernation time
 * (`<resume/>` with their h), some after it expired (`<failed/>`, then a fresh bind of the same
 * resource).
 *
 * Every message must end up delivered to its receiver, answered to its sender with an error, or
 * stored offline by Prosody (a message for a resource that is gone, RFC 6121 §8.5.3.2.1), which a
 * session with initial presence collects at the end:
 * - lost: none of these;
 * - duplicated: delivered twice;
 * - reordered: delivered after a later message of the same sender to the same receiver;
 * - delivered and bounced: received by a client that was cut before acking it, and then, the
 *   session having expired, answered to the sender (at least once, as XEP-0198 §5 allows).
 * Legacy server restarts are not part of the storm: one ends every user's session on the server
 * (README, Operating it); what becomes of the queues then is tested in test/e2e/late-stanzas.test.ts.
 */
import { randomInt } from 'node:crypto';
import { startProsody } from '../support/prosody.js';
import { attr, BenchXmpp, type SmState, type XmppClientOptions } from './xmpp-bench-client.js';
import { fmtInt, sleep, table, verdict } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';

const PASSWORD = 'secret';
const HIBERNATION_SECONDS = 2;
/** Every TICK_MS each sender sends to its next receivers. */
const TICK_MS = 10;
const SENDERS = 10;

interface Receiver {
  readonly resource: string;
  client: BenchXmpp | undefined;
  sm: SmState | undefined;
  away: boolean;
  /** Per sender: the highest sequence number delivered so far. */
  readonly highest: Map<string, number>;
}

interface Counts {
  sent: number;
  delivered: number;
  duplicated: number;
  reordered: number;
  cuts: number;
  resumed: number;
  failedResumes: number;
  reconnectErrors: number;
}

export async function runStormBench(ctx: BenchContext): Promise<string> {
  const receiverCount = ctx.quick ? 200 : 1000;
  const durationMs = ctx.quick ? 15_000 : 45_000;
  /** Messages per second over all senders. */
  const rate = ctx.quick ? 1000 : 2000;
  const cutEveryMs = ctx.quick ? 40 : 20;
  const prosody = await startProsody({
    smacks: false,
    users: [
      { username: 'rcv', password: PASSWORD },
      { username: 'snd', password: PASSWORD },
    ],
  });
  const proxy = await startProxy(
    ctx,
    proxyConfig(prosody.c2sPort, {
      streamManagement: { hibernationSeconds: HIBERNATION_SECONDS, maxHibernationSeconds: HIBERNATION_SECONDS },
      limits: { maxUnauthenticated: 100_000, maxUnauthenticatedPerAddress: 0, maxFailedLogins: 0 },
    }),
  );
  const endpoint = { host: '127.0.0.1', port: proxy.port, tls: true, domain: DOMAIN, mechanism: 'SCRAM-SHA-1' as const, timeoutMs: 20_000 };
  const receiverLogin: XmppClientOptions = { ...endpoint, username: 'rcv', password: PASSWORD };
  const counts: Counts = { sent: 0, delivered: 0, duplicated: 0, reordered: 0, cuts: 0, resumed: 0, failedResumes: 0, reconnectErrors: 0 };
  const sent = new Set<string>();
  const delivered = new Set<string>();
  const bounced = new Set<string>();
  const receivers: Receiver[] = Array.from({ length: receiverCount }, (_, i) => ({
    resource: `r${i}`,
    client: undefined,
    sm: undefined,
    away: false,
    highest: new Map(),
  }));
  const senders: BenchXmpp[] = [];
  /** The run is over: receivers stop coming back. */
  let finished = false;

  const onMessage = (receiver: Receiver, bytes: Buffer): void => {
    const id = attr(bytes, 'id');
    if (id === undefined || !sent.has(id)) return;
    if (delivered.has(id)) {
      counts.duplicated++;
      return;
    }
    delivered.add(id);
    counts.delivered++;
    const [sender, , seq] = id.split('.');
    const n = Number(seq);
    const highest = receiver.highest.get(sender!) ?? -1;
    if (n < highest) counts.reordered++;
    else receiver.highest.set(sender!, n);
  };

  const attach = (receiver: Receiver, client: BenchXmpp): void => {
    receiver.client = client;
    client.onStanza = (element) => {
      if (element.localName === 'message') onMessage(receiver, element.bytes);
    };
  };

  /** A fresh session: bind the receiver's resource, enable resumption. */
  const login = async (receiver: Receiver, client: BenchXmpp): Promise<void> => {
    await client.bind(receiver.resource);
    await client.enableSm(true);
    receiver.sm = client.sm;
  };

  const comeBack = async (receiver: Receiver): Promise<void> => {
    let client: BenchXmpp | undefined;
    try {
      client = await BenchXmpp.connect(receiverLogin);
      attach(receiver, client);
      await client.open();
      await client.authenticate();
      const previous = receiver.sm;
      try {
        if (previous === undefined) throw new Error('no session to resume');
        await client.resumeSm(previous);
        counts.resumed++;
      } catch (err) {
        if (client.socket.destroyed) throw err;
        counts.failedResumes++;
        await login(receiver, client);
      }
      receiver.away = false;
    } catch {
      counts.reconnectErrors++;
      client?.destroy();
      receiver.client = undefined;
      // Try again shortly: the accounting needs every receiver back.
      if (!finished) setTimeout(() => void comeBack(receiver), 200).unref();
    }
  };

  const cutOne = (): void => {
    const connected = receivers.filter((r) => !r.away && r.client !== undefined);
    if (connected.length === 0) return;
    const receiver = connected[randomInt(connected.length)]!;
    receiver.away = true;
    counts.cuts++;
    receiver.client!.destroy();
    receiver.client = undefined;
    // Most come back within the hibernation time; a quarter after it expired.
    const hibernationMs = HIBERNATION_SECONDS * 1000;
    const awayMs = randomInt(4) === 0 ? hibernationMs + 300 + randomInt(1500) : 50 + randomInt(Math.floor(hibernationMs * 0.6));
    setTimeout(() => void comeBack(receiver), awayMs).unref();
  };

  const lines: string[] = [];
  try {
    ctx.progress(`storm: ${receiverCount} receivers log in`);
    for (let i = 0; i < receiverCount; i += 50) {
      await Promise.all(
        receivers.slice(i, i + 50).map(async (receiver) => {
          const client = await BenchXmpp.connect(receiverLogin);
          attach(receiver, client);
          await client.open();
          await client.authenticate();
          await login(receiver, client);
        }),
      );
    }
    for (let s = 0; s < SENDERS; s++) {
      const sender = await BenchXmpp.login({ ...endpoint, username: 'snd', password: PASSWORD }, `s${s}`);
      sender.onStanza = (element) => {
        if (element.localName === 'message' && attr(element.bytes, 'type') === 'error') {
          const id = attr(element.bytes, 'id');
          if (id !== undefined) bounced.add(id);
        }
      };
      senders.push(sender);
    }

    ctx.progress(`storm: ${durationMs / 1000} s of ${rate} messages/s with a cut every ${cutEveryMs} ms`);
    const perTick = Math.max(1, Math.round((rate * TICK_MS) / 1000 / SENDERS));
    const sequence = new Map<string, number>();
    let next = 0;
    const started = Date.now();
    let lastCut = started;
    while (Date.now() - started < durationMs) {
      for (const [s, sender] of senders.entries()) {
        for (let k = 0; k < perTick; k++) {
          const receiver = receivers[next++ % receiverCount]!;
          const pair = `s${s}.${receiver.resource}`;
          const seq = sequence.get(pair) ?? 0;
          sequence.set(pair, seq + 1);
          const id = `${pair}.${seq}`;
          sent.add(id);
          counts.sent++;
          sender.send(`<message to='rcv@${DOMAIN}/${receiver.resource}' id='${id}' type='chat'><body>${seq}</body></message>`);
        }
      }
      while (Date.now() - lastCut >= cutEveryMs) {
        cutOne();
        lastCut += cutEveryMs;
      }
      await sleep(TICK_MS);
    }

    ctx.progress('storm: waiting for every receiver to come back and every message to be answered');
    const settleDeadline = Date.now() + 30_000;
    let last = -1;
    let stableSince = Date.now();
    while (Date.now() < settleDeadline) {
      for (const receiver of receivers) receiver.client?.ack();
      const accounted = delivered.size + bounced.size;
      if (accounted !== last) {
        last = accounted;
        stableSince = Date.now();
      }
      const back = receivers.every((r) => !r.away);
      if (back && Date.now() - stableSince > 3000) break;
      await sleep(250);
    }

    // A message for a resource that was gone went to Prosody's offline storage (RFC 6121 §8.5.3.2.1):
    // a session with initial presence collects it, as the user's next login would.
    ctx.progress('storm: collecting what the legacy server stored offline');
    const offline = new Set<string>();
    const collector = await BenchXmpp.login(receiverLogin, 'collector');
    collector.onStanza = (element) => {
      const id = attr(element.bytes, 'id');
      if (element.localName === 'message' && id !== undefined && sent.has(id)) offline.add(id);
    };
    collector.send('<presence/>');
    let lastOffline = -1;
    for (let waited = 0; waited < 10_000 && offline.size !== lastOffline; waited += 1000) {
      lastOffline = offline.size;
      await sleep(1000);
    }
    collector.destroy();

    const lost = [...sent].filter((id) => !delivered.has(id) && !bounced.has(id) && !offline.has(id));
    const both = [...bounced].filter((id) => delivered.has(id)).length;
    const problems = proxyLogProblems(proxy.logFile);
    lines.push(
      `test/bench/storm-bench.ts: ${receiverCount} receivers with resumable stream management and ${SENDERS} senders, all through the proxy in front of ` +
        `the legacy Prosody; hibernation ${HIBERNATION_SECONDS} s; ${rate} messages/s to the receivers' full JIDs for ${durationMs / 1000} s; ` +
        `a receiver cut (socket destroyed, no stream close) every ${cutEveryMs} ms, back after 50 ms-${HIBERNATION_SECONDS * 0.6} s (three in four: resumed) ` +
        `or after the hibernation expired (one in four: <failed/>, fresh bind of the same resource).`,
      '',
      table(
        [
          'messages sent',
          'delivered',
          'bounced',
          'stored offline by the server',
          'delivered and bounced',
          'lost',
          'duplicated',
          'reordered',
        ],
        [
          [
            fmtInt(counts.sent),
            fmtInt(counts.delivered),
            fmtInt(bounced.size),
            fmtInt(offline.size),
            fmtInt(both),
            fmtInt(lost.length),
            fmtInt(counts.duplicated),
            fmtInt(counts.reordered),
          ],
        ],
      ),
      '',
      table(
        ['cuts', 'resumed', 'failed resumes (expired)', 'reconnects that failed and were retried', 'receivers still away'],
        [
          [
            fmtInt(counts.cuts),
            fmtInt(counts.resumed),
            fmtInt(counts.failedResumes),
            fmtInt(counts.reconnectErrors),
            fmtInt(receivers.filter((r) => r.away).length),
          ],
        ],
      ),
      '',
      verdict(
        lost.length === 0,
        `${fmtInt(lost.length)} lost${lost.length > 0 ? ` (first: ${lost.slice(0, 5).join(', ')})` : ''} (target 0)`,
      ),
      verdict(counts.reordered === 0, `${fmtInt(counts.reordered)} reordered (target 0)`),
      `- proxy log: ${problems.warn} warnings, ${problems.error} errors${problems.samples.length > 0 ? ` (${problems.samples.join('; ')})` : ''}`,
    );
  } finally {
    finished = true;
    for (const receiver of receivers) receiver.client?.destroy();
    for (const sender of senders) sender.destroy();
    await proxy.peer.stop();
    await prosody.stop();
  }
  return lines.join('\n');
}
