/**
 * Storm benchmark: is every acknowledged stanza accounted for when sessions are cut, resumed and
 * expire all the time, and when the legacy server restarts under them? Receivers (one account, a
 * resource each, stream management with resumption) sit behind the proxy in front of a legacy
 * server (mod_smacks or mod_stream_mgmt off; both servers store a message for a resource that is
 * gone offline, RFC 6121 §8.5.3.2.1). Senders (another account, through the same proxy, no stream
 * management) send numbered messages to the receivers' full JIDs at a steady rate. Meanwhile
 * receivers are cut at random (the socket destroyed, no stream close) and come back after a random
 * time: most within the hibernation time (`<resume/>` with their h), some after it expired
 * (`<failed/>`, then a fresh bind of the same resource).
 *
 * Three scenarios: Prosody without restarts; then Prosody and ejabberd restarted (SIGTERM, started
 * again) every few seconds on top of the cuts. A restart drops every receiver's connection (the
 * proxy keeps their queues and drops the client without a stream error, README, What it does),
 * so receivers come back and resume as after a cut; a session that was away already waits
 * stranded. The senders' streams end with the restart, and they log in again.
 *
 * A sender follows its messages with an XEP-0199 ping every few ticks; the answer means the legacy
 * server has read and routed every message before it (each server handles one stream's stanzas in
 * order). Only those *confirmed* messages count: one written on a sender's stream that a restart
 * ended before the answer came may never have been read, and no one acknowledged it. Every confirmed
 * message must end up delivered to its receiver, answered to its sender with an error, or stored
 * offline by the server, which a session with initial presence collects at the end:
 * - lost: none of these;
 * - of which the README names: as many of a receiver's lost messages as the proxy reported for
 *   that receiver's sessions when they ended (`sessionEnded`), as lost (`unacked.lost`: queued for
 *   a stranded session whose client did not come back in time, so no stream of the user's was left
 *   to answer on) or unanswerable (`late.unanswerable`: routed to an ended session in the moment
 *   between the proxy's close of its stream and the server's reading of it); README, What it does;
 * - duplicated: delivered twice;
 * - reordered: delivered after a later message of the same sender to the same receiver;
 * - delivered and bounced: received by a client that was cut before acking it, and then, the
 *   session having expired, answered to the sender (at least once, as XEP-0198 §5 allows).
 */
import { randomInt } from 'node:crypto';
import { startLegacyServer, type LegacyServerKind } from '../support/legacy-server.js';
import { attr, BenchXmpp, type SmState, type XmppClientOptions } from './xmpp-bench-client.js';
import { fmtInt, sleep, table, verdict } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';

const PASSWORD = 'secret';
/** Every TICK_MS each sender sends to its next receivers. */
const TICK_MS = 10;
/** A sender asks for confirmation (a ping) every this many ticks. */
const CONFIRM_EVERY_TICKS = 5;
const SENDERS = 10;

interface StormScenario {
  readonly server: LegacyServerKind;
  /** SIGTERM and start the legacy server again this often; undefined: never. */
  readonly restartEveryMs: number | undefined;
  readonly receivers: number;
  readonly durationMs: number;
  /** Messages per second over all senders. */
  readonly rate: number;
  readonly cutEveryMs: number;
  /** Long enough, with restarts, for a receiver to come back while the server starts again. */
  readonly hibernationSeconds: number;
}

function scenarios(quick: boolean): StormScenario[] {
  const cuts = { rate: quick ? 1000 : 2000, cutEveryMs: quick ? 40 : 20 };
  const restarts = { ...cuts, receivers: quick ? 200 : 1000, durationMs: quick ? 20_000 : 40_000, hibernationSeconds: 10 };
  return [
    {
      server: 'prosody',
      restartEveryMs: undefined,
      receivers: quick ? 200 : 1000,
      durationMs: quick ? 15_000 : 45_000,
      hibernationSeconds: 2,
      ...cuts,
    },
    { server: 'prosody', restartEveryMs: quick ? 7_000 : 10_000, ...restarts },
    { server: 'ejabberd', restartEveryMs: quick ? 7_000 : 10_000, ...restarts },
  ];
}

