/**
 * The running process's side of an upgrade (src/upgrade/upgrade.ts) against a scripted new
 * process and in-memory sessions, with fake timers: the pace of the disconnects, what stays, and
 * what a failing new process leaves behind. The real thing, two processes and a legacy server,
 * is test/e2e/upgrade.test.ts.
 */
import { EventEmitter } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { Server, Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { SessionSummary } from '../../src/session/session-summary.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { StreamManagement } from '../../src/sm/stream-management.js';
import type { ToNext, ToPrevious } from '../../src/upgrade/handoff-protocol.js';
import { Upgrade, type HandedOff, type MovableSession, type UpgradeOutcome, type UpgradingProxy } from '../../src/upgrade/upgrade.js';

const SETTINGS = {
  hibernationMs: 300_000,
  maxHibernationMs: 300_000,
  maxUnackedStanzas: 0,
  maxAckDelayMs: 30_000,
  ackRequestIntervalMs: 60_000,
  maxQueueStanzas: 100,
  maxQueueBytes: 1 << 20,
};

/** A session as the hand-off sees it; an attached one comes with its client link, whose drop is recorded. */
class FakeSession implements MovableSession {
  state: 'active' | 'hibernating' | 'authenticating' | 'stranded' | 'gone';
  resuming: string | undefined;
  readonly smId: string | undefined;
  /** When its client link was dropped (an attached session, once handed over). */
  cutAtMs: number | undefined;
  /** Ended by the hand-off as at SIGTERM: it could not move. */
  shutDown = false;
  /** How many more times `handOff` refuses (an element half read from the legacy server). */
  refusals = 0;

  constructor(
    state: FakeSession['state'],
    readonly resumable = true,
    readonly domain: string | undefined = 'example.org',
  ) {
    this.state = state;
    this.smId = resumable ? `sm-${Math.random()}` : undefined;
  }

  summary(): SessionSummary {
    return {
      sid: 's',
      jid: 'a@example.org/r',
      state: this.state,
      transport: undefined,
      remote: undefined,
      sinceMs: 0,
      hibernatingSinceMs: undefined,
      smEnabled: this.resumable,
      resumable: this.resumable,
      queued: 0,
    };
  }

  shutdown(): void {
    this.shutDown = true;
    this.state = 'gone';
  }

  handOff(): HandedOff | undefined {
    const attached = this.state === 'active' && this.resumable;
    if (this.state !== 'hibernating' && !attached) return undefined;
    if (this.refusals > 0) {
      this.refusals--;
      return undefined;
    }
    this.state = 'gone';
    const enabled = StreamManagement.enable({
      ns: 'urn:xmpp:sm:3',
      resumeAttr: 'true',
      maxAttr: undefined,
      settings: SETTINGS,
      budget: new MemoryBudget(1 << 20),
    });
    if (!enabled.ok) throw new Error(enabled.text);
    const session = {
      sid: 's',
      addressKey: '192.0.2.1',
      domain: 'example.org',
      jid: 'a@example.org/r',
      sinceMs: 0,
      expiresAtMs: 300_000,
      presenceShown: false,
      serverFeatures: undefined,
      features: {},
      sm: enabled.sm.snapshot(),
    };
    const link = attached ? { destroy: () => void (this.cutAtMs = Date.now()) } : undefined;
    return { session, upstream: { socket: new Socket(), serverHeader: Buffer.from('<stream:stream>') }, link };
  }
}

class FakeProxy implements UpgradingProxy {
  readonly sessions_: FakeSession[] = [];
  accepting = true;
  acceptedAgain = 0;
  handOffsOver = 0;
  readonly listener = new Server();

  listeningSockets(): ReadonlyMap<string, Server> {
    return new Map([['starttls 127.0.0.1:5222', this.listener]]);
  }
  handListenersOver(): void {
    this.accepting = false;
  }
  async acceptAgain(): Promise<void> {
    this.accepting = true;
    this.acceptedAgain++;
  }
  sessions(): Iterable<MovableSession> {
    return this.sessions_.filter((session) => session.state !== 'gone');
  }
  canMove(session: MovableSession): boolean {
    return session.domain === 'example.org';
  }
  handOffOver(): void {
    this.handOffsOver++;
  }
  rememberedEnded() {
    return [{ smId: 'old', h: 3, bareJid: 'b@example.org', domain: 'example.org', reason: 'expired' as const, endedAtMs: 1 }];
  }
}

/**
 * The new process, scripted: it answers each step, unless it exits at one (`start`: before it is
 * ready), stays silent, never gets started (a failed fork: an 'error', no pid), or dies with a
 * send still waiting to be written (Node then never calls that send's callback).
 */
class FakeNext extends EventEmitter {
  readonly pid: number | undefined;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  connected = true;
  readonly received: ToNext[] = [];
  handles = 0;
  private readonly exitAt: ToNext['kind'] | 'start' | undefined;
  private readonly exitCodeThen: number;
  private readonly silent: boolean;
  private readonly stallAt: ToNext['kind'] | undefined;

  constructor(
    script: { exitAt?: ToNext['kind'] | 'start'; exitCode?: number; silent?: boolean; forkFails?: boolean; stallAt?: ToNext['kind'] } = {},
  ) {
    super();
    this.exitAt = script.exitAt;
    this.exitCodeThen = script.exitCode ?? 3;
    this.silent = script.silent ?? false;
    this.stallAt = script.stallAt;
    this.pid = script.forkFails === true ? undefined : 4242;
    if (script.forkFails === true) {
      this.connected = false;
      setTimeout(() => this.emit('error', Object.assign(new Error('spawn EMFILE'), { code: 'EMFILE' })), 1);
    } else if (this.exitAt === 'start') setTimeout(() => this.exit(this.exitCodeThen, null), 10);
    else setTimeout(() => this.reply({ kind: 'ready' }), 10);
  }

  send(message: ToNext, handle: unknown, callback: (err: Error | null) => void): boolean {
    if (!this.connected) throw new Error('Channel closed');
    this.received.push(message);
    if (handle !== undefined) this.handles++;
    if (message.kind === this.stallAt) {
      // Written never: the process dies before it acknowledges the handle before this one.
      setTimeout(() => this.exit(1, null), 1);
      return true;
    }
    queueMicrotask(() => callback(null));
    if (message.kind === this.exitAt) {
      setTimeout(() => this.exit(this.exitCodeThen, null), 1);
      return true;
    }
    if (message.kind === 'listeners-sent') setTimeout(() => this.reply({ kind: 'listening' }), 5);
    if (message.kind === 'session') setTimeout(() => this.reply({ kind: 'adopted' }), 1);
    if (message.kind === 'done') setTimeout(() => this.reply({ kind: 'running' }), 5);
    return true;
  }

  kill(signal: NodeJS.Signals): boolean {
    setTimeout(() => this.exit(null, signal), 1);
    return true;
  }

  disconnect(): void {
    if (!this.connected) throw new Error('IPC channel is already disconnected');
    this.connected = false;
    this.emit('disconnect');
  }

  private reply(message: ToPrevious): void {
    if (!this.silent && this.exitCode === null && this.signalCode === null) this.emit('message', message, undefined);
  }

  private exit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exitCode !== null || this.signalCode !== null) return;
    this.exitCode = code;
    this.signalCode = signal;
    if (this.connected) this.disconnect();
    this.emit('exit', code, signal);
  }
}

