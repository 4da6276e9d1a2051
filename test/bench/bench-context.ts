/**
 * What every benchmark of the runner gets: the run's options, a scratch directory, progress output
 * (stderr, so stdout stays the Markdown report), and how to start the proxy in its own process.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Peer } from './bench-util.js';

export interface BenchContext {
  /** `--quick`: fewer repetitions and shorter windows (figures are noisier). */
  readonly quick: boolean;
  /** `--profile`: take a V8 CPU profile of the proxy in the benchmarks that offer one. */
  readonly profile: boolean;
  /** Scratch directory of this run (proxy logs, profiles). */
  readonly dir: string;
  progress(message: string): void;
}

/** The XMPP domain every benchmark serves. */
export const DOMAIN = 'localhost';

/** Proxy config for the benchmarks: one direct TLS listener on loopback, generous limits. */
export function proxyConfig(
  upstreamPort: number,
  overrides: { streamManagement?: Record<string, unknown>; limits?: Record<string, unknown>; logLevel?: string } = {},
): unknown {
  return {
    listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
    tls: { selfSigned: true },
    domains: { [DOMAIN]: { upstream: { host: '127.0.0.1', port: upstreamPort, security: 'plain' } } },
    limits: { maxSessions: 1_000_000, ...overrides.limits },
    streamManagement: { ...overrides.streamManagement },
    log: { level: overrides.logLevel ?? 'info', format: 'json' },
  };
}

export interface ProxyPeer {
  readonly peer: Peer;
  readonly port: number;
  readonly logFile: string;
}

let proxyCount = 0;

/**
 * Forks proxy-host.js, starts the proxy with `config`, returns its direct TLS port.
 * `SMACKS_BENCH_PROXY_HOST` names another module next to this one to fork instead (one that
 * patches the proxy before serving, to measure a candidate fix with the same benchmarks).
 */
export async function startProxy(ctx: BenchContext, config: unknown, execArgv: string[] = [], metrics = true): Promise<ProxyPeer> {
  const logFile = join(ctx.dir, `proxy-${++proxyCount}.log`);
  const module = process.env.SMACKS_BENCH_PROXY_HOST ?? './proxy-host.js';
  const peer = await Peer.start('proxy', module, { execArgv: ['--expose-gc', ...execArgv] });
  const listeners = await peer.call<{ type: string; port: number }[]>('start', { config, logFile, metrics });
  const port = listeners.find((l) => l.type === 'directtls')?.port;
  if (port === undefined) throw new Error('the proxy bound no directtls listener');
  return { peer, port, logFile };
}

/** Counts of the proxy log's lines at warn (40) and above, with the first few messages. */
export function proxyLogProblems(logFile: string): { warn: number; error: number; samples: string[] } {
  let text = '';
  try {
    text = readFileSync(logFile, 'utf8');
  } catch {
    return { warn: 0, error: 0, samples: [] };
  }
  let warn = 0;
  let error = 0;
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let entry: { level?: number; msg?: string };
    try {
      entry = JSON.parse(line) as { level?: number; msg?: string };
    } catch {
      continue;
    }
    if ((entry.level ?? 0) < 40) continue;
    // Expected in every benchmark: the proxy serves its generated certificate.
    if ((entry.msg ?? '').startsWith('tls.selfSigned')) continue;
    if ((entry.level ?? 0) >= 50) error++;
    else warn++;
    const msg = entry.msg ?? '';
    samples.set(msg, (samples.get(msg) ?? 0) + 1);
  }
  return { warn, error, samples: [...samples.entries()].slice(0, 5).map(([m, n]) => `${n}× ${m}`) };
}
