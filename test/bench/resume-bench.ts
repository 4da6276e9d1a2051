/**
 * Resume benchmark.
 *
 * (a) Latency, against the real legacy Prosody (mod_smacks off) behind the proxy: one session is
 *     dropped and resumed again and again. Each cycle: the client sends a message to its own full
 *     JID and drops the socket right after it is written (no stream close), waits 10 ms (the server
 *     sends the message back meanwhile; the proxy queues it), then opens a new connection (direct
 *     TLS, TCP_NODELAY) and authenticates (SASL relayed to Prosody), sends `<resume/>`; the SASL
 *     exchange names the session's account, so the proxy answers `<resumed/>` once the restarted
 *     stream's features have reached the client (no identity bind), then replays the queued
 *     message. Times are from the connect call.
 * (b) No slowdown after thousands of cycles, against the fake upstream (so only the proxy ages): the
 *     proxy's CPU per echoed message on the resumed session before and after N cycles, and the
 *     resume latency and proxy CPU per cycle over the run.
 */
import { dirname, join } from 'node:path';
import { startProsody } from '../support/prosody.js';
import { findPidByCmdline, fmt, Peer, percentiles, procCpuSeconds, table, verdict } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';
import type { CycleTimes } from './load-client.js';

const GAP_MS = 10;
const PASSWORD = 'secret';

function p(values: number[]): string {
  const [p50, p99] = percentiles(values, [50, 99]);
  return `${fmt(p50!, 2)} / ${fmt(p99!, 2)}`;
}

export async function runResumeBench(ctx: BenchContext): Promise<string> {
  const latency = await resumeLatency(ctx);
  const aging = await resumeAging(ctx);
  return `${latency}\n\n${aging}`;
}

async function resumeLatency(ctx: BenchContext): Promise<string> {
  const blocks = ctx.quick ? 2 : 4;
  const perBlock = ctx.quick ? 25 : 50;
  const prosody = await startProsody({ smacks: false, users: [{ username: 'resumer', password: PASSWORD }] });
  const prosodyPid = findPidByCmdline(join(dirname(prosody.dataDir), 'prosody.cfg.lua'));
  const client = await Peer.start('load-client', './load-client.js');
  const proxy = await startProxy(ctx, proxyConfig(prosody.c2sPort));
  const variants = [
    {
      slot: 'scram',
      name: 'SCRAM-SHA-1 (salted password cached), full TLS handshake',
      mechanism: 'SCRAM-SHA-1',
      tlsResumption: false,
      count: perBlock,
    },
    {
      slot: 'ticket',
      name: 'SCRAM-SHA-1, TLS session resumed (ticket)',
      mechanism: 'SCRAM-SHA-1',
      tlsResumption: true,
      count: Math.ceil(perBlock / 2),
    },
    {
      slot: 'plain',
      name: 'PLAIN (Prosody runs PBKDF2 on every login), full TLS handshake',
      mechanism: 'PLAIN',
      tlsResumption: false,
      count: Math.ceil(perBlock / 2),
    },
  ] as const;
  const results = new Map(
    variants.map((v) => [
      v.slot,
      { times: { tcp: [], tls: [], auth: [], resumed: [], replay: [], tlsReused: 0 } as CycleTimes, proxyCpu: 0, prosodyCpu: 0, cycles: 0 },
    ]),
  );
  try {
    for (const v of variants) {
      await client.call('resumeSetup', {
        host: '127.0.0.1',
        port: proxy.port,
        tls: true,
        domain: prosody.domain,
        username: 'resumer',
        password: PASSWORD,
        mechanism: v.mechanism,
        slot: v.slot,
      });
      // Warm-up (JIT, Prosody's caches, the TLS ticket), not recorded.
      await client.call('resumeCycles', { count: 20, gapMs: GAP_MS, tlsResumption: v.tlsResumption, withStanza: true, slot: v.slot });
    }
    // Blocks of each variant in turn, so that all of them meet the same conditions on the machine.
    for (let block = 0; block < blocks; block++) {
      for (const v of variants) {
        ctx.progress(`resume: block ${block + 1}/${blocks}, ${v.count} cycles, ${v.name}`);
        const r = results.get(v.slot)!;
        const proxyCpu0 = await proxy.peer.cpu();
        const prosodyCpu0 = prosodyPid === undefined ? Number.NaN : procCpuSeconds(prosodyPid);
        const t = await client.call<CycleTimes>('resumeCycles', {
          count: v.count,
          gapMs: GAP_MS,
          tlsResumption: v.tlsResumption,
          withStanza: true,
          slot: v.slot,
        });
        r.proxyCpu += (await proxy.peer.cpu()) - proxyCpu0;
        r.prosodyCpu += prosodyPid === undefined ? Number.NaN : procCpuSeconds(prosodyPid) - prosodyCpu0;
        r.cycles += v.count;
        for (const key of ['tcp', 'tls', 'auth', 'resumed', 'replay'] as const) r.times[key].push(...t[key]);
        r.times.tlsReused += t.tlsReused;
      }
    }
    await client.call('resumeTeardown');
  } finally {
    await client.stop();
    await proxy.peer.stop();
    await prosody.stop();
  }
  const rows = variants.map((v) => {
    const r = results.get(v.slot)!;
    return [
      v.name,
      `${r.cycles}${v.tlsResumption ? ` (${r.times.tlsReused} reused)` : ''}`,
      p(r.times.tcp),
      p(r.times.tls),
      p(r.times.auth),
      p(r.times.resumed),
      p(r.times.replay),
      fmt((1000 * r.proxyCpu) / r.cycles, 2),
      fmt((1000 * r.prosodyCpu) / r.cycles, 2),
    ];
  });
  const headline = results.get('scram')!.times;
  const [p50, p99] = percentiles(headline.resumed, [50, 99]);
  const [r50, r99] = percentiles(headline.replay, [50, 99]);
  const problems = proxyLogProblems(proxy.logFile);
  return [
    '**(a) Latency against legacy Prosody (mod_smacks off)**, ms from the connect call, p50 / p99. Each cycle drops the connection right after writing a message ' +
      `to the session's own JID, waits ${GAP_MS} ms, then resumes; the SASL exchange names the account, so the proxy binds no identity-check resource at Prosody. ` +
      `The three clients run in ${blocks} interleaved blocks after 20 warm-up cycles each.`,
    '',
    table(
      [
        'client',
        'cycles',
        'TCP up',
        'TLS up',
        'SASL success',
        '`<resumed/>`',
        'first replayed stanza',
        'proxy CPU ms/cycle',
        'Prosody CPU ms/cycle',
      ],
      rows,
    ),
    '',
    verdict(
      p50! <= 8,
      `p50 to \`<resumed/>\` ${fmt(p50!, 2)} ms, to the first replayed stanza ${fmt(r50!, 2)} ms (target ≤ 8 ms; first row)`,
    ),
    verdict(
      p99! <= 20,
      `p99 to \`<resumed/>\` ${fmt(p99!, 2)} ms, to the first replayed stanza ${fmt(r99!, 2)} ms (target ≤ 20 ms; first row)`,
    ),
    problems.warn + problems.error > 0
      ? `- proxy log: ${problems.warn} warnings, ${problems.error} errors (${problems.samples.join('; ')})`
      : '- proxy log: no warnings or errors',
  ].join('\n');
}

