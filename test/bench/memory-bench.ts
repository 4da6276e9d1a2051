/**
 * Memory benchmark: what one session costs the proxy process, connected over TLS with SM enabled,
 * and hibernated with 0 and with 10 queued stanzas, at a few thousand sessions. The proxy runs in a
 * peer process started with `--expose-gc` and reports `process.memoryUsage()` after two full GCs;
 * the upstream is the fake one (a real server would only add its own costs elsewhere).
 *
 * Every measurement starts a fresh process, serves and closes a warm-up batch of sessions (so code,
 * caches and the allocator's free lists that every proxy builds once are not counted per session),
 * takes the baseline, then builds N sessions:
 * - connected: N sessions open at once;
 * - hibernated: sessions come and go in batches of 100 (open, optionally receive 10 stanzas they
 *   do not ack, drop the socket), as phones drop off over time, until N hibernate. Freed TLS memory
 *   is reused by the next batch, so RSS shows what hibernation keeps, not the peak of N open TLS
 *   connections (RSS never shrinks after such a peak).
 * The pipe() relay shows the floor: Node's own cost of one TLS connection plus one TCP connection.
 */
import { join } from 'node:path';
import { fmt, fmtInt, heapByType, Peer, sleep, table, verdict } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

const STANZA_BYTES = 600;
const QUEUED = 10;
const BATCH = 100;

async function waitForState(proxy: Peer, state: string, count: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = await proxy.call<{ states: Record<string, number> }>('stats');
    if ((stats.states[state] ?? 0) >= count) return;
    if (Date.now() > deadline) throw new Error(`expected ${count} sessions ${state}, have ${JSON.stringify(stats.states)}`);
    await sleep(100);
  }
}

type Scenario = 'pipe' | 'connected' | 'hibernated';

interface Row {
  readonly scenario: Scenario;
  readonly n: number;
  readonly queued: number;
  readonly rss: number;
  readonly heapUsed: number;
  readonly external: number;
  readonly sessionsPerSecond: number;
}

