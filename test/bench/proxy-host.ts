/**
 * Runs the proxy in a peer process of its own, so that its CPU time and memory are measured apart
 * from the load. The runner forks this file (with `--expose-gc` for the memory benchmarks) and
 * drives it with commands:
 *
 * - `start { config, logFile, metrics }`: `parseConfig(config)` → `new Proxy(...).start()`; logs go to
 *   `logFile` as JSON lines at the config's level (as in production: logging is part of the cost);
 *   with `metrics: false`, the sessions count nothing for the metrics (their cost, measured apart).
 * - `memoryUsage` (built into `serve`): `process.memoryUsage()` after two full GCs.
 * - `stats`: sessions by state.
 * - `watch { events }`: forwards those SmEvents to the runner as they happen.
 * - `stop`: `proxy.stop()`.
 */
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { parseConfig } from '../../src/config/config.js';
import { Proxy } from '../../src/proxy.js';
import type { SmEventMap } from '../../src/session/events.js';
import type { SessionMeter } from '../../src/session/session-meter.js';
import { notify, serve } from './bench-util.js';

let proxy: Proxy | undefined;

function requireProxy(): Proxy {
  if (proxy === undefined) throw new Error('proxy not started');
  return proxy;
}

/** Counts nothing: the baseline against which the relay benchmark measures the metrics' hot-path cost. */
const NO_METER: SessionMeter = { fromClient: () => undefined, toClient: () => undefined, ackRoundTrip: () => undefined };

async function start(args: { config: unknown; logFile: string; metrics?: boolean }): Promise<unknown> {
  const config = parseConfig(args.config, process.cwd());
  const log = pino(
    { level: config.log.level, base: { name: 'smacks-proxy' } },
    pino.destination({ dest: args.logFile, sync: false, mkdir: true }),
  );
  proxy = new Proxy(config, log, { skipProbe: true, ...(args.metrics === false ? { meter: NO_METER } : {}) });
  return proxy.start();
}

function stats(): unknown {
  const p = requireProxy();
  const states: Record<string, number> = {};
  for (const session of p.registry.sessions()) states[session.stateName] = (states[session.stateName] ?? 0) + 1;
  return { sessions: p.registry.size, resumable: p.registry.resumableCount, states };
}

function watch(args: { events: (keyof SmEventMap)[] }): boolean {
  const p = requireProxy();
  for (const event of args.events) {
    (p.events as unknown as NodeJS.EventEmitter).on(event, (data: unknown) => notify(event, data));
  }
  return true;
}

/** Serves the commands above to the parent (a module that patches the proxy first may call this). */
export function serveProxyHost(): void {
  serve({
    start,
    stats,
    watch,
    stop: async () => {
      await proxy?.stop();
      return true;
    },
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) serveProxyHost();
