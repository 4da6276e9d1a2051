/**
 * End to end with a real server: N pairs of clients, A sends `<message/>`s with a 64-byte body to B
 * (the body starts with the send time, for latency), B acks when SM is on. Scenarios:
 *
 * - (a) proxy → legacy Prosody (mod_smacks off), SM enabled at the proxy; clients on direct TLS;
 * - (a0) the same without SM, to show what SM itself costs;
 * - (b) Prosody with mod_smacks, directly, SM enabled by the clients; clients on plain TCP (the test
 *   Prosody has no TLS);
 * - (c) legacy Prosody directly, no SM, plain TCP.
 *
 * Two phases per scenario and repetition: saturation (each pair keeps `WINDOW` messages in flight)
 * for messages/s and CPU per message, and a fixed offered load (open loop, paced every millisecond)
 * for latency. CPU: the proxy's own `process.cpuUsage()`, Prosody's from /proc. Scenarios run in a
 * rotating order within each repetition; medians over repetitions.
 */
import { dirname, join } from 'node:path';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { findPidByCmdline, fmt, fmtInt, median, Peer, percentiles, procCpuSeconds, table, topSelfTime, verdict } from './bench-util.js';
import { proxyConfig, proxyLogProblems, startProxy, type BenchContext, type ProxyPeer } from './bench-context.js';

const PAIRS = 10;
const WINDOW = 10;
const BODY_BYTES = 64;
const PASSWORD = 'secret';
const USERS = [
  { username: 'alice', password: PASSWORD },
  { username: 'bob', password: PASSWORD },
];

interface RunResult {
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
}

interface Scenario {
  readonly key: string;
  readonly name: string;
  readonly endpoint: { host: string; port: number; tls: boolean; domain: string };
  readonly sm: boolean;
  readonly prosodyPid: number;
  readonly proxy: ProxyPeer | undefined;
}

interface Sample {
  readonly saturated: RunResult;
  readonly paced: RunResult;
  /** CPU seconds per 10 000 messages delivered, saturated phase. */
  readonly proxyCpu: number;
  readonly prosodyCpu: number;
  readonly clientCpu: number;
}

function pidOf(server: ProsodyServer): number {
  const pid = findPidByCmdline(join(dirname(server.dataDir), 'prosody.cfg.lua'));
  if (pid === undefined) throw new Error(`cannot find the Prosody process of ${server.dataDir}`);
  return pid;
}

async function measure(ctx: BenchContext, client: Peer, s: Scenario, ratePerSec: number): Promise<Sample> {
  const durationMs = ctx.quick ? 1500 : 5000;
  await client.call('e2eSetup', {
    ...s.endpoint,
    pairs: PAIRS,
    userA: 'alice',
    userB: 'bob',
    password: PASSWORD,
    mechanism: 'SCRAM-SHA-1',
    sm: s.sm,
    bodyBytes: BODY_BYTES,
  });
  try {
    // Warm-up, so JIT and server caches are not measured.
    await client.call('e2eRun', { mode: 'saturate', durationMs: 500, window: WINDOW, ratePerSec });
    const proxy0 = s.proxy === undefined ? 0 : await s.proxy.peer.cpu();
    const prosody0 = procCpuSeconds(s.prosodyPid);
    const client0 = await client.cpu();
    const saturated = await client.call<RunResult>('e2eRun', { mode: 'saturate', durationMs, window: WINDOW, ratePerSec });
    const proxy1 = s.proxy === undefined ? 0 : await s.proxy.peer.cpu();
    const prosody1 = procCpuSeconds(s.prosodyPid);
    const client1 = await client.cpu();
    const paced = await client.call<RunResult>('e2eRun', { mode: 'rate', durationMs, window: WINDOW, ratePerSec, samples: true });
    const per10k = 10_000 / saturated.deliveredTotal;
    return {
      saturated,
      paced,
      proxyCpu: s.proxy === undefined ? Number.NaN : (proxy1 - proxy0) * per10k,
      prosodyCpu: (prosody1 - prosody0) * per10k,
      clientCpu: (client1 - client0) * per10k,
    };
  } finally {
    await client.call('e2eTeardown');
  }
}