export async function runMemoryBench(ctx: BenchContext): Promise<string> {
  const counts = ctx.quick ? [1000] : [2000, 5000];
  const upstream = await Peer.start('fake-upstream', './fake-upstream.js');
  const client = await Peer.start('load-client', './load-client.js');
  const rows: Row[] = [];
  const problems: string[] = [];
  let heapText = '';
  try {
    const upstreamPort = await upstream.call<number>('start', { domain: DOMAIN });
    const endpoint = { host: '127.0.0.1', tls: true, domain: DOMAIN };
    const open = async (port: number, count: number, sm: boolean): Promise<number> => {
      const r = await client.call<{ opened: number; failed: number; seconds: number; firstError?: string }>('sessionsOpen', {
        ...endpoint,
        port,
        count,
        concurrency: 64,
        sm,
        resume: sm,
      });
      if (r.failed > 0) throw new Error(`memory: ${r.failed} of ${count} sessions failed: ${r.firstError}`);
      return r.seconds;
    };
    const scenarios: { scenario: Scenario; queued: number }[] = [
      { scenario: 'pipe', queued: 0 },
      { scenario: 'connected', queued: 0 },
      { scenario: 'hibernated', queued: 0 },
      { scenario: 'hibernated', queued: QUEUED },
    ];
    for (const n of counts) {
      for (const { scenario, queued } of scenarios) {
        ctx.progress(`memory: ${n} sessions, ${scenario}${queued > 0 ? `, ${queued} queued stanzas each` : ''}`);
        let peer: Peer;
        let port: number;
        let logFile: string | undefined;
        if (scenario === 'pipe') {
          peer = await Peer.start('pipe-relay', './pipe-relay.js', { execArgv: ['--expose-gc'] });
          port = await peer.call<number>('start', { upstreamPort, domain: DOMAIN });
        } else {
          const proxy = await startProxy(
            ctx,
            proxyConfig(upstreamPort, { streamManagement: { hibernationSeconds: 3600, maxHibernationSeconds: 3600 } }),
          );
          peer = proxy.peer;
          port = proxy.port;
          logFile = proxy.logFile;
        }
        const sm = scenario !== 'pipe';
        try {
          // Warm-up batch: served and closed before the baseline.
          await open(port, BATCH, sm);
          await client.call('sessionsClose');
          await sleep(300);
          const base = await peer.call<Memory>('memoryUsage');
          let seconds = 0;
          if (scenario === 'hibernated') {
            for (let done = 0; done < n; done += BATCH) {
              seconds += await open(port, Math.min(BATCH, n - done), true);
              if (queued > 0) await client.call('sessionsQueue', { k: queued, stanzaBytes: STANZA_BYTES, domain: DOMAIN });
              await client.call('sessionsDrop');
            }
            await waitForState(peer, 'hibernating', n, 30_000);
          } else {
            seconds = await open(port, n, sm);
          }
          const after = await peer.call<Memory>('memoryUsage');
          const queuedBytes = n * queued * STANZA_BYTES;
          rows.push({
            scenario,
            n,
            queued,
            rss: (after.rss - base.rss - queuedBytes) / n,
            heapUsed: (after.heapUsed - base.heapUsed) / n,
            external: (after.external - base.external - queuedBytes) / n,
            sessionsPerSecond: scenario === 'hibernated' ? Number.NaN : n / seconds,
          });
        } finally {
          await client.call('sessionsDrop').catch(() => undefined);
          await peer.stop();
        }
        if (logFile !== undefined) {
          const p = proxyLogProblems(logFile);
          if (p.warn + p.error > 0)
            problems.push(`${n} ${scenario}/${queued}: ${p.warn} warnings, ${p.error} errors (${p.samples.join('; ')})`);
        }
      }
    }
    if (ctx.profile) {
      heapText =
        (await sessionComposition(ctx, client, upstreamPort, counts[0]!, 'connected')) +
        (await sessionComposition(ctx, client, upstreamPort, counts[0]!, 'hibernated'));
    }
  } finally {
    await client.stop();
    await upstream.stop();
  }
  const kib = (x: number): string => fmt(x / 1024, 1);
  const label: Record<Scenario, string> = {
    pipe: 'pipe() relay: TLS + TCP socket (floor)',
    connected: 'proxy: connected, TLS, SM enabled',
    hibernated: 'proxy: hibernated',
  };
  const worstConnected = Math.max(...rows.filter((r) => r.scenario === 'connected').map((r) => r.rss));
  const floor = Math.max(...rows.filter((r) => r.scenario === 'pipe').map((r) => r.rss));
  const hibernated = rows.filter((r) => r.scenario === 'hibernated');
  const worstHibernatedRss = Math.max(...hibernated.map((r) => r.rss));
  const worstHibernatedHeap = Math.max(...hibernated.map((r) => r.heapUsed + r.external));
  return [
    'One process (the proxy, or the pipe() relay for the floor), `process.memoryUsage()` after two `global.gc()`, minus a baseline taken after a warm-up batch, ' +
      `divided by N; KiB per session. Queued stanzas are ${STANZA_BYTES} bytes, left unacked, and their bytes are subtracted (columns show the cost beyond them). ` +
      `Hibernated sessions are built in batches of ${BATCH} (open, drop), so RSS is what hibernation keeps rather than the peak of N open TLS connections. ` +
      '"external" is memory outside the V8 heap that Node accounts for (Buffers); OpenSSL and libuv memory shows only in RSS.',
    '',
    table(
      ['what', 'sessions', 'queued stanzas', 'RSS', 'heapUsed', 'external', 'heapUsed + external', 'sessions/s opened'],
      rows.map((r) => [
        label[r.scenario],
        fmtInt(r.n),
        String(r.queued),
        kib(r.rss),
        kib(r.heapUsed),
        kib(r.external),
        kib(r.heapUsed + r.external),
        Number.isFinite(r.sessionsPerSecond) ? fmtInt(r.sessionsPerSecond) : '',
      ]),
    ),
    '',
    verdict(
      worstConnected <= 32 * 1024,
      `connected TLS session with SM: up to ${kib(worstConnected)} KiB RSS per session (target ≤ 32 KiB); a bare Node TLS + TCP pair (pipe relay) costs up to ${kib(floor)} KiB`,
    ),
    verdict(
      worstHibernatedRss <= 4 * 1024,
      `hibernated session: up to ${kib(worstHibernatedRss)} KiB RSS per session beyond its queued bytes, of which ${kib(worstHibernatedHeap)} KiB V8 heap + external (target ≤ 4 KiB)`,
    ),
    problems.length > 0 ? `- proxy log: ${problems.join(' | ')}` : '- proxy log: no warnings or errors',
    heapText,
  ].join('\n');
}

