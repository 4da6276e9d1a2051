/**
 * Shared helpers of the benchmarks in test/bench: statistics, tables, CPU time of other processes,
 * and a tiny request/response protocol over the Node IPC channel between the runner and the peers it
 * forks (proxy, fake upstream, pipe relay, load client), so that each runs in its own process and its
 * CPU time can be measured on its own. Benchmarks print figures; they never assert on time.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { writeHeapSnapshot } from 'node:v8';

// --- statistics -------------------------------------------------------------------------------

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

/** Several percentiles of one sample at once (sorts once). */
export function percentiles(values: readonly number[], ps: readonly number[]): number[] {
  if (values.length === 0) return ps.map(() => Number.NaN);
  const sorted = Float64Array.from(values).sort();
  return ps.map((p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!);
}

// --- formatting -------------------------------------------------------------------------------

export function fmt(value: number, digits = 1): string {
  if (!Number.isFinite(value)) return 'n/a';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtInt(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return Math.round(value).toLocaleString('en-US');
}

/** A Markdown table; `align` per column, 'r' for numbers. */
export function table(header: readonly string[], rows: readonly (readonly string[])[], align?: readonly ('l' | 'r')[]): string {
  const a = align ?? header.map((_, i) => (i === 0 ? 'l' : 'r'));
  return [
    `| ${header.join(' | ')} |`,
    `| ${a.map((x) => (x === 'r' ? '---:' : '---')).join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
  ].join('\n');
}

/** "met" / "MISSED" with the figure and the target, for the verdict lines under each table. */
export function verdict(ok: boolean, text: string): string {
  return `- ${ok ? '**met**' : '**MISSED**'}: ${text}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- CPU time of a process ----------------------------------------------------------------------

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User + system CPU seconds of a process, all its threads, from /proc/<pid>/stat (1/CLK_TCK resolution). */
export function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / ticksPerSecond();
}

/** Resident set size of a process in bytes, from /proc/<pid>/status. */
export function procRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match === null ? Number.NaN : Number(match[1]) * 1024;
}

/** The processes whose parent is `pid`, from /proc. */
export function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return children;
}

/** The pid of the process whose command line contains `needle` (e.g. a config file path). */
export function findPidByCmdline(needle: string): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes(needle) && !cmdline.includes('prosody-watchdog')) return Number(entry);
    } catch {
      // The process ended while we looked.
    }
  }
  return undefined;
}

// --- IPC between the runner and its peers ------------------------------------------------------

interface Request {
  readonly id: number;
  readonly cmd: string;
  readonly args: unknown;
}

type Reply = { readonly id: number; readonly result: unknown } | { readonly id: number; readonly error: string };

interface Notice {
  readonly event: string;
  readonly data: unknown;
}

/** Commands a peer process serves; each gets the request's arguments. */
export type Commands = Record<string, (args: any) => unknown>;

/**
 * Serves `commands` to the parent over IPC. Built in: `cpu` (this process's `process.cpuUsage()` in
 * seconds), `exit`, and `profileStart` / `profileStop` (V8 CPU profile through the inspector, written
 * to the path given). Call once, at the end of a peer's main module.
 */
