/**
 * Upgrade benchmark (README "Upgrading"): the proxy runs as an operator runs it (`node
 * dist/src/cli.js config`) in front of the legacy Prosody, with receivers (one account, a resource
 * each, resumable stream management) behind it: a third hibernate with stanzas queued for them,
 * the rest are attached, receiving numbered messages from a sender and sending numbered messages to
 * a watcher. Sender and watcher talk to Prosody directly; the watcher is subscribed to the
 * receivers' presence (the first PRESENT receivers are available). Then `SIGUSR2`: the old process
 * hands everything to a new one and exits.
 *
 * Attached receivers whose connection the old process cuts reconnect at once and resume (resending
 * what the proxy had not counted, XEP-0198 §5); hibernating ones come back after the upgrade. The
 * benchmark prints how long the upgrade took, the resume rate the new process saw, both processes'
 * RSS during the switch, and the accounting both ways: lost, duplicated, reordered (target 0 each),
 * failed resumes and unavailable presences the watcher saw (target 0: nobody logged out of Prosody).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startProsody } from '../support/prosody.js';
import { attr, BenchXmpp, type SmState, type XmppClientOptions } from './xmpp-bench-client.js';
import { childrenOf, fmt, fmtInt, procRssBytes, sleep, table, verdict } from './bench-util.js';
import { waitUntil } from '../support/wait.js';
import { DOMAIN, type BenchContext } from './bench-context.js';

const PASSWORD = 'secret';
const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));
/** Every TICK_MS the sender sends to its next receivers, and a share of the attached receivers to the watcher. */
const TICK_MS = 20;
/** Receivers that show their presence: the watcher would see any of them log out. */
const PRESENT = 30;

interface Receiver {
  readonly index: number;
  client: BenchXmpp | undefined;
  sm: SmState | undefined;
  /** Cut before the upgrade: comes back once it is over. */
  readonly hibernates: boolean;
  /** Reconnecting now. */
  away: boolean;
  /** Every stanza sent since `<enable/>`, in order: after `<resumed h/>` the ones from h on go again (XEP-0198 §5). */
  readonly outbox: string[];
  /** The next sequence number this receiver sends to the watcher. */
  nextOut: number;
  /** The highest sequence number from the sender delivered so far. */
  highestIn: number;
}

interface Direction {
  sent: number;
  delivered: Set<string>;
  duplicated: number;
  reordered: number;
}

/** One log line of the proxy processes (both write to the same file). */
interface LogLine {
  readonly pid?: number;
  readonly msg?: string;
  readonly time?: number;
  readonly [key: string]: unknown;
}

function logLines(file: string): LogLine[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as LogLine];
      } catch {
        return [];
      }
    });
}

/** How often `lines` came: per second on average over their span, and in their busiest calendar second. */
function rateOf(lines: readonly LogLine[]): string {
  const times = lines.map((line) => line.time ?? 0);
  if (times.length < 2) return 'n/a';
  const perSecond = new Map<number, number>();
  for (const time of times) perSecond.set(Math.floor(time / 1000), (perSecond.get(Math.floor(time / 1000)) ?? 0) + 1);
  const spanS = (Math.max(...times) - Math.min(...times)) / 1000;
  return `${fmt(times.length / spanS, 0)} / ${fmtInt(Math.max(...perSecond.values()))}`;
}