interface AgingResult {
  readonly rows: string[][];
  readonly before: number;
  readonly after: number;
  readonly fresh: number;
  readonly logFile: string;
}

/**
 * V8 flags of the control run: young generation capped at 4 MB per semi-space. The resume cycles
 * make V8 grow the young generation; once it is larger than the old generation's headroom, V8
 * starts incremental marking again and again (full mark-compacts, no scavenges) for the echo
 * traffic that follows (seen with --trace-gc and --trace-incremental-marking).
 */
const AGING_CONTROL_FLAGS = ['--max-semi-space-size=4'];

async function resumeAging(ctx: BenchContext): Promise<string> {
  const totalCycles = ctx.quick ? 300 : 2000;
  const plain = await agingRun(ctx, totalCycles, []);
  const control = await agingRun(ctx, totalCycles, AGING_CONTROL_FLAGS);
  const ratio = plain.after / plain.before;
  const controlRatio = control.after / control.before;
  const problems = proxyLogProblems(plain.logFile);
  const samples = ctx.quick ? 3 : 6;
  return [
    `**(b) No slowdown after ${totalCycles} hibernate/resume cycles** (fake upstream, SASL PLAIN, 2 ms between drop and resume). ` +
      `CPU per message: proxy CPU µs per 600-byte message echoed through the session (in and out, 64 in flight), the least of ${samples} runs (each run in parentheses) ` +
      "after a warm-up; other work on the machine only adds to a process's CPU time, so the least is the steadiest estimate. " +
      `The whole run is repeated with the proxy started with \`${AGING_CONTROL_FLAGS.join(' ')}\` as a control.`,
    '',
    table(
      ['proxy', 'phase', 'proxy CPU µs/message', '`<resumed/>` p50 / p99 ms', 'proxy CPU ms/cycle', 'proxy heapUsed MB (after GC)'],
      [...plain.rows.map((r) => ['default', ...r]), ...control.rows.map((r) => [`\`${AGING_CONTROL_FLAGS.join(' ')}\``, ...r])],
    ),
    '',
    verdict(
      ratio <= 1.1,
      `CPU per message after ${totalCycles} cycles is ${fmt(ratio, 2)}× the start (target ≤ 1.1×); a fresh session in the same proxy at the end costs ${fmt(plain.fresh / plain.before, 2)}× the start; ` +
        `with \`${AGING_CONTROL_FLAGS.join(' ')}\`: ${fmt(controlRatio, 2)}× (fresh session ${fmt(control.fresh / control.before, 2)}×)`,
    ),
    problems.warn + problems.error > 0
      ? `- proxy log: ${problems.warn} warnings, ${problems.error} errors (${problems.samples.join('; ')})`
      : '- proxy log: no warnings or errors',
  ].join('\n');
}