export async function runE2eBench(ctx: BenchContext): Promise<string> {
  const reps = ctx.quick ? 1 : 3;
  const ratePerSec = 2000;
  ctx.progress('e2e: starting Prosody (legacy and with mod_smacks)');
  const legacy = await startProsody({ smacks: false, users: USERS });
  const smacks = await startProsody({ smacks: true, users: USERS });
  const client = await Peer.start('load-client', './load-client.js');
  let proxy: ProxyPeer | undefined;
  const rows: string[][] = [];
  let profileText = '';
  const medians = new Map<string, { rate: number; p99Paced: number; p99Sat: number; proxyCpu: number }>();
  try {
    proxy = await startProxy(ctx, proxyConfig(legacy.c2sPort));
    const legacyPid = pidOf(legacy);
    const smacksPid = pidOf(smacks);
    const direct = (server: ProsodyServer): Scenario['endpoint'] => ({
      host: '127.0.0.1',
      port: server.c2sPort,
      tls: false,
      domain: server.domain,
    });
    const viaProxy = { host: '127.0.0.1', port: proxy.port, tls: true, domain: legacy.domain };
    const scenarios: Scenario[] = [
      { key: 'a', name: '(a) client —TLS→ proxy (SM) → legacy Prosody', endpoint: viaProxy, sm: true, prosodyPid: legacyPid, proxy },
      { key: 'a0', name: '(a0) client —TLS→ proxy (no SM) → legacy Prosody', endpoint: viaProxy, sm: false, prosodyPid: legacyPid, proxy },
      {
        key: 'b',
        name: '(b) client —TCP→ Prosody with mod_smacks (SM)',
        endpoint: direct(smacks),
        sm: true,
        prosodyPid: smacksPid,
        proxy: undefined,
      },
      {
        key: 'c',
        name: '(c) client —TCP→ legacy Prosody (no SM)',
        endpoint: direct(legacy),
        sm: false,
        prosodyPid: legacyPid,
        proxy: undefined,
      },
    ];
    const samples = new Map<string, Sample[]>(scenarios.map((s) => [s.key, []]));
    for (let rep = 0; rep < reps; rep++) {
      for (let i = 0; i < scenarios.length; i++) {
        const s = scenarios[(i + rep) % scenarios.length]!;
        ctx.progress(`e2e: ${s.name}, repetition ${rep + 1}/${reps}`);
        samples.get(s.key)!.push(await measure(ctx, client, s, ratePerSec));
      }
    }
    if (ctx.profile) {
      ctx.progress('e2e: profiling the proxy in scenario (a)');
      const a = scenarios[0]!;
      const path = join(ctx.dir, 'e2e-proxy-a.cpuprofile');
      await client.call('e2eSetup', {
        ...a.endpoint,
        pairs: PAIRS,
        userA: 'alice',
        userB: 'bob',
        password: PASSWORD,
        mechanism: 'SCRAM-SHA-1',
        sm: true,
        bodyBytes: BODY_BYTES,
      });
      await proxy.peer.call('profileStart');
      await client.call('e2eRun', { mode: 'saturate', durationMs: 3000, window: WINDOW, ratePerSec });
      await proxy.peer.call('profileStop', { path });
      await client.call('e2eTeardown');
      profileText = `\nProxy CPU profile in (a), saturated (V8 sampling, self time, share of the non-idle main-thread samples; ${path}):\n\n${topSelfTime(
        path,
        15,
      )
        .map((l) => `    ${l}`)
        .join('\n')}\n`;
    }
    for (const s of scenarios) {
      const list = samples.get(s.key)!;
      const m = (f: (x: Sample) => number): number => median(list.map(f));
      const rate = m((x) => x.saturated.delivered / x.saturated.seconds);
      const lost = list.reduce((sum, x) => sum + x.saturated.lost + x.paced.lost, 0);
      // Paced latency: percentiles of all samples of all repetitions together (a p99 of one short window is noisy).
      const [p50Paced, p99Paced] = percentiles(
        list.flatMap((x) => x.paced.samples ?? []),
        [50, 99],
      );
      medians.set(s.key, { rate, p99Paced: p99Paced!, p99Sat: m((x) => x.saturated.p99), proxyCpu: m((x) => x.proxyCpu) });
      rows.push([
        s.name,
        fmtInt(rate),
        `${fmt(
          m((x) => x.saturated.p50),
          2,
        )} / ${fmt(
          m((x) => x.saturated.p99),
          2,
        )}`,
        `${fmt(p50Paced!, 2)} / ${fmt(p99Paced!, 2)}`,
        s.proxy === undefined
          ? '–'
          : fmt(
              m((x) => x.proxyCpu),
              3,
            ),
        fmt(
          m((x) => x.prosodyCpu),
          3,
        ),
        fmt(
          m((x) => (Number.isNaN(x.proxyCpu) ? 0 : x.proxyCpu) + x.prosodyCpu),
          3,
        ),
        fmt(
          m((x) => x.clientCpu),
          3,
        ),
        String(lost),
      ]);
    }
  } finally {
    await client.stop();
    await proxy?.peer.stop();
    await legacy.stop();
    await smacks.stop();
  }
  const a = medians.get('a')!;
  const b = medians.get('b')!;
  const problems = proxy === undefined ? undefined : proxyLogProblems(proxy.logFile);
  return [
    `${PAIRS} pairs (alice/aN → bob/bN, SASL SCRAM-SHA-1), ${BODY_BYTES}-byte bodies. Saturated: each pair keeps ${WINDOW} messages in flight; ` +
      `paced: ${fmtInt(ratePerSec)} messages/s offered in total (open loop). Latency from the send time in the body to B's receipt, ms ` +
      `(saturated: median of the repetitions' percentiles; paced: percentiles of all repetitions' samples pooled). ` +
      `CPU seconds per 10 000 messages delivered in the saturated phase; the clients' own CPU is shown but excluded from the cost. ` +
      `Medians of ${reps} repetition(s). Prosody's pid CPU comes from /proc (10 ms ticks).`,
    '',
    table(
      [
        'scenario',
        'messages/s (saturated)',
        'p50 / p99 saturated',
        `p50 / p99 at ${fmtInt(ratePerSec)}/s`,
        'proxy CPU-s/10k',
        'Prosody CPU-s/10k',
        'proxy + Prosody',
        'clients CPU-s/10k',
        'lost',
      ],
      rows,
    ),
    '',
    verdict(
      a.proxyCpu <= 0.26,
      `proxy's own cost ${fmt(a.proxyCpu, 3)} CPU-s per 10 000 messages (target ≤ 0.26, aim 0.15)${a.proxyCpu <= 0.15 ? '; the 0.15 aim is met too' : ''}`,
    ),
    verdict(a.rate >= b.rate, `throughput (a) ${fmtInt(a.rate)}/s vs (b) ${fmtInt(b.rate)}/s (target (a) ≥ (b))`),
    verdict(
      a.p99Paced <= 1.2 * b.p99Paced,
      `p99 at ${fmtInt(ratePerSec)}/s: (a) ${fmt(a.p99Paced, 2)} ms vs (b) ${fmt(b.p99Paced, 2)} ms = ${fmt(a.p99Paced / b.p99Paced, 2)}× (target ≤ 1.2×; saturated: ${fmt(a.p99Sat / b.p99Sat, 2)}×)`,
    ),
    problems === undefined || problems.warn + problems.error === 0
      ? '- proxy log: no warnings or errors'
      : `- proxy log: ${problems.warn} warnings, ${problems.error} errors (${problems.samples.join('; ')})`,
    profileText,
  ].join('\n');
}
