import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { fileURLToPath } from 'node:url';
import { waitUntil } from './wait.js';

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const CLI = join(REPO_ROOT, 'dist', 'src', 'cli.js');

/** CLI processes started by the tests: killed after each test, with every process an upgrade of theirs started. */
const running = new Set<CliProcess>();

/**
 * A test file's scratch directory for CLI runs (config files, certificates, PID files), made before
 * its tests and removed after them; the CLI processes a test leaves running are killed after it.
 * Returns the directory's path (available once the file's tests run).
 */
export function cliWorkDir(prefix: string): () => string {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterEach(() => killCliProcesses());
  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });
  return () => {
    if (dir === undefined) throw new Error('cliWorkDir: used before the tests run');
    return dir;
  };
}

/** SIGKILL to every CLI process a test left running (by pid: the ones upgrades started are no children of the test). */
function killCliProcesses(): void {
  for (const cli of running) {
    for (const pid of cli.pids()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  }
  running.clear();
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/**
 * A running `node dist/src/cli.js …`, its output collected as it arrives. After an upgrade
 * (README "Upgrading") the process it started writes to the same stdout: each pino line names
 * its `pid`.
 */
export class CliProcess {
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;
  /** The process itself ended (`exited` also waits for a process it started by an upgrade). */
  readonly processExited: Promise<Exit>;
  private outcome: Exit | undefined;

  constructor(
    readonly args: readonly string[],
    options: { readonly cwd: string; readonly env?: Readonly<Record<string, string>> },
  ) {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: options.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
    });
    running.add(this);
    this.child = child;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (this.stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.processExited = new Promise((resolveExit) => child.once('exit', (code, signal) => resolveExit({ code, signal })));
    // 'close', not 'exit': every byte of stdout and stderr has been read by then (and every process
    // that inherited them, after an upgrade, has ended).
    this.exited = new Promise((resolveExit, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => {
        this.outcome = { code, signal };
        resolveExit(this.outcome);
      });
    });
  }

  readonly child: ChildProcess;

  get pid(): number {
    return this.child.pid!;
  }

  /** The processes seen: this one, and every one an upgrade started (from their log lines). */
  pids(): Set<number> {
    const pids = new Set(this.logLines.map((line) => Number(line.pid)).filter((pid) => Number.isInteger(pid)));
    if (this.child.pid !== undefined) pids.add(this.child.pid);
    return pids;
  }

  get hasExited(): boolean {
    return this.outcome !== undefined;
  }

  /** stdout's lines that are JSON objects (pino's lines), in order. */
  get logLines(): Array<Record<string, unknown>> {
    const lines: Array<Record<string, unknown>> = [];
    for (const line of this.stdout.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // A line cut by a read boundary: complete on a later call.
      }
    }
    return lines;
  }

  /** Everything the process printed, for failure messages. */
  describe(): string {
    const state = this.outcome === undefined ? 'still running' : `exited with code ${this.outcome.code}, signal ${this.outcome.signal}`;
    return `node dist/src/cli.js ${this.args.join(' ')} (${state})\n--- stdout ---\n${this.stdout}\n--- stderr ---\n${this.stderr}`;
  }

  /** Resolves with the exit once the process has ended; fails saying what was expected after `timeoutMs`. */
  async expectExit(timeoutMs: number, expected: string): Promise<Exit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`expected the CLI to exit (${expected}) within ${timeoutMs} ms; ${this.describe()}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Waits for a log line whose `msg` is `msg` and that satisfies `where`; fails if the process exits first. */
  async expectLog(
    msg: string,
    where: (line: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 5_000,
  ): Promise<Record<string, unknown>> {
    const find = (): Record<string, unknown> | undefined => this.logLines.find((line) => line.msg === msg && where(line));
    try {
      await waitUntil(() => find() !== undefined || this.hasExited, `a log line '${msg}'`, timeoutMs);
    } catch (err) {
      throw new Error(`${(err as Error).message}; ${this.describe()}`, { cause: err });
    }
    const line = find();
    if (line === undefined) throw new Error(`expected a log line '${msg}' but the CLI exited first; ${this.describe()}`);
    return line;
  }
}
