/**
 * Drives a real XMPP client library running as a child process, over a line protocol: the test
 * writes commands to its stdin, one a line (e.g. `send bob@localhost/x m1 hello`), and the child
 * prints one JSON object a line on stdout, each with an `event` name (e.g.
 * `{"event":"message","id":"m1","body":"hello"}`). Its stderr (the library's own log) is kept for
 * error messages.
 *
 *   const alice = ChildClient.start('slixmpp', '/usr/bin/python3', [script, '--jid', ...]);
 *   const ready = await alice.expectEvent('ready');
 *   alice.send(`send ${bobJid} m1 hello`);
 *   await alice.expectEvent('message', (e) => e.body === 'hi', "bob's reply");
 *   await alice.stop();                       // `quit`, then SIGKILL if it does not exit in time
 *
 * Every event is appended to `events` and, until a wait consumes it, kept in an inbox; `expect()`
 * matches the inbox first, in arrival order, then waits. Every wait has a timeout whose error names
 * what was expected, the unconsumed events, the last events, whether the child is still running,
 * and the tail of its stderr. A line on stdout that is not a JSON object with an `event` becomes
 * an event named `unparsed` carrying the `line`, so that it shows up instead of vanishing.
 *
 * The children read commands until their stdin ends, so a test process that dies leaves none
 * behind; one that exits normally also SIGKILLs those still running.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ChildEvent {
  readonly event: string;
  readonly [field: string]: unknown;
}

export type ChildEventPredicate = (event: ChildEvent) => boolean;

interface Waiter {
  readonly predicate: ChildEventPredicate;
  readonly what: string;
  readonly resolve: (event: ChildEvent) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const KEPT_STDERR_LINES = 400;
const SHOWN_STDERR_LINES = 40;
const SHOWN_EVENTS = 8;
const SHOWN_CHARS = 300;

const running = new Set<ChildProcessWithoutNullStreams>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of running) child.kill('SIGKILL');
  });
}

export class ChildClient {
  /** Every event printed so far, in order. */
  readonly events: ChildEvent[] = [];
  readonly defaultTimeoutMs: number;

  private readonly inbox: ChildEvent[] = [];
  private waiters: Waiter[] = [];
  private readonly stderrLines: string[] = [];
  private exitStatus: string | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    /** Names the child in error messages. */
    readonly name: string,
    private readonly child: ChildProcessWithoutNullStreams,
    timeoutMs: number,
  ) {
    this.defaultTimeoutMs = timeoutMs;
    createInterface({ input: child.stdout }).on('line', (line) => this.onLine(line));
    createInterface({ input: child.stderr }).on('line', (line) => {
      this.stderrLines.push(line);
      if (this.stderrLines.length > KEPT_STDERR_LINES) this.stderrLines.shift();
    });
    // A write after the child exited fails with EPIPE; the exit itself is reported by every wait.
    child.stdin.on('error', () => undefined);
    this.exited = new Promise((resolve) => {
      const onGone = (status: string): void => {
        running.delete(child);
        this.exitStatus ??= status;
        for (const waiter of this.waiters) {
          clearTimeout(waiter.timer);
          waiter.reject(this.waitError(waiter.what, 'the process is gone'));
        }
        this.waiters = [];
        resolve();
      };
      child.once('error', (err) => onGone(`failed to start: ${err.message}`));
      // 'close', not 'exit': by then stdout is drained, so every event printed before the exit is in.
      child.once('close', (code, signal) => onGone(signal === null ? `exited with code ${code}` : `killed by ${signal}`));
    });
  }

  /** Spawns `command` with `args`, stdin/stdout/stderr piped; every wait defaults to `timeoutMs`. */
  static start(name: string, command: string, args: readonly string[], timeoutMs = DEFAULT_TIMEOUT_MS): ChildClient {
    installExitHook();
    const child = spawn(command, args, { stdio: 'pipe' });
    running.add(child);
    return new ChildClient(name, child, timeoutMs);
  }

  /** The process's exit (`exited with code 0`, `killed by SIGKILL`), or undefined while it runs. */
  get exit(): string | undefined {
    return this.exitStatus;
  }

  /** Writes one command line (a newline is appended). */
  send(line: string): void {
    if (line.includes('\n')) throw new Error(`${this.name}: a command is one line, got ${JSON.stringify(line)}`);
    this.child.stdin.write(`${line}\n`);
  }

  /** The first event (inbox first, then arrivals) matching `predicate`; consumes it. */
  expect(predicate: ChildEventPredicate, what: string, timeoutMs = this.defaultTimeoutMs): Promise<ChildEvent> {
    const index = this.inbox.findIndex(predicate);
    if (index >= 0) return Promise.resolve(this.inbox.splice(index, 1)[0]!);
    if (this.exitStatus !== undefined) return Promise.reject(this.waitError(what, 'the process is gone'));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        what,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(this.waitError(what, `timed out after ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** The first event named `name` (and satisfying `predicate`); consumes it. */
  expectEvent(
    name: string,
    predicate: ChildEventPredicate = () => true,
    what = `a '${name}' event`,
    timeoutMs = this.defaultTimeoutMs,
  ): Promise<ChildEvent> {
    return this.expect((e) => e.event === name && predicate(e), what, timeoutMs);
  }

  /** Throws if an event matching `predicate` was printed so far (consumed or not). */
  assertNone(predicate: ChildEventPredicate, what: string): void {
    const found = this.events.find(predicate);
    if (found !== undefined) throw this.waitError(`no ${what}`, `got ${show(found)}`);
  }

  /**
   * Sends `quit` and waits for the process to exit; after `timeoutMs`, SIGKILLs it and throws.
   * Does nothing if it has already exited.
   */
  async stop(timeoutMs = this.defaultTimeoutMs): Promise<void> {
    if (this.exitStatus !== undefined) return;
    this.send('quit');
    this.child.stdin.end();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      const error = this.waitError('the process to exit after `quit`', `timed out after ${timeoutMs} ms; killed`);
      await this.kill();
      throw error;
    }
  }

  /** SIGKILLs the process and waits for it to be gone. */
  async kill(): Promise<void> {
    if (this.exitStatus === undefined) this.child.kill('SIGKILL');
    await this.exited;
  }

  private onLine(line: string): void {
    const event = parseEvent(line);
    this.events.push(event);
    const waiter = this.waiters.find((w) => w.predicate(event));
    if (waiter === undefined) {
      this.inbox.push(event);
      return;
    }
    clearTimeout(waiter.timer);
    this.waiters = this.waiters.filter((w) => w !== waiter);
    waiter.resolve(event);
  }

  private waitError(what: string, reason: string): Error {
    const list = (events: readonly ChildEvent[]): string =>
      events.length === 0 ? '(none)' : events.slice(-SHOWN_EVENTS).map(show).join('\n    ');
    const stderr = this.stderrLines.slice(-SHOWN_STDERR_LINES).join('\n    ');
    return new Error(
      `${this.name}: expected ${what}: ${reason} (process ${this.exitStatus ?? 'running'}, ${this.events.length} events)` +
        `\n  unconsumed events:\n    ${list(this.inbox)}\n  last events:\n    ${list(this.events)}` +
        `\n  stderr (last ${SHOWN_STDERR_LINES} lines):\n    ${stderr === '' ? '(empty)' : stderr}`,
    );
  }
}

function parseEvent(line: string): ChildEvent {
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === 'object' && value !== null && typeof (value as { event?: unknown }).event === 'string') return value as ChildEvent;
  } catch {
    // Not JSON: reported below as it is.
  }
  return { event: 'unparsed', line };
}

function show(event: ChildEvent): string {
  const text = JSON.stringify(event);
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text;
}