function run(proxy: FakeProxy, next: FakeNext, settings = { resumesPerSecond: 10, windowMs: 1_000 }): Promise<UpgradeOutcome> {
  return new Upgrade(proxy, settings, pino({ level: 'silent' })).run(next as unknown as ChildProcess);
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(10_000);
});

afterEach(() => {
  vi.useRealTimers();
});

describe('Upgrade: the running process hands over', () => {
  it('hands hibernating sessions over at once, and cuts attached ones at resumesPerSecond; the listeners first, then the ended sessions and who comes', async () => {
    const proxy = new FakeProxy();
    const hibernating = Array.from({ length: 5 }, () => new FakeSession('hibernating'));
    const attached = Array.from({ length: 20 }, () => new FakeSession('active'));
    proxy.sessions_.push(...hibernating, ...attached);
    const next = new FakeNext();
    const outcome = run(proxy, next);
    await vi.advanceTimersByTimeAsync(200);
    expect(proxy.accepting).toBe(false);
    expect(hibernating.every((s) => s.state === 'gone')).toBe(true);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await outcome).toMatchObject({ ok: true, handedOver: 25, left: 0 });
    // 10 per second: the 20 cuts take two seconds, none two at the same moment.
    const cuts = attached.map((s) => s.cutAtMs!).sort((a, b) => a - b);
    expect(cuts.at(-1)! - cuts[0]!).toBeGreaterThanOrEqual(1_800);
    expect(new Set(cuts).size).toBe(20);
    // The ended sessions first (a late resume learns its h from the start), then the announcement of who comes.
    expect(next.received.map((m) => m.kind)).toEqual([
      'listener',
      'listeners-sent',
      'ended',
      'coming',
      ...Array<string>(25).fill('session'),
      'done',
    ]);
    expect(next.received.find((m) => m.kind === 'coming')).toMatchObject({ smIds: [...hibernating, ...attached].map((s) => s.smId) });
    expect(next.handles, 'the listening socket and one upstream socket per session').toBe(26);
  });

  it('leaves what cannot move, and returns only once the window is over', async () => {
    const proxy = new FakeProxy();
    const noSm = new FakeSession('active', false);
    const tlsHop = new FakeSession('hibernating', true, 'tls.example.org');
    const loggingIn = new FakeSession('authenticating', false);
    proxy.sessions_.push(noSm, tlsHop, loggingIn, new FakeSession('hibernating'));
    const outcome = run(proxy, new FakeNext(), { resumesPerSecond: 10, windowMs: 5_000 });
    let settled = false;
    void outcome.then(() => (settled = true));
    await vi.advanceTimersByTimeAsync(4_500);
    expect(settled, 'the window is not over').toBe(false);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await outcome).toMatchObject({ ok: true, handedOver: 1, left: 3 });
    // What stayed ends as at SIGTERM before the new process is told it is done.
    expect([noSm.cutAtMs, noSm.shutDown, tlsHop.shutDown, loggingIn.shutDown]).toEqual([undefined, true, true, true]);
  });

  it('announces only what it will move: not a stranded session (no upstream stream to send)', async () => {
    const proxy = new FakeProxy();
    const stranded = new FakeSession('stranded');
    const hibernating = new FakeSession('hibernating');
    proxy.sessions_.push(stranded, hibernating);
    const next = new FakeNext();
    const outcome = run(proxy, next, { resumesPerSecond: 10, windowMs: 0 });
    await vi.advanceTimersByTimeAsync(15_000);
    await outcome;
    expect(next.received.find((m) => m.kind === 'coming')).toEqual({ kind: 'coming', smIds: [hibernating.smId] });
  });

  it('keeps a session a connection here is resuming until the resume is decided; then it moves', async () => {
    const proxy = new FakeProxy();
    const target = new FakeSession('hibernating');
    const resumer = new FakeSession('authenticating', false);
    resumer.resuming = target.smId;
    proxy.sessions_.push(target, resumer);
    const outcome = run(proxy, new FakeNext(), { resumesPerSecond: 10, windowMs: 0 });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(target.state, 'still here while its resume is checked').toBe('hibernating');
    // The resume succeeds: the resumer's stream closes, the target is attached, then moved and its client cut.
    resumer.state = 'gone';
    target.state = 'active';
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await outcome).toMatchObject({ ok: true, handedOver: 1, left: 0 });
    expect(target.cutAtMs).toBeDefined();
  });

  it('tries a session that cannot go yet again, and leaves it after the window and a grace', async () => {
    const proxy = new FakeProxy();
    const busy = new FakeSession('hibernating');
    busy.refusals = 3;
    const stuck = new FakeSession('hibernating');
    stuck.refusals = Infinity;
    proxy.sessions_.push(busy, stuck);
    const outcome = run(proxy, new FakeNext(), { resumesPerSecond: 10, windowMs: 1_000 });
    await vi.advanceTimersByTimeAsync(500);
    expect(busy.state).toBe('gone');
    await vi.advanceTimersByTimeAsync(12_000);
    expect(await outcome).toMatchObject({ ok: true, handedOver: 1, left: 1 });
  });
});