export async function runUpgradeBench(ctx: BenchContext): Promise<string> {
  const receiverCount = ctx.quick ? 150 : 1000;
  const resumesPerSecond = ctx.quick ? 100 : 200;
  /** Messages per second from the sender to the receivers, and from the attached receivers to the watcher, each. */
  const rate = ctx.quick ? 300 : 1000;
  const prosody = await startProsody({
    smacks: false,
    users: ['rcv', 'snd', 'watch'].map((username) => ({ username, password: PASSWORD })),
  });
  const logFile = join(ctx.dir, 'upgrade-proxy.log');
  const configFile = join(ctx.dir, 'upgrade-proxy.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
      tls: { selfSigned: true },
      domains: { [DOMAIN]: { upstream: { host: '127.0.0.1', port: prosody.c2sPort, security: 'plain' } } },
      limits: { maxSessions: 1_000_000, maxUnauthenticated: 100_000, maxUnauthenticatedPerAddress: 0, maxFailedLogins: 0 },
      upgrade: { resumesPerSecond, windowSeconds: 1 },
      pidFile: join(ctx.dir, 'upgrade-proxy.pid'),
      shutdownGraceSeconds: 2,
      log: { level: 'info', format: 'json' },
    }),
  );
  const logFd = openSync(logFile, 'a');
  const old = spawn(process.execPath, [CLI, configFile], { stdio: ['ignore', logFd, logFd], cwd: ctx.dir });
  closeSync(logFd);
  const oldExit = new Promise<number | null>((resolve) => old.once('exit', (code) => resolve(code)));
  const pids = new Set<number>([old.pid!]);

  const toReceivers: Direction = { sent: 0, delivered: new Set(), duplicated: 0, reordered: 0 };
  const toWatcher: Direction = { sent: 0, delivered: new Set(), duplicated: 0, reordered: 0 };
  const counts = { resumed: 0, failedResumes: 0, reconnectErrors: 0, unavailableSeen: 0, cutByProxy: 0 };
  const receivers: Receiver[] = Array.from({ length: receiverCount }, (_, index) => ({
    index,
    client: undefined,
    sm: undefined,
    hibernates: index % 3 === 0,
    away: false,
    outbox: [],
    nextOut: 0,
    highestIn: -1,
  }));
  const direct = (username: string): XmppClientOptions => ({
    host: '127.0.0.1',
    port: prosody.c2sPort,
    tls: false,
    domain: DOMAIN,
    username,
    password: PASSWORD,
    timeoutMs: 20_000,
  });
  let upgradeOver = false;
  /** The run is over: connections closed from here on are the benchmark's own. */
  let finished = false;
  let sender: BenchXmpp | undefined;
  let watcher: BenchXmpp | undefined;
  const lines: string[] = [];
  try {
    const listening = (): LogLine | undefined => logLines(logFile).find((line) => line.msg === 'listening');
    await waitUntil(() => listening() !== undefined, "the proxy's listener", 15_000, 50);
    const port = Number(listening()!.port);
    const viaProxy: XmppClientOptions = {
      host: '127.0.0.1',
      port,
      tls: true,
      domain: DOMAIN,
      username: 'rcv',
      password: PASSWORD,
      timeoutMs: 20_000,
    };

    const record = (direction: Direction, id: string, seq: number, highest: number): number => {
      if (direction.delivered.has(id)) {
        direction.duplicated++;
        return highest;
      }
      direction.delivered.add(id);
      if (seq < highest) direction.reordered++;
      return Math.max(seq, highest);
    };
    // While it reconnects, what it sends waits in the outbox: the resume's h says what goes again.
    const send = (receiver: Receiver, stanza: string): void => {
      receiver.outbox.push(stanza);
      if (!receiver.away) receiver.client?.send(stanza);
    };
    const attach = (receiver: Receiver, client: BenchXmpp): void => {
      receiver.client = client;
      client.onStanza = (element) => {
        const id = attr(element.bytes, 'id');
        if (element.localName !== 'message' || id === undefined || !id.startsWith('in.')) return;
        receiver.highestIn = record(toReceivers, id, Number(id.split('.')[2]), receiver.highestIn);
      };
      // Cut by the old process (the upgrade), not by the benchmark: back at once.
      void client.closed.then(() => {
        if (finished || receiver.client !== client || receiver.hibernates) return;
        counts.cutByProxy++;
        receiver.client = undefined;
        void comeBack(receiver);
      });
    };
    const comeBack = async (receiver: Receiver): Promise<void> => {
      receiver.away = true;
      let client: BenchXmpp | undefined;
      try {
        client = await BenchXmpp.connect(viaProxy);
        attach(receiver, client);
        await client.open();
        await client.authenticate();
        try {
          const resumed = await client.resumeSm(receiver.sm!);
          counts.resumed++;
          // XEP-0198 §5: what the proxy did not count goes again, in order.
          const h = Number(attr(resumed.bytes, 'h'));
          for (const stanza of receiver.outbox.slice(h)) client.send(stanza);
        } catch (err) {
          if (client.socket.destroyed) throw err;
          counts.failedResumes++;
          await client.bind(`r${receiver.index}`);
          await client.enableSm(true);
          receiver.sm = client.sm;
          receiver.outbox.length = 0;
        }
        receiver.away = false;
      } catch {
        counts.reconnectErrors++;
        client?.destroy();
        receiver.client = undefined;
        if (!finished) setTimeout(() => void comeBack(receiver), 200).unref();
      }
    };

    ctx.progress(`upgrade: the watcher, the sender and ${receiverCount} receivers log in`);
    watcher = await BenchXmpp.login(direct('watch'), 'watcher');
    const highestOut = new Map<number, number>();
    watcher.onStanza = (element) => {
      const from = attr(element.bytes, 'from') ?? '';
      if (element.localName === 'presence' && attr(element.bytes, 'type') === 'unavailable' && from.startsWith(`rcv@${DOMAIN}/`)) {
        counts.unavailableSeen++;
        return;
      }
      const id = attr(element.bytes, 'id');
      if (element.localName !== 'message' || id === undefined || !id.startsWith('out.')) return;
      const [, index, seq] = id.split('.');
      highestOut.set(Number(index), record(toWatcher, id, Number(seq), highestOut.get(Number(index)) ?? -1));
    };
    watcher.send(`<presence/>`);
    sender = await BenchXmpp.login(direct('snd'), 'sender');
    for (let i = 0; i < receiverCount; i += 50) {
      await Promise.all(
        receivers.slice(i, i + 50).map(async (receiver) => {
          const client = await BenchXmpp.connect(viaProxy);
          attach(receiver, client);
          await client.open();
          await client.authenticate();
          await client.bind(`r${receiver.index}`);
          await client.enableSm(true);
          receiver.sm = client.sm;
        }),
      );
    }
    // The watcher subscribes to the receivers' account; the first receivers then show their presence
    // (not all: the legacy server sends each available resource's presence to every other one).
    watcher.send(`<presence to='rcv@${DOMAIN}' type='subscribe'/>`);
    await sleep(300);
    send(receivers[0]!, `<presence to='watch@${DOMAIN}' type='subscribed'/>`);
    for (const receiver of receivers.slice(0, PRESENT)) send(receiver, '<presence/>');
    await sleep(1_000);
    counts.unavailableSeen = 0;
    for (const receiver of receivers.filter((r) => r.hibernates)) {
      receiver.client?.destroy();
      receiver.client = undefined;
      receiver.away = true;
    }

    const perTick = Math.max(1, Math.round((rate * TICK_MS) / 1000));
    const nextIn = new Map<number, number>();
    let cursorIn = 0;
    let cursorOut = 0;
    let traffic = true;
    const pump = (async () => {
      while (traffic) {
        for (let k = 0; k < perTick; k++) {
          const receiver = receivers[cursorIn++ % receiverCount]!;
          const seq = nextIn.get(receiver.index) ?? 0;
          nextIn.set(receiver.index, seq + 1);
          toReceivers.sent++;
          sender!.send(
            `<message to='rcv@${DOMAIN}/r${receiver.index}' id='in.${receiver.index}.${seq}' type='chat'><body>${seq}</body></message>`,
          );
        }
        for (let k = 0; k < perTick; k++) {
          const receiver = receivers[cursorOut++ % receiverCount]!;
          if (receiver.hibernates && !upgradeOver) continue;
          if (receiver.sm === undefined) continue;
          toWatcher.sent++;
          send(
            receiver,
            `<message to='watch@${DOMAIN}/watcher' id='out.${receiver.index}.${receiver.nextOut}' type='chat'><body>${receiver.nextOut++}</body></message>`,
          );
        }
        await sleep(TICK_MS);
      }
    })();

    ctx.progress('upgrade: traffic both ways for 3 s, then SIGUSR2');
    await sleep(3_000);
    const rss = { old: 0, new: 0 };
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        // The new process is the old one's child until the old one exits.
        for (const pid of childrenOf(old.pid!)) pids.add(pid);
        for (const pid of pids) {
          try {
            const bytes = procRssBytes(pid);
            // An exited process not yet reaped has no RSS line.
            if (Number.isNaN(bytes)) continue;
            if (pid === old.pid) rss.old = Math.max(rss.old, bytes);
            else rss.new = Math.max(rss.new, bytes);
          } catch {
            // Exited.
          }
        }
        await sleep(100);
      }
    })();
    const signalledAt = Date.now();
    old.kill('SIGUSR2');
    const code = await Promise.race([oldExit, sleep(120_000).then(() => 'timeout' as const)]);
    const upgradeMs = Date.now() - signalledAt;
    sampling = false;
    await sampler;
    upgradeOver = true;
    if (code !== 0) throw new Error(`the old process did not exit 0 after the upgrade (${String(code)})`);

    ctx.progress('upgrade: the hibernating third comes back; traffic for 3 s more');
    for (const receiver of receivers.filter((r) => r.hibernates)) void comeBack(receiver);
    await sleep(3_000);
    traffic = false;
    await pump;
    const settleDeadline = Date.now() + 30_000;
    let last = -1;
    let stableSince = Date.now();
    while (Date.now() < settleDeadline) {
      for (const receiver of receivers) receiver.client?.ack();
      const accounted = toReceivers.delivered.size + toWatcher.delivered.size;
      if (accounted !== last) {
        last = accounted;
        stableSince = Date.now();
      }
      if (receivers.every((r) => !r.away) && Date.now() - stableSince > 2_000) break;
      await sleep(250);
    }

    const log = logLines(logFile);
    const done = log.find((line) => line.msg === 'upgrade done; the new process serves; this one ends what could not move');
    const taken = log.find((line) => line.msg === 'upgrade: taken over; this process runs on alone');
    const newPid = taken?.pid;
    const resumes = rateOf(log.filter((line) => line.pid === newPid && line.msg === 'session resumed'));
    const cuts = rateOf(
      log.filter((line) => line.pid === old.pid && line.msg === 'session handed over to the new process' && line.attached === true),
    );
    const lostIn = toReceivers.sent - toReceivers.delivered.size;
    const lostOut = toWatcher.sent - toWatcher.delivered.size;
    const hibernating = receivers.filter((r) => r.hibernates).length;
    lines.push(
      `test/bench/upgrade-bench.ts: the CLI in front of the legacy Prosody, ${receiverCount} receivers with resumable stream management ` +
        `(${hibernating} hibernating with messages queued, ${receiverCount - hibernating} attached), ${rate} messages/s from a sender to the receivers ` +
        `and ${rate} messages/s from the attached receivers to a watcher (both on Prosody directly; the watcher subscribed to the receivers' presence, ` +
        `${PRESENT} of them available); ` +
        `\`upgrade.resumesPerSecond\` ${resumesPerSecond}. SIGUSR2, then the hibernating third comes back.`,
      '',
      table(
        [
          'upgrade (SIGUSR2 → old process exits)',
          'handed over',
          'left to end',
          'cut by the old process',
          'resumed',
          'clients cut per second by the old process (mean / busiest second)',
          'resumes per second at the new process (mean / busiest second)',
          'RSS during the switch, old / new',
        ],
        [
          [
            `${fmt(upgradeMs / 1000, 1)} s`,
            fmtInt(Number(done?.handedOver ?? Number.NaN)),
            fmtInt(Number(done?.left ?? Number.NaN)),
            fmtInt(counts.cutByProxy),
            fmtInt(counts.resumed),
            cuts,
            resumes,
            `${fmt(rss.old / 2 ** 20, 0)} / ${fmt(rss.new / 2 ** 20, 0)} MiB`,
          ],
        ],
      ),
      '',
      table(
        ['direction', 'sent', 'delivered', 'lost', 'duplicated', 'reordered'],
        [
          [
            'sender → receivers',
            fmtInt(toReceivers.sent),
            fmtInt(toReceivers.delivered.size),
            fmtInt(lostIn),
            fmtInt(toReceivers.duplicated),
            fmtInt(toReceivers.reordered),
          ],
          [
            'receivers → watcher',
            fmtInt(toWatcher.sent),
            fmtInt(toWatcher.delivered.size),
            fmtInt(lostOut),
            fmtInt(toWatcher.duplicated),
            fmtInt(toWatcher.reordered),
          ],
        ],
      ),
      '',
      verdict(lostIn + lostOut === 0, `${fmtInt(lostIn + lostOut)} lost (target 0)`),
      verdict(
        toReceivers.duplicated + toWatcher.duplicated === 0,
        `${fmtInt(toReceivers.duplicated + toWatcher.duplicated)} duplicated (target 0)`,
      ),
      verdict(
        toReceivers.reordered + toWatcher.reordered === 0,
        `${fmtInt(toReceivers.reordered + toWatcher.reordered)} reordered (target 0)`,
      ),
      verdict(
        counts.failedResumes === 0,
        `${fmtInt(counts.failedResumes)} failed resumes (target 0; ${fmtInt(counts.reconnectErrors)} reconnects retried)`,
      ),
      verdict(
        counts.unavailableSeen === 0,
        `${fmtInt(counts.unavailableSeen)} unavailable presences seen by the watcher (target 0: nobody logged out of Prosody)`,
      ),
    );
  } finally {
    finished = true;
    for (const receiver of receivers) receiver.client?.destroy();
    sender?.destroy();
    watcher?.destroy();
    for (const line of logLines(logFile)) if (line.pid !== undefined) pids.add(line.pid);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // Gone.
      }
    }
    await sleep(500);
    await prosody.stop();
  }
  return lines.join('\n');
}
