/**
 * `npm run bench`: runs the benchmarks of test/bench and prints one Markdown report on stdout
 * (progress goes to stderr). Everything runs on 127.0.0.1 and is started and stopped here: the
 * proxy, the fake upstream, the pipe relay and the load client each in a process of their own (so
 * that each one's CPU time can be measured), Prosody from the test harness. Every loop is bounded
 * in count and in time. Benchmarks print figures; they never assert on time.
 *
 *   node dist/test/bench/run.js [--quick] [--only scanner,relay,e2e,memory,resume,scale,storm,csi,upgrade] [--profile]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BenchContext } from './bench-context.js';
import { fmt, fmtInt, table } from './bench-util.js';
import { runCsiBench } from './csi-bench.js';
import { runE2eBench } from './e2e-bench.js';
import { runMemoryBench } from './memory-bench.js';
import { runRelayBench } from './relay-bench.js';
import { runResumeBench } from './resume-bench.js';
import { runScaleBench } from './scale-bench.js';
import { runScannerBench } from './scanner-bench.js';
import { runStormBench } from './storm-bench.js';
import { runUpgradeBench } from './upgrade-bench.js';

interface Benchmark {
  readonly key: string;
  readonly title: string;
  readonly run: (ctx: BenchContext) => Promise<string>;
}

const BENCHMARKS: readonly Benchmark[] = [
  {
    key: 'scanner',
    title: '1. Scanner: framing throughput',
    run: async (ctx) => {
      const passes = ctx.quick ? 3 : 5;
      const rows = await runScannerBench({ targetBytes: ctx.quick ? 20e6 : 100e6, passes });
      const scanner = rows[0]?.mbPerSecond ?? Number.NaN;
      return [
        `test/bench/scanner-bench.ts: a deterministic, realistic XMPP stream cut into 1-16 KiB chunks, in this process; median of ${passes} timed passes ` +
          'after a warm-up (the slower parsers get a quarter of the stream). The first estimates were about 250 MB/s for the scanner, 110 MB/s for ltx, 40 / 29 MB/s for sax.',
        '',
        table(
          ['parser', 'input MB', 'stanzas', 'MB/s', 'stanzas/s', 'scanner is … × faster'],
          rows.map((r) => [
            r.parser,
            fmt(r.inputMB, 1),
            fmtInt(r.stanzas),
            fmt(r.mbPerSecond, 1),
            fmtInt(r.stanzasPerSecond),
            r === rows[0] ? '' : fmt(scanner / r.mbPerSecond, 1),
          ]),
        ),
      ].join('\n');
    },
  },
  { key: 'relay', title: '2. Relay: throughput against a pipe() relay', run: runRelayBench },
  { key: 'e2e', title: '3. End to end with Prosody 0.12', run: runE2eBench },
  { key: 'memory', title: '4. Memory per session', run: runMemoryBench },
  { key: 'resume', title: '5. Resume', run: runResumeBench },
  { key: 'scale', title: '6. Scale: idle sessions in one proxy process', run: runScaleBench },
  { key: 'storm', title: '7. Storm: every stanza accounted for under cuts, resumes and expiries', run: runStormBench },
  { key: 'csi', title: "8. Client state indication: an inactive phone's hour", run: runCsiBench },
  { key: 'upgrade', title: '9. Upgrade: SIGUSR2 under load, nobody logged out', run: runUpgradeBench },
];

const USAGE = `usage: node dist/test/bench/run.js [--quick] [--only ${BENCHMARKS.map((b) => b.key).join(',')}] [--profile] [--keep]`;

function command(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

function prosodyVersion(): string {
  // Not `prosody --version`: Prosody 0.12 ignores the flag and starts the distro server.
  // `prosodyctl about` reads the distro config. The version file and the package are enough.
  let version = '';
  try {
    version = readFileSync('/usr/lib/prosody/prosody.version', 'utf8').trim();
  } catch {
    return 'not installed';
  }
  const pkg = command('dpkg-query', ['-W', '-f', '${Version}', 'prosody']);
  const lua = command('sh', ['-c', 'lua5.4 -v 2>&1 || lua -v 2>&1']).split('  ')[0] ?? '';
  return `${version}${pkg === '' ? '' : ` (Debian ${pkg})`}${lua === '' ? '' : `, ${lua}`}`;
}

function header(only: readonly Benchmark[], quick: boolean): string {
  const cpus = os.cpus();
  const nofile = command('sh', ['-c', 'ulimit -n']);
  const commit = command('git', ['rev-parse', '--short', 'HEAD']);
  const changed = command('git', ['status', '--porcelain', '--', 'src'])
    .split('\n')
    .filter((l) => l.trim() !== '').length;
  const lines = [
    '# smacks-proxy benchmarks',
    '',
    `- machine: ${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB RAM, ${os.type()} ${os.release()} (${os.arch()})`,
    `- Node ${process.version}, OpenSSL ${process.versions.openssl}; Prosody ${prosodyVersion()}; open files limit ${nofile}`,
    `- code: ${commit === '' ? 'not a git checkout' : `commit ${commit}`}${changed > 0 ? `, plus ${changed} changed or new file(s) under src/ (work tree)` : ''}`,
    `- load average at start: ${os
      .loadavg()
      .map((x) => fmt(x, 2))
      .join(' / ')} (1/5/15 min; anything else running on the machine skews the figures)`,
    `- run: ${new Date().toISOString()}, ${quick ? '`--quick` (fewer and shorter repetitions: noisier)' : 'full'}; benchmarks: ${only.map((b) => b.key).join(', ')}`,
    '',
    'How to run: `npm run bench` (all, about 9 minutes on 2 cores), `node dist/test/bench/run.js --only relay,resume`, `--quick` (short),',
    '`--profile` (adds a V8 CPU profile summary of the proxy where a benchmark offers one), `--keep` (keeps the scratch directory with proxy logs and profiles).',
    "Everything runs on 127.0.0.1: the proxy, the fake upstream, the pipe relay and the load client are separate Node processes, so each one's",
    'CPU time is its own (`process.cpuUsage()` of that process; Prosody from /proc/<pid>/stat). Medians over repetitions; ratios are taken within one repetition.',
    'The load client shares the 2 cores with what it measures: throughput figures are for this whole machine, CPU-per-work figures are per process.',
  ];
  return lines.join('\n');
}

/** CPU seconds the whole machine spent busy (all cores), from /proc/stat. */
function machineBusySeconds(): number {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal …: busy = all but idle and iowait.
  const busy = fields.slice(0, 8).reduce((sum, v, i) => (i === 3 || i === 4 ? sum : sum + v), 0);
  return busy / 100;
}