describe('Upgrade: a new process that fails', () => {
  it('exiting before it is ready changes nothing; its exit code is reported', async () => {
    const proxy = new FakeProxy();
    const session = new FakeSession('active');
    proxy.sessions_.push(session);
    const outcome = run(proxy, new FakeNext({ exitAt: 'start', exitCode: 2 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(await outcome).toMatchObject({
      ok: false,
      handedOver: 0,
      exit: { code: 2, signal: null },
      error: { code: 'PROXY_ERR_UPGRADE' },
    });
    expect([proxy.accepting, proxy.acceptedAgain, session.cutAtMs]).toEqual([true, 0, undefined]);
  });

  it('that cannot be started (the fork fails) changes nothing', async () => {
    const proxy = new FakeProxy();
    const outcome = run(proxy, new FakeNext({ forkFails: true }));
    await vi.advanceTimersByTimeAsync(100);
    expect(await outcome).toMatchObject({
      ok: false,
      exit: { code: null, signal: null },
      error: { message: expect.stringContaining('EMFILE') },
    });
    expect([proxy.accepting, proxy.acceptedAgain]).toEqual([true, 0]);
  });

  it('dying with a socket not yet written leaves nothing waiting: this process accepts again', async () => {
    const proxy = new FakeProxy();
    proxy.sessions_.push(new FakeSession('hibernating'), new FakeSession('hibernating'));
    const outcome = run(proxy, new FakeNext({ stallAt: 'session' }));
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await outcome).toMatchObject({ ok: false, exit: { code: 1 } });
    expect([proxy.accepting, proxy.acceptedAgain, proxy.handOffsOver]).toEqual([true, 1, 1]);
  });

  it('dying while an attached session is on its way: that client is cut too, and connects again', async () => {
    const proxy = new FakeProxy();
    const attached = new FakeSession('active');
    proxy.sessions_.push(attached);
    const outcome = run(proxy, new FakeNext({ stallAt: 'session' }));
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await outcome).toMatchObject({ ok: false });
    expect([attached.state, attached.cutAtMs]).toEqual(['gone', expect.any(Number)]);
  });

  it('silent past the ready timeout is killed', async () => {
    const proxy = new FakeProxy();
    const next = new FakeNext({ silent: true });
    const outcome = run(proxy, next);
    await vi.advanceTimersByTimeAsync(60_000 + 2_000 + 100);
    expect(await outcome).toMatchObject({
      ok: false,
      exit: { code: null, signal: 'SIGKILL' },
      error: { message: expect.stringContaining('no answer within') },
    });
  });

  it('dying after it took the listeners makes this process accept again, with the sessions it has not handed over', async () => {
    const proxy = new FakeProxy();
    const hibernating = new FakeSession('hibernating');
    const attached = Array.from({ length: 10 }, () => new FakeSession('active'));
    proxy.sessions_.push(hibernating, ...attached);
    const next = new FakeNext({ exitAt: 'session', exitCode: 1 });
    const outcome = run(proxy, next);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await outcome).toMatchObject({ ok: false, handedOver: 1, exit: { code: 1 } });
    expect([proxy.accepting, proxy.acceptedAgain, proxy.handOffsOver]).toEqual([true, 1, 1]);
    expect(attached.filter((s) => s.state !== 'gone').length, 'the rest stays here').toBeGreaterThan(0);
  });
});