export function serve(commands: Commands): void {
  const send = process.send?.bind(process);
  if (send === undefined) throw new Error('serve() needs an IPC channel: start this file with child_process.fork');
  let profiler: Session | undefined;
  const builtIn: Commands = {
    cpu: () => {
      const usage = process.cpuUsage();
      return (usage.user + usage.system) / 1e6;
    },
    /** `process.memoryUsage()`, after two full GCs when the process runs with --expose-gc. */
    memoryUsage: () => {
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      gc?.();
      return process.memoryUsage();
    },
    heapSnapshot: (args: { path: string }) => writeHeapSnapshot(args.path),
    /** Sampling heap profiler: which functions allocate the most bytes between start and stop. */
    allocationsStart: async () => {
      profiler ??= new Session();
      profiler.connect();
      await post(profiler, 'HeapProfiler.enable');
      await post(profiler, 'HeapProfiler.startSampling', {
        samplingInterval: 16384,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
      return true;
    },
    allocationsStop: async (args: { count?: number }) => {
      if (profiler === undefined) throw new Error('allocationsStop without allocationsStart');
      const { profile } = (await post(profiler, 'HeapProfiler.stopSampling')) as { profile: { head: AllocationNode } };
      profiler.disconnect();
      profiler = undefined;
      return topAllocations(profile.head, args.count ?? 15);
    },
    exit: () => {
      setImmediate(() => process.exit(0));
      return true;
    },
    profileStart: async () => {
      profiler = new Session();
      profiler.connect();
      await post(profiler, 'Profiler.enable');
      await post(profiler, 'Profiler.setSamplingInterval', { interval: 200 });
      await post(profiler, 'Profiler.start');
      return true;
    },
    profileStop: async (args: { path: string }) => {
      if (profiler === undefined) throw new Error('profileStop without profileStart');
      const { profile } = (await post(profiler, 'Profiler.stop')) as { profile: unknown };
      profiler.disconnect();
      profiler = undefined;
      writeFileSync(args.path, JSON.stringify(profile));
      return args.path;
    },
  };
  process.on('message', (message: Request) => {
    const handler = commands[message.cmd] ?? builtIn[message.cmd];
    const reply = (r: Reply): void => {
      send(r);
    };
    if (handler === undefined) {
      reply({ id: message.id, error: `unknown command ${message.cmd}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(message.args))
      .then(
        (result) => reply({ id: message.id, result: result ?? null }),
        (err: unknown) => reply({ id: message.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
      );
  });
  // The parent going away ends the peer: no orphans holding ports.
  process.on('disconnect', () => process.exit(0));
  send({ event: 'ready', data: process.pid });
}

/** Sends an unsolicited notice to the parent (e.g. a proxy event). */
export function notify(event: string, data: unknown): void {
  process.send?.({ event, data });
}

interface AllocationNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: AllocationNode[];
}

/** Functions that allocated the most (sampled) bytes, as "MB name (file:line)" lines. */
function topAllocations(head: AllocationNode, count: number): string[] {
  const bytes = new Map<string, number>();
  const walk = (node: AllocationNode): void => {
    const { functionName, url, lineNumber } = node.callFrame;
    const key = `${functionName || '(anonymous)'} (${url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1})`;
    if (node.selfSize > 0) bytes.set(key, (bytes.get(key) ?? 0) + node.selfSize);
    for (const child of node.children) walk(child);
  };
  walk(head);
  return [...bytes.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([key, b]) => `${(b / 2 ** 20).toFixed(2)} MB ${key}`);
}

function post(session: Session, method: string, params?: object): Promise<unknown> {
  return new Promise((resolve, reject) => {
    session.post(method, params ?? {}, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

/** A forked peer process and its command channel. */
export class Peer {
  readonly pid: number;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }>();
  private readonly listeners = new Map<string, ((data: unknown) => void)[]>();
  private exited = false;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    this.pid = child.pid!;
    child.on('message', (message: Reply | Notice) => {
      if ('event' in message) {
        for (const listener of this.listeners.get(message.event) ?? []) listener(message.data);
        return;
      }
      const waiting = this.pending.get(message.id);
      if (waiting === undefined) return;
      this.pending.delete(message.id);
      if ('error' in message) waiting.reject(new Error(`${this.name}.${waiting.cmd}: ${message.error}`));
      else waiting.resolve(message.result);
    });
    child.on('exit', (code, signal) => {
      this.exited = true;
      for (const waiting of this.pending.values())
        waiting.reject(new Error(`${this.name} exited (code ${code}, signal ${signal}) during ${waiting.cmd}`));
      this.pending.clear();
    });
  }

  /** Forks a compiled bench module (a sibling of this file) and waits for it to serve. */
  static async start(name: string, module: string, options: { execArgv?: string[]; args?: string[] } = {}): Promise<Peer> {
    const path = new URL(module, import.meta.url);
    const child = fork(path, options.args ?? [], {
      execArgv: options.execArgv ?? [],
      // Peers never write to the report: their stdout and stderr go to the runner's stderr.
      stdio: ['ignore', 2, 2, 'ipc'],
    });
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} did not start within 15 s`)), 15_000);
      child.once('message', (message: Notice) => {
        clearTimeout(timer);
        if (message.event === 'ready') resolve();
        else reject(new Error(`${name}: unexpected first message ${JSON.stringify(message)}`));
      });
      child.once('exit', (code) => reject(new Error(`${name} exited with code ${code} during start-up`)));
    });
    await ready;
    return new Peer(name, child);
  }

  call<T = unknown>(cmd: string, args: unknown = {}, timeoutMs = 600_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited; cannot run ${cmd}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}.${cmd} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        cmd,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.send({ id, cmd, args } satisfies Request);
    });
  }

  on(event: string, listener: (data: unknown) => void): void {
    const list = this.listeners.get(event) ?? [];
    list.push(listener);
    this.listeners.set(event, list);
  }

  /** CPU seconds of the peer (its own `process.cpuUsage()`, microsecond resolution). */
  cpu(): Promise<number> {
    return this.call<number>('cpu');
  }

  rssBytes(): number {
    return procRssBytes(this.pid);
  }

  /** Asks the peer to exit; kills it after 5 s. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.call('exit').catch(() => undefined);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(timer);
  }
}

// --- CPU profiles -------------------------------------------------------------------------------

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

/**
 * The functions with the most self time in a .cpuprofile, as "share% name (file:line)" lines; shares
 * of the samples in which the main thread was not idle. (V8 counts native work done before JS is
 * entered, such as TLS record decryption in a socket read, as idle: `perf` sees it, this does not.)
 */