/** CPU seconds of this process and all its descendants, live or reaped (cutime/cstime), from /proc. */
function ownTreeSeconds(): number {
  const stats = new Map<number, { ppid: number; ticks: number }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      stats.set(Number(entry), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) });
    } catch {
      // Gone meanwhile.
    }
  }
  let ticks = 0;
  for (const [pid, st] of stats) {
    for (let p: number | undefined = pid; p !== undefined && p > 1; p = stats.get(p)?.ppid) {
      if (p === process.pid) {
        ticks += st.ticks;
        break;
      }
    }
  }
  return ticks / 100;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        quick: { type: 'boolean', default: false },
        only: { type: 'string' },
        profile: { type: 'boolean', default: false },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const keys = values.only
    ?.split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  const unknown = keys?.filter((k) => !BENCHMARKS.some((b) => b.key === k)) ?? [];
  if (unknown.length > 0) {
    process.stderr.write(`unknown benchmark(s): ${unknown.join(', ')}\n${USAGE}\n`);
    return 64;
  }
  const selected = keys === undefined ? BENCHMARKS : BENCHMARKS.filter((b) => keys.includes(b.key));
  const dir = mkdtempSync(join(os.tmpdir(), 'smacks-bench-'));
  const started = Date.now();
  const ctx: BenchContext = {
    quick: values.quick,
    profile: values.profile,
    dir,
    progress: (message) => process.stderr.write(`[bench ${fmt((Date.now() - started) / 1000, 0)} s] ${message}\n`),
  };
  process.stdout.write(`${header(selected, values.quick)}\n`);
  let failures = 0;
  for (const bench of selected) {
    const t0 = Date.now();
    const busy0 = machineBusySeconds();
    const own0 = ownTreeSeconds();
    ctx.progress(`${bench.key}: start`);
    let body: string;
    try {
      body = await bench.run(ctx);
    } catch (err) {
      failures++;
      body = `**failed**: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
    }
    const seconds = (Date.now() - t0) / 1000;
    const foreign = Math.max(0, machineBusySeconds() - busy0 - (ownTreeSeconds() - own0));
    process.stdout.write(
      `\n## ${bench.title}\n\n${body.trimEnd()}\n\n_(${fmt(seconds, 0)} s; meanwhile processes outside this run kept about ${fmt((100 * foreign) / seconds, 0)} % of one core busy)_\n`,
    );
  }
  process.stdout.write(
    `\nTotal ${fmt((Date.now() - started) / 1000, 0)} s; load average at the end ${os
      .loadavg()
      .map((x) => fmt(x, 2))
      .join(' / ')}${failures > 0 ? `, ${failures} benchmark(s) failed` : ''}.\n`,
  );
  if (values.keep || values.profile) process.stderr.write(`scratch directory kept: ${dir}\n`);
  else rmSync(dir, { recursive: true, force: true });
  return failures > 0 ? 1 : 0;
}

process.exitCode = await main();
// Prosody's harness and sockets must not keep the runner alive.
setTimeout(() => process.exit(process.exitCode ?? 0), 200).unref();