async function agingRun(ctx: BenchContext, totalCycles: number, execArgv: string[]): Promise<AgingResult> {
  const chunk = ctx.quick ? 100 : 500;
  const echoes = ctx.quick ? 10_000 : 20_000;
  const warmup = ctx.quick ? 30_000 : 100_000;
  const samples = ctx.quick ? 3 : 6;
  const upstream = await Peer.start('fake-upstream', './fake-upstream.js');
  const client = await Peer.start('load-client', './load-client.js');
  const rows: string[][] = [];
  let logFile = '';
  let before = Number.NaN;
  let after = Number.NaN;
  let fresh = Number.NaN;
  try {
    const upstreamPort = await upstream.call<number>('start', { domain: DOMAIN });
    const proxy = await startProxy(ctx, proxyConfig(upstreamPort), execArgv);
    logFile = proxy.logFile;
    try {
      const setup = (slot: string): Promise<unknown> =>
        client.call('resumeSetup', {
          host: '127.0.0.1',
          port: proxy.port,
          tls: true,
          domain: DOMAIN,
          username: `aging-${slot}`,
          password: PASSWORD,
          mechanism: 'PLAIN',
          slot,
        });
      const echo = (slot: string, count: number): Promise<unknown> =>
        client.call('resumeEcho', { count, window: 64, stanzaBytes: 600, slot });
      const perMessage = async (slot: string): Promise<{ min: number; all: number[] }> => {
        const all: number[] = [];
        for (let i = 0; i < samples; i++) {
          const c0 = await proxy.peer.cpu();
          await echo(slot, echoes);
          all.push(((await proxy.peer.cpu()) - c0) / echoes);
        }
        return { min: Math.min(...all), all };
      };
      const show = (m: { min: number; all: number[] }): string =>
        `${fmt(m.min * 1e6, 2)} (${m.all.map((x) => fmt(x * 1e6, 1)).join(', ')})`;
      const heapMb = async (): Promise<number> => (await proxy.peer.call<{ heapUsed: number }>('memoryUsage')).heapUsed / 2 ** 20;
      await setup('aged');
      await echo('aged', warmup);
      const m0 = await perMessage('aged');
      before = m0.min;
      rows.push(['the session, before the cycles', show(m0), '', '', fmt(await heapMb(), 1)]);
      for (let done = 0; done < totalCycles; done += chunk) {
        ctx.progress(
          `resume: aging${execArgv.length > 0 ? ` (${execArgv.join(' ')})` : ''}, cycles ${done + 1}-${done + chunk} of ${totalCycles}`,
        );
        const c0 = await proxy.peer.cpu();
        const times = await client.call<CycleTimes>('resumeCycles', {
          count: chunk,
          gapMs: 2,
          tlsResumption: false,
          withStanza: true,
          slot: 'aged',
        });
        const cpu = (await proxy.peer.cpu()) - c0;
        rows.push([`cycles ${done + 1}-${done + chunk}`, '', p(times.resumed), fmt((1000 * cpu) / chunk, 2), fmt(await heapMb(), 1)]);
      }
      const m1 = await perMessage('aged');
      after = m1.min;
      rows.push([`the session, after ${totalCycles} cycles`, show(m1), '', '', fmt(await heapMb(), 1)]);
      await setup('fresh');
      await echo('fresh', echoes);
      const m2 = await perMessage('fresh');
      fresh = m2.min;
      rows.push(['a fresh session, at the end', show(m2), '', '', fmt(await heapMb(), 1)]);
      await client.call('resumeTeardown');
    } finally {
      await proxy.peer.stop();
    }
  } finally {
    await client.stop();
    await upstream.stop();
  }
  return { rows, before, after, fresh, logFile };
}
