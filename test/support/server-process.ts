/**
 * Supervision shared by the throwaway legacy servers the tests start (Prosody, ejabberd, jabberd2):
 * free ports, a foreground child whose output goes to a file, a dead man's switch that kills it if the
 * test worker dies, a stream-features probe for readiness, and log tails for error messages.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';

export const HOST = '127.0.0.1' as const;

/** Processes not stopped yet: killed synchronously if the test process exits without stopping them. */
const running = new Set<{ child: ChildProcess; dir: string }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const { child, dir } of running) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

export interface SupervisedProcess {
  readonly child: ChildProcess;
  /** The spawn error (ENOENT: package missing), if any. */
  spawnError(): Error | undefined;
  /** Whether the child has exited (or never started). */
  hasExited(): boolean;
  /** SIGTERM, SIGKILL after `graceMs`; keeps `dir`, so that the server can be started again on it. Idempotent. */
  halt(graceMs?: number): Promise<void>;
  /** `halt`, then removes `dir`. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Spawns `command` in the foreground with its console in `consoleFile` (a file, not a pipe: a pipe
 * would keep the test process's event loop alive). `dir` is removed when it stops, when the test
 * process exits, or when it dies by a signal (a shell reading our stdin kills the child then).
 */
export function spawnSupervised(
  command: string,
  args: readonly string[],
  options: { dir: string; consoleFile: string; env?: NodeJS.ProcessEnv },
): SupervisedProcess {
  installExitHook();
  const consoleFd = openSync(options.consoleFile, 'a');
  const spawnOptions: SpawnOptions = { cwd: options.dir, stdio: ['ignore', consoleFd, consoleFd], env: options.env ?? process.env };
  const child = spawn(command, args, spawnOptions);
  closeSync(consoleFd);
  child.unref();
  const entry = { child, dir: options.dir };
  running.add(entry);
  const watchdog = spawn(
    'sh',
    ['-c', 'read _ignored; kill -KILL "$1" 2>/dev/null; rm -rf -- "$2"', 'server-watchdog', String(child.pid), options.dir],
    { stdio: ['pipe', 'ignore', 'ignore'] },
  );
  watchdog.unref();
  (watchdog.stdin as unknown as { unref(): void }).unref();

  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let error: Error | undefined;
  child.once('error', (err) => {
    error = err;
  });
  const hasExited = (): boolean => child.exitCode !== null || child.signalCode !== null || error !== undefined;
  let halted: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  const halt = (graceMs = 5_000): Promise<void> =>
    (halted ??= (async () => {
      if (!hasExited()) {
        // The child is unref'd so that a running server never holds the test process open; while
        // this waits for its exit, it must (a server slower than graceMs would otherwise leave the
        // event loop empty after the SIGKILL, and a script awaiting stop() would end unsettled).
        child.ref();
        child.kill('SIGTERM');
        const killTimer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(killTimer);
      }
      watchdog.kill('SIGKILL');
      running.delete(entry);
    })());
  return {
    child,
    spawnError: () => error,
    hasExited,
    halt,
    stop: (graceMs = 5_000) =>
      (stopped ??= (async () => {
        await halt(graceMs);
        rmSync(options.dir, { recursive: true, force: true });
      })()),
  };
}

/** Connects, sends a stream header, resolves once `<stream:features` arrives. */
/** `preamble` goes before the stream header (a PROXY protocol header, for a listener that requires one). */
function probeStreamFeatures(host: string, port: number, domain: string, timeoutMs: number, preamble = ''): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = '';
    const socket = connect({ host, port });
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(
      () => finish(new Error(`no <stream:features> within ${timeoutMs} ms, got ${JSON.stringify(received.slice(0, 300))}`)),
      timeoutMs,
    );
    socket.on('connect', () => {
      socket.write(
        `${preamble}<?xml version='1.0'?><stream:stream to='${xmlAttr(domain)}' version='1.0' ` +
          `xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`,
      );
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      if (received.includes('<stream:features')) finish();
    });
    socket.on('error', (err) => finish(err));
    socket.on('close', () => finish(new Error(`connection closed, got ${JSON.stringify(received.slice(0, 300))}`)));
  });
}

/**
 * Probes until the server answers a stream header with features, or throws with `describe()` once
 * `timeoutMs` has passed or `failed()` names a reason (the process exited, a port was taken).
 */
export async function waitForFeatures(
  port: number,
  domain: string,
  options: { timeoutMs: number; failed: () => Error | undefined; describe: () => string; name: string; preamble?: string },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let lastProbeError = 'no probe yet';
  for (;;) {
    const failure = options.failed();
    if (failure !== undefined) throw failure;
    try {
      await probeStreamFeatures(HOST, port, domain, 1_000, options.preamble);
      return;
    } catch (err) {
      lastProbeError = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${options.name} did not answer a stream header with <stream:features> on ${HOST}:${port} within ` +
          `${options.timeoutMs} ms (last probe: ${lastProbeError}): ${options.describe()}`,
      );
    }
    await delay(100);
  }
}

/**
 * Polls every 10 ms until something accepts TCP connections on HOST:`port` (a port that is not an
 * XMPP c2s listener, e.g. jabberd2's router), with the same failure handling as waitForFeatures.
 */
export async function waitForListening(
  port: number,
  options: { timeoutMs: number; failed: () => Error | undefined; describe: () => string; name: string },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    const failure = options.failed();
    if (failure !== undefined) throw failure;
    if (await acceptsConnections(port)) return;
    if (Date.now() > deadline) {
      throw new Error(`${options.name} did not listen on ${HOST}:${port} within ${options.timeoutMs} ms: ${options.describe()}`);
    }
    await delay(10);
  }
}

function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: HOST, port });
    const finish = (accepted: boolean): void => {
      socket.destroy();
      resolve(accepted);
    };
    socket.setTimeout(1_000, () => finish(false));
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

export function xmlAttr(value: string): string {
  return value.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll("'", '&apos;').replaceAll('"', '&quot;');
}

export function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error(`no port from ${String(address)}`))));
    });
  });
}

export function readIfExists(file: string): string {
  return existsSync(file) ? readFileSync(file, 'utf8') : '';
}

export function tail(file: string, lines = 30): string {
  const text = readIfExists(file).trimEnd();
  return text === '' ? '(empty)' : text.split('\n').slice(-lines).join('\n');
}

/** The output of a failed execFile, for an error message. */
export function describeExecError(err: unknown, missingHint: string): string {
  const e = err as { code?: unknown; stdout?: string; stderr?: string; message?: string };
  if (e.code === 'ENOENT') return missingHint;
  return `exit ${String(e.code)}: ${`${e.stdout ?? ''} ${e.stderr ?? ''}`.trim() || String(e.message)}`;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
