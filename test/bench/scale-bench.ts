/**
 * Scale benchmark: how many concurrent sessions one proxy process holds, and how memory, idle CPU
 * and the latency of a probe session grow with them. Sessions are direct TLS with SM enabled
 * (resumable), idle after set-up, in front of the fake upstream. The proxy grows step by step;
 * at each step: memory after GC per session, the proxy's CPU while the sessions sit idle, the time
 * one full GC takes (a major GC pauses every session), and echo round trips of one probe session.
 *
 * Bounded by time and by the open-files limit of the proxy process (two descriptors per session:
 * client and upstream); the limit is inherited and, without CAP_SYS_RESOURCE, cannot be raised
 * above the hard limit, so the largest step is what the limit allows.
 */
import { execFileSync } from 'node:child_process';
import { fmt, fmtInt, Peer, sleep, table } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

function openFilesLimit(): number {
  try {
    return Number(execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim()) || 1024;
  } catch {
    return 1024;
  }
}

export async function runScaleBench(ctx: BenchContext): Promise<string> {
  const limit = openFilesLimit();
  const maxSessions = Math.floor((limit - 200) / 2);
  const wanted = ctx.quick ? [1000, 2500] : [1000, 2500, 5000, 7500, 10_000, 20_000];
  const steps = [...new Set(wanted.map((n) => Math.min(n, maxSessions)))];
  const budgetMs = ctx.quick ? 60_000 : 150_000;
  const idleMs = ctx.quick ? 2000 : 5000;
  const probes = ctx.quick ? 100 : 300;
  const upstream = await Peer.start('fake-upstream', './fake-upstream.js');
  const client = await Peer.start('load-client', './load-client.js');
  const rows: string[][] = [];
  const points: { sessions: number; gcMs: number; p99: number; max: number }[] = [];
  let logFile = '';
  let stoppedBy = '';
  try {
    const upstreamPort = await upstream.call<number>('start', { domain: DOMAIN });
    const proxy = await startProxy(
      ctx,
      proxyConfig(upstreamPort, { streamManagement: { hibernationSeconds: 3600, maxHibernationSeconds: 3600 } }),
    );
    logFile = proxy.logFile;
    const at = { host: '127.0.0.1', port: proxy.port, tls: true, domain: DOMAIN };
    try {
      await client.call('sessionsOpen', { ...at, count: 100, concurrency: 32, sm: true, resume: true });
      await client.call('sessionsClose');
      await sleep(300);
      const base = await proxy.peer.call<Memory>('memoryUsage');
      const started = Date.now();
      let have = 0;
      for (const n of steps) {
        if (Date.now() - started > budgetMs) {
          stoppedBy = `time budget of ${budgetMs / 1000} s reached before ${fmtInt(n)} sessions`;
          break;
        }
        ctx.progress(`scale: growing to ${fmtInt(n)} sessions`);
        const opened = await client.call<{ opened: number; failed: number; seconds: number; firstError?: string }>('sessionsOpen', {
          ...at,
          count: n - have,
          concurrency: 64,
          sm: true,
          resume: true,
        });
        have += opened.opened;
        if (opened.failed > 0)
          stoppedBy = `${opened.failed} of ${n - have + opened.opened} new sessions failed at ${fmtInt(n)} (${opened.firstError ?? ''})`;
        await sleep(1000);
        const memory = await proxy.peer.call<Memory>('memoryUsage');
        const gcStart = process.hrtime.bigint();
        await proxy.peer.call('memoryUsage');
        // Two full GCs and an IPC round trip: half of it is close to one full GC.
        const gcMs = Number(process.hrtime.bigint() - gcStart) / 2e6;
        const cpu0 = await proxy.peer.cpu();
        await sleep(idleMs);
        const idleCpu = ((await proxy.peer.cpu()) - cpu0) / (idleMs / 1000);
        const probe = await client.call<{ p50: number; p99: number; max: number }>('probe', {
          ...at,
          count: probes,
          stanzaBytes: 200,
          gapMs: 5,
        });
        rows.push([
          fmtInt(have),
          fmt(opened.seconds > 0 ? opened.opened / opened.seconds : Number.NaN, 0),
          fmt(memory.rss / 2 ** 20, 0),
          fmt((memory.rss - base.rss) / have / 1024, 1),
          fmt((memory.heapUsed - base.heapUsed) / have / 1024, 1),
          fmt(1000 * idleCpu, 1),
          fmt((1e6 * idleCpu) / have, 2),
          fmt(gcMs, 0),
          `${fmt(probe.p50, 2)} / ${fmt(probe.p99, 2)} / ${fmt(probe.max, 2)}`,
        ]);
        points.push({ sessions: have, gcMs, p99: probe.p99, max: probe.max });
        if (opened.failed > 0) break;
      }
    } finally {
      await client.call('sessionsClose').catch(() => undefined);
      await proxy.peer.stop();
    }
  } finally {
    await client.stop();
    await upstream.stop();
  }
  const problems = proxyLogProblems(logFile);
  const capped = wanted.some((n) => n > maxSessions);
  const first = points[0];
  const last = points[points.length - 1];
  const trend =
    first === undefined || last === undefined || first === last
      ? ''
      : `- from ${fmtInt(first.sessions)} to ${fmtInt(last.sessions)} sessions the probe's p99 goes from ${fmt(first.p99, 2)} to ${fmt(last.p99, 2)} ms (max ${fmt(first.max, 2)} → ${fmt(last.max, 2)} ms); ` +
        `a full GC grows from ${fmt(first.gcMs, 0)} to ${fmt(last.gcMs, 0)} ms (≈ ${fmt((1000 * (last.gcMs - first.gcMs)) / (last.sessions - first.sessions), 1)} ms per 1,000 sessions): ` +
        'V8 marks incrementally and concurrently, so everyday pauses are shorter, but this is the worst-case stall every session sees when a full mark-compact runs.';
  return [
    `Direct TLS sessions with SM (resumable), idle after set-up, fake upstream; the proxy grows step by step. ` +
      `Per-session figures are (value − baseline after a warm-up batch) / sessions. Idle CPU over ${idleMs / 1000} s. ` +
      `"full GC" ≈ one \`global.gc()\` (a major GC pauses every session for about this long). Probe: ${probes} echo round trips of 200-byte messages on one more session, 5 ms apart.`,
    '',
    table(
      [
        'sessions',
        'opened/s (this step)',
        'proxy RSS MB',
        'RSS KiB/session',
        'heapUsed KiB/session',
        'idle CPU ms/s',
        'idle CPU µs/s per session',
        'full GC ms',
        'probe RTT p50 / p99 / max ms',
      ],
      rows,
    ),
    '',
    capped
      ? `- open-files limit ${fmtInt(limit)} (hard; raising it needs CAP_SYS_RESOURCE, which this machine does not grant): at 2 descriptors per session one proxy process holds at most about ${fmtInt(maxSessions)} sessions here; larger steps were not run.`
      : `- open-files limit ${fmtInt(limit)}.`,
    ...(trend === '' ? [] : [trend]),
    ...(stoppedBy === '' ? [] : [`- stopped: ${stoppedBy}`]),
    problems.warn + problems.error > 0
      ? `- proxy log: ${problems.warn} warnings, ${problems.error} errors (${problems.samples.join('; ')})`
      : '- proxy log: no warnings or errors',
  ].join('\n');
}