export async function runStormBench(ctx: BenchContext): Promise<string> {
  const sections: string[] = [];
  for (const scenario of scenarios(ctx.quick)) sections.push(await runStorm(ctx, scenario));
  return sections.join('\n\n');
}

interface Receiver {
  readonly resource: string;
  client: BenchXmpp | undefined;
  sm: SmState | undefined;
  away: boolean;
}

interface Sender {
  readonly resource: string;
  client: BenchXmpp | undefined;
  /** Ids sent since the last confirmation request. */
  unconfirmed: string[];
  /** Per ping id in flight: the ids it confirms. */
  readonly pings: Map<string, string[]>;
}

interface Counts {
  sent: number;
  delivered: number;
  duplicated: number;
  reordered: number;
  cuts: number;
  dropped: number;
  resumed: number;
  failedResumes: number;
  reconnectErrors: number;
  senderLogins: number;
}

async function runStorm(ctx: BenchContext, scenario: StormScenario): Promise<string> {
  const { receivers: receiverCount, durationMs, rate, cutEveryMs, hibernationSeconds, restartEveryMs } = scenario;
  const name = `${scenario.server}${restartEveryMs === undefined ? '' : ', restarted'}`;
  const server = await startLegacyServer(scenario.server, {
    users: [
      { username: 'rcv', password: PASSWORD },
      { username: 'snd', password: PASSWORD },
    ],
  });
  const restart = server.restart;
  if (restartEveryMs !== undefined && restart === undefined) throw new Error(`the harness cannot restart ${scenario.server}`);
  const proxy = await startProxy(
    ctx,
    proxyConfig(server.c2sPort, {
      streamManagement: { hibernationSeconds, maxHibernationSeconds: hibernationSeconds },
      limits: { maxUnauthenticated: 100_000, maxUnauthenticatedPerAddress: 0, maxFailedLogins: 0 },
    }),
  );
  const endpoint = { host: '127.0.0.1', port: proxy.port, tls: true, domain: DOMAIN, mechanism: 'SCRAM-SHA-1' as const, timeoutMs: 20_000 };
  const receiverLogin: XmppClientOptions = { ...endpoint, username: 'rcv', password: PASSWORD };
  const senderLogin: XmppClientOptions = { ...endpoint, username: 'snd', password: PASSWORD };
  const counts: Counts = {
    sent: 0,
    delivered: 0,
    duplicated: 0,
    reordered: 0,
    cuts: 0,
    dropped: 0,
    resumed: 0,
    failedResumes: 0,
    reconnectErrors: 0,
    senderLogins: 0,
  };
  const sent = new Set<string>();
  const confirmed = new Set<string>();
  const delivered = new Set<string>();
  /** Per sender and receiver (`s3.r17`): the highest sequence number delivered so far. */
  const highestSeq = new Map<string, number>();
  const bounced = new Set<string>();
  const offline = new Set<string>();
  /** The collector has asked for what the server stored offline. */
  let collecting = false;
  const receivers: Receiver[] = Array.from({ length: receiverCount }, (_, i) => ({
    resource: `r${i}`,
    client: undefined,
    sm: undefined,
    away: false,
  }));
  const senders: Sender[] = Array.from({ length: SENDERS }, (_, s) => ({
    resource: `s${s}`,
    client: undefined,
    unconfirmed: [],
    pings: new Map(),
  }));
  const restarts: { atMs: number; tookMs: number }[] = [];
  let restarting: Promise<void> | undefined;
  /** Per receiver resource: the stanzas the proxy reported lost or unanswerable when one of its sessions ended. */
  const lostByProxy = new Map<string, number>();
  proxy.peer.on('sessionEnded', (data) => {
    const { jid, unacked, late } = data as { jid: string | undefined; unacked: { lost: number }; late?: { unanswerable: number } };
    const resource = jid?.split('/')[1];
    const reported = unacked.lost + (late?.unanswerable ?? 0);
    if (resource !== undefined && reported > 0) lostByProxy.set(resource, (lostByProxy.get(resource) ?? 0) + reported);
  });
  await proxy.peer.call('watch', { events: ['sessionEnded'] });
  /** The run is over: clients stop coming back. */
  let finished = false;

  const onMessage = (bytes: Buffer): void => {
    const id = attr(bytes, 'id');
    if (id === undefined || !sent.has(id)) return;
    // What the server stored offline, it hands out once the collector's presence makes the account
    // available: ejabberd routes it to the full JID it was for, which a receiver may hold again.
    if (collecting) {
      if (!delivered.has(id)) offline.add(id);
      return;
    }
    if (delivered.has(id)) {
      counts.duplicated++;
      return;
    }
    delivered.add(id);
    counts.delivered++;
    const [sender, to, seq] = id.split('.');
    const pair = `${sender}.${to}`;
    const n = Number(seq);
    const highest = highestSeq.get(pair) ?? -1;
    if (n < highest) counts.reordered++;
    else highestSeq.set(pair, n);
  };

  const attach = (receiver: Receiver, client: BenchXmpp): void => {
    receiver.client = client;
    client.onStanza = (element) => {
      if (element.localName === 'message') onMessage(element.bytes);
    };
  };

  /** A fresh session: bind the receiver's resource, enable resumption. */
  const login = async (receiver: Receiver, client: BenchXmpp): Promise<void> => {
    await client.bind(receiver.resource);
    await client.enableSm(true);
    receiver.sm = client.sm;
  };

  /** A connection the storm did not cut (a legacy restart drops it): the receiver comes back, as a phone would. */
  const watchDrop = (receiver: Receiver, client: BenchXmpp): void => {
    void client.closed.then(() => {
      if (finished || receiver.client !== client) return;
      receiver.client = undefined;
      receiver.away = true;
      counts.dropped++;
      setTimeout(() => void comeBack(receiver), 100 + randomInt(2000)).unref();
    });
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
      watchDrop(receiver, client);
    } catch {
      counts.reconnectErrors++;
      client?.destroy();
      receiver.client = undefined;
      // Try again shortly: the accounting needs every receiver back.
      if (!finished) setTimeout(() => void comeBack(receiver), 200 + randomInt(800)).unref();
    }
  };

  const cutOne = (): void => {
    const connected = receivers.filter((r) => !r.away && r.client !== undefined);
    if (connected.length === 0) return;
    const receiver = connected[randomInt(connected.length)]!;
    const client = receiver.client!;
    receiver.away = true;
    receiver.client = undefined;
    counts.cuts++;
    client.destroy();
    // Most come back within the hibernation time; a quarter after it expired.
    const hibernationMs = hibernationSeconds * 1000;
    const awayMs = randomInt(4) === 0 ? hibernationMs + 300 + randomInt(1500) : 50 + randomInt(Math.floor(hibernationMs * 0.6));
    setTimeout(() => void comeBack(receiver), awayMs).unref();
  };

  /** Logs the sender in (again, after a restart ended its stream) until it works or the run is over. */
  const connectSender = async (sender: Sender): Promise<void> => {
    while (!finished) {
      try {
        const client = await BenchXmpp.login(senderLogin, sender.resource);
        counts.senderLogins++;
        client.onStanza = (element) => {
          const id = attr(element.bytes, 'id');
          if (id === undefined) return;
          if (element.localName === 'message' && attr(element.bytes, 'type') === 'error') bounced.add(id);
          if (element.localName === 'iq' && attr(element.bytes, 'type') === 'result') {
            for (const confirmedId of sender.pings.get(id) ?? []) confirmed.add(confirmedId);
            sender.pings.delete(id);
          }
        };
        sender.client = client;
        void client.closed.then(() => {
          if (sender.client !== client) return;
          // What was not confirmed may never have been read: it does not count.
          sender.client = undefined;
          sender.unconfirmed = [];
          sender.pings.clear();
          if (!finished) void connectSender(sender);
        });
        return;
      } catch {
        await sleep(200 + randomInt(300));
      }
    }
  };

  let pingCount = 0;
  const askConfirmation = (sender: Sender): void => {
    if (sender.client === undefined || sender.unconfirmed.length === 0) return;
    const id = `confirm.${pingCount++}`;
    sender.pings.set(id, sender.unconfirmed);
    sender.unconfirmed = [];
    sender.client.send(`<iq type='get' id='${id}'><ping xmlns='urn:xmpp:ping'/></iq>`);
  };

  const restartServer = (): void => {
    const atMs = Date.now();
    restarting = restart!().then(
      () => {
        restarts.push({ atMs, tookMs: Date.now() - atMs });
        restarting = undefined;
      },
      (err: unknown) => {
        ctx.progress(`storm: restarting ${scenario.server} failed: ${String(err)}`);
        restarting = undefined;
      },
    );
  };

  const lines: string[] = [];
  try {
    ctx.progress(`storm (${name}): ${receiverCount} receivers log in`);
    for (let i = 0; i < receiverCount; i += 50) {
      await Promise.all(
        receivers.slice(i, i + 50).map(async (receiver) => {
          const client = await BenchXmpp.connect(receiverLogin);
          attach(receiver, client);
          await client.open();
          await client.authenticate();
          await login(receiver, client);
          watchDrop(receiver, client);
        }),
      );
    }
    await Promise.all(senders.map(connectSender));

    ctx.progress(
      `storm (${name}): ${durationMs / 1000} s of ${rate} messages/s with a cut every ${cutEveryMs} ms` +
        (restartEveryMs === undefined ? '' : ` and a restart every ${restartEveryMs / 1000} s`),
    );
    const perTick = Math.max(1, Math.round((rate * TICK_MS) / 1000 / SENDERS));
    const sequence = new Map<string, number>();
    let next = 0;
    let tick = 0;
    const started = Date.now();
    let lastCut = started;
    let lastRestart = started;
    while (Date.now() - started < durationMs) {
      for (const [s, sender] of senders.entries()) {
        const client = sender.client;
        if (client === undefined || client.socket.destroyed) continue;
        for (let k = 0; k < perTick; k++) {
          const receiver = receivers[next++ % receiverCount]!;
          const pair = `s${s}.${receiver.resource}`;
          const seq = sequence.get(pair) ?? 0;
          sequence.set(pair, seq + 1);
          const id = `${pair}.${seq}`;
          sent.add(id);
          sender.unconfirmed.push(id);
          counts.sent++;
          client.send(`<message to='rcv@${DOMAIN}/${receiver.resource}' id='${id}' type='chat'><body>${seq}</body></message>`);
        }
        if (tick % CONFIRM_EVERY_TICKS === 0) askConfirmation(sender);
      }
      tick++;
      while (Date.now() - lastCut >= cutEveryMs) {
        cutOne();
        lastCut += cutEveryMs;
      }
      if (restartEveryMs !== undefined && restarting === undefined && Date.now() - lastRestart >= restartEveryMs) {
        restartServer();
        lastRestart = Date.now();
      }
      await sleep(TICK_MS);
    }
    for (const sender of senders) askConfirmation(sender);
    await restarting;

    ctx.progress(`storm (${name}): waiting for every receiver to come back and every message to be answered`);
    const settleDeadline = Date.now() + 30_000 + hibernationSeconds * 1000;
    let last = -1;
    let stableSince = Date.now();
    while (Date.now() < settleDeadline) {
      for (const receiver of receivers) receiver.client?.ack();
      const accounted = delivered.size + bounced.size + confirmed.size;
      if (accounted !== last) {
        last = accounted;
        stableSince = Date.now();
      }
      const back = receivers.every((r) => !r.away) && senders.every((s) => s.pings.size === 0);
      if (back && Date.now() - stableSince > 3000) break;
      await sleep(250);
    }

    // A message for a resource that was gone went to the server's offline storage (RFC 6121 §8.5.3.2.1):
    // a session with initial presence collects it, as the user's next login would.
    ctx.progress(`storm (${name}): collecting what the legacy server stored offline`);
    const collector = await BenchXmpp.login(receiverLogin, 'collector');
    collector.onStanza = (element) => {
      if (element.localName === 'message') onMessage(element.bytes);
    };
    collecting = true;
    collector.send('<presence/>');
    let lastOffline = -1;
    for (let waited = 0; waited < 10_000 && offline.size !== lastOffline; waited += 1000) {
      lastOffline = offline.size;
      await sleep(1000);
    }
    collector.destroy();

    const answered = (id: string): boolean => delivered.has(id) || bounced.has(id) || offline.has(id);
    const lost = [...confirmed].filter((id) => !answered(id));
    const unconfirmedUnanswered = [...sent].filter((id) => !confirmed.has(id) && !answered(id)).length;
    const both = [...bounced].filter((id) => delivered.has(id)).length;
    // A receiver's lost messages beyond what the proxy reported lost for its sessions: unexplained.
    const lostPerReceiver = new Map<string, number>();
    for (const id of lost) {
      const resource = id.split('.')[1]!;
      lostPerReceiver.set(resource, (lostPerReceiver.get(resource) ?? 0) + 1);
    }
    let unexplained = 0;
    for (const [resource, n] of lostPerReceiver) unexplained += Math.max(0, n - (lostByProxy.get(resource) ?? 0));
    const problems = proxyLogProblems(proxy.logFile);
    lines.push(
      `**${name}**: ${receiverCount} receivers with resumable stream management and ${SENDERS} senders, all through the proxy in front of ` +
        `the legacy ${scenario.server}; hibernation ${hibernationSeconds} s; ${rate} messages/s to the receivers' full JIDs for ${durationMs / 1000} s; ` +
        `a receiver cut (socket destroyed, no stream close) every ${cutEveryMs} ms, back after 50 ms-${hibernationSeconds * 0.6} s (three in four: resumed) ` +
        `or after the hibernation expired (one in four: <failed/>, fresh bind of the same resource)` +
        (restartEveryMs === undefined
          ? '.'
          : `; the legacy server restarted every ${restartEveryMs / 1000} s (${restarts.length} restarts, ${restarts
              .map((r) => `${(r.tookMs / 1000).toFixed(1)} s`)
              .join(', ')} each; receivers dropped by one come back after 0.1-2.1 s).`),
      '',
      table(
        [
          'messages sent',
          'confirmed by the server',
          'delivered',
          'bounced',
          'stored offline by the server',
          'delivered and bounced',
          'lost',
          'of which the README names (stranded, unanswerable)',
          'duplicated',
          'reordered',
        ],
        [
          [
            fmtInt(counts.sent),
            fmtInt(confirmed.size),
            fmtInt(counts.delivered),
            fmtInt(bounced.size),
            fmtInt(offline.size),
            fmtInt(both),
            fmtInt(lost.length),
            fmtInt(lost.length - unexplained),
            fmtInt(counts.duplicated),
            fmtInt(counts.reordered),
          ],
        ],
      ),
      '',
      table(
        [
          'cuts',
          'dropped by a restart',
          'resumed',
          'failed resumes',
          'reconnects that failed and were retried',
          'sender logins',
          'unconfirmed, never answered',
          'receivers still away',
        ],
        [
          [
            fmtInt(counts.cuts),
            fmtInt(counts.dropped),
            fmtInt(counts.resumed),
            fmtInt(counts.failedResumes),
            fmtInt(counts.reconnectErrors),
            fmtInt(counts.senderLogins),
            fmtInt(unconfirmedUnanswered),
            fmtInt(receivers.filter((r) => r.away).length),
          ],
        ],
      ),
      '',
      verdict(
        unexplained === 0,
        `${fmtInt(unexplained)} lost other than what the README names` +
          `${lost.length > 0 ? ` (first lost: ${lost.slice(0, 5).join(', ')})` : ''} (target 0)`,
      ),
      verdict(counts.reordered === 0, `${fmtInt(counts.reordered)} reordered (target 0)`),
      `- proxy log: ${problems.warn} warnings, ${problems.error} errors${problems.samples.length > 0 ? ` (${problems.samples.join('; ')})` : ''}`,
    );
  } finally {
    finished = true;
    for (const receiver of receivers) receiver.client?.destroy();
    for (const sender of senders) sender.client?.destroy();
    await restarting;
    await proxy.peer.stop();
    await server.stop();
  }
  return lines.join('\n');
}