/** --profile: one more round, with heap snapshots before and after N sessions are connected or hibernate. */
async function sessionComposition(
  ctx: BenchContext,
  client: Peer,
  upstreamPort: number,
  n: number,
  scenario: 'connected' | 'hibernated',
): Promise<string> {
  ctx.progress(`memory: heap snapshots of ${n} ${scenario} sessions`);
  const proxy = await startProxy(
    ctx,
    proxyConfig(upstreamPort, { streamManagement: { hibernationSeconds: 3600, maxHibernationSeconds: 3600 } }),
  );
  try {
    const at = { host: '127.0.0.1', port: proxy.port, tls: true, domain: DOMAIN, concurrency: 64, sm: true, resume: true };
    await client.call('sessionsOpen', { ...at, count: BATCH });
    await client.call('sessionsClose');
    await sleep(300);
    const basePath = join(ctx.dir, `heap-base-${scenario}.heapsnapshot`);
    const afterPath = join(ctx.dir, `heap-${scenario}.heapsnapshot`);
    await proxy.peer.call('memoryUsage');
    await proxy.peer.call('heapSnapshot', { path: basePath });
    if (scenario === 'connected') {
      await client.call('sessionsOpen', { ...at, count: n });
    } else {
      for (let done = 0; done < n; done += BATCH) {
        await client.call('sessionsOpen', { ...at, count: Math.min(BATCH, n - done) });
        await client.call('sessionsDrop');
      }
      await waitForState(proxy.peer, 'hibernating', n, 30_000);
    }
    await proxy.peer.call('memoryUsage');
    await proxy.peer.call('heapSnapshot', { path: afterPath });
    await client.call('sessionsDrop');
    return heapComposition(basePath, afterPath, n, scenario);
  } finally {
    await proxy.peer.stop();
  }
}

/** Per-session V8 heap by object type between two snapshots (bytes and objects per session). */
function heapComposition(basePath: string, afterPath: string, n: number, scenario: string): string {
  const base = new Map(heapByType(basePath, 100_000).map((e) => [e.name, e]));
  const diff = heapByType(afterPath, 100_000)
    .map((e) => ({
      name: e.name,
      count: (e.count - (base.get(e.name)?.count ?? 0)) / n,
      bytes: (e.bytes - (base.get(e.name)?.bytes ?? 0)) / n,
    }))
    .sort((a, b) => b.bytes - a.bytes);
  const total = diff.reduce((sum, e) => sum + e.bytes, 0);
  const lines = diff.slice(0, 20).map((e) => `    ${fmt(e.bytes, 0).padStart(6)} B  ${fmt(e.count, 2).padStart(6)} × ${e.name}`);
  return `\nOne ${scenario} session in the V8 heap (snapshots, ${fmtInt(n)} sessions; total ${fmt(total / 1024, 1)} KiB; "native system / JSArrayBufferData" is Buffer and typed-array memory):\n\n${lines.join('\n')}\n`;
}