export function topSelfTime(path: string, count = 12): string[] {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as { nodes: ProfileNode[]; samples?: number[] };
  const hits = new Map<number, number>();
  for (const sample of profile.samples ?? []) hits.set(sample, (hits.get(sample) ?? 0) + 1);
  const byFunction = new Map<string, number>();
  let total = 0;
  for (const node of profile.nodes) {
    const h = hits.get(node.id) ?? node.hitCount ?? 0;
    if (h === 0 || node.callFrame.functionName === '(idle)') continue;
    total += h;
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^.*\/(dist|node_modules)\//, '$1/');
    const key = `${functionName || '(anonymous)'} ${file === '' ? '' : `(${file}:${lineNumber + 1})`}`.trim();
    byFunction.set(key, (byFunction.get(key) ?? 0) + h);
  }
  return [...byFunction.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([key, h]) => `${fmt((100 * h) / total, 1)}% ${key}`);
}

/**
 * The object types that take the most V8 heap in a .heapsnapshot: constructor (or node type) name,
 * count and self size. Divide by the number of sessions to see what one session is made of.
 */
export function heapByType(path: string, count = 25): { name: string; count: number; bytes: number }[] {
  const snapshot = JSON.parse(readFileSync(path, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snapshot.snapshot.meta.node_fields;
  const stride = fields.length;
  const typeIndex = fields.indexOf('type');
  const nameIndex = fields.indexOf('name');
  const sizeIndex = fields.indexOf('self_size');
  const types = snapshot.snapshot.meta.node_types[0];
  const totals = new Map<string, { count: number; bytes: number }>();
  const nodes = snapshot.nodes;
  for (let i = 0; i < nodes.length; i += stride) {
    const type = types[nodes[i + typeIndex]!] ?? '?';
    const name =
      type === 'object' || type === 'closure' || type === 'native'
        ? `${type === 'object' ? '' : `${type} `}${snapshot.strings[nodes[i + nameIndex]!]}`
        : `(${type})`;
    const entry = totals.get(name) ?? { count: 0, bytes: 0 };
    entry.count++;
    entry.bytes += nodes[i + sizeIndex]!;
    totals.set(name, entry);
  }
  return [...totals.entries()]
    .map(([name, v]) => ({ name, ...v }))
    .sort((a, b) => b.bytes - a.bytes)
    .slice(0, count);
}
