import type { ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import type { Logger } from 'pino';
import { ErrorCode, ProxyError } from '../errors.js';
import { writeSnapshot, type HibernatedSession } from '../session/hibernated-snapshot.js';
import type { SessionSummary } from '../session/session-summary.js';
import type { ReleasedUpstream } from '../upstream/upstream-link.js';
import { ENTRIES_PER_MESSAGE, readToPrevious, type RememberedEnd, type ToNext, type ToPrevious } from './handoff-protocol.js';
import { IpcChannel } from './ipc-channel.js';

/** How long the new process may take to read its config and certificates and say it is ready. */
const READY_TIMEOUT_MS = 60_000;
/** How long it may take for anything else it answers: listening on the sockets, the PID file. */
const ANSWER_TIMEOUT_MS = 15_000;
/** How long a failed new process gets to exit by itself (its exit code says why) before it is killed. */
const EXIT_WAIT_MS = 2_000;
/** How often the hand-off looks at the sessions left. */
const TICK_MS = 100;
/**
 * A hibernating session that cannot go yet (an element half read from its legacy server, bytes
 * not yet written) is tried again at each tick; after the window and this much more, it stays.
 */
const STUCK_GRACE_MS = 10_000;

/** One session, as the hand-off sees it. */
export interface MovableSession {
  /** The domain the client's stream was opened to. */
  readonly domain: string | undefined;
  /** The SM-ID this connection's `<resume/>` resumes while its identity is being checked. */
  readonly resuming: string | undefined;
  /** The XEP-0198 SM-ID, once stream management is on. */
  readonly smId: string | undefined;
  summary(): SessionSummary;
  /**
   * A resumable session's state and upstream stream, taken out of this process (an attached one
   * hibernates first, and its client link comes with it, to be dropped); undefined when it cannot go now.
   */
  handOff(): HandedOff | undefined;
  /** Ends the session as at SIGTERM (`system-shutdown`; a hibernating one's queue answered). */
  shutdown(): void;
}

/** What {@link MovableSession.handOff} takes out. */
export interface HandedOff {
  readonly session: HibernatedSession;
  readonly upstream: ReleasedUpstream;
  /** The client link of a session that was attached: open, no longer the session's. */
  readonly link: { destroy(reason: string): void } | undefined;
}

/** What the hand-off needs of the running proxy. */
export interface UpgradingProxy {
  /** Every listening socket, by `listenerKey`. */
  listeningSockets(): ReadonlyMap<string, Server>;
  /** Stops accepting connections, on every listener and the admin listener; existing ones go on. */
  handListenersOver(): void;
  /** Accepts again, on sockets of its own (the new process died after taking the listeners over). */
  acceptAgain(): Promise<void>;
  sessions(): Iterable<MovableSession>;
  /** Whether the session's upstream stream can leave this process (a TLS hop cannot). */
  canMove(session: MovableSession): boolean;
  /** The ended sessions remembered for a late `<resume/>`, oldest first. */
  rememberedEnded(): readonly RememberedEnd[];
  /** The hand-off failed: sessions handed to the new process are unknown here from now on. */
  handOffOver(): void;
}

export interface UpgradeSettings {
  /** Attached clients are disconnected, to resume at the new process, at most this many per second. */
  readonly resumesPerSecond: number;
  /** Sessions that cannot move (no stream management) are ended no sooner than this after the start. */
  readonly windowMs: number;
}

export type UpgradeOutcome =
  | { readonly ok: true; readonly handedOver: number; readonly left: number; readonly durationMs: number }
  | {
      readonly ok: false;
      readonly error: ProxyError;
      readonly handedOver: number;
      /** How the new process ended (killed by this one if it was still running). */
      readonly exit: { readonly code: number | null; readonly signal: NodeJS.Signals | null };
    };

/**
 * The running process's side of an upgrade (README "Upgrading"): starts the new process, hands it
 * the listening sockets once it is ready, then every session that can move, each with its upstream
 * socket, and returns when the new process runs on alone. Attached clients of resumable sessions
 * lose their connection at `resumesPerSecond` and resume at the new process. What cannot move is
 * left for the caller to end, as at shutdown.
 *
 * A new process that fails before it took the listeners changes nothing; one that dies after
 * leaves this process accepting again, with the sessions it has not taken yet.
 */
export class Upgrade {
  private handedOver = 0;
  /** When the ended sessions were last sent (`sendEndedSince`). */
  private endedSentMs = 0;

  constructor(
    private readonly proxy: UpgradingProxy,
    private readonly settings: UpgradeSettings,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  async run(child: ChildProcess): Promise<UpgradeOutcome> {
    const startedMs = this.now();
    const channel = new IpcChannel<ToPrevious>(child, readToPrevious);
    channel.watch(child);
    let listening = false;
    try {
      await answer(channel, 'ready', READY_TIMEOUT_MS);
      const sockets = this.proxy.listeningSockets();
      for (const [key, server] of sockets) await channel.send({ kind: 'listener', key } satisfies ToNext, server);
      await channel.send({ kind: 'listeners-sent', count: sockets.size } satisfies ToNext);
      await answer(channel, 'listening', ANSWER_TIMEOUT_MS);
      listening = true;
      this.proxy.handListenersOver();
      this.log.info({ pid: child.pid }, 'upgrade: the new process accepts connections; handing sessions over');
      // First, so that a late <resume/> at the new process gets its <failed h/> from the start; at
      // the end, the sessions that ended meanwhile.
      this.endedSentMs = this.now();
      await this.sendEnded(channel, () => true);
      const coming = [...this.proxy.sessions()].filter((session) => movable(session, this.proxy)).map((session) => session.smId!);
      for (let i = 0; i < coming.length; i += ENTRIES_PER_MESSAGE) {
        await channel.send({ kind: 'coming', smIds: coming.slice(i, i + ENTRIES_PER_MESSAGE) } satisfies ToNext);
      }
      const left = await this.moveSessions(channel, startedMs);
      // What stays ends now, as at SIGTERM, so that the new process learns how (a late <resume/> of it gets its h there).
      for (const session of [...this.proxy.sessions()]) session.shutdown();
      await this.sendEndedSince(channel);
      await channel.send({ kind: 'done', handedOver: this.handedOver } satisfies ToNext);
      await answer(channel, 'running', ANSWER_TIMEOUT_MS);
      channel.close();
      if (child.connected) child.disconnect();
      return { ok: true, handedOver: this.handedOver, left, durationMs: this.now() - startedMs };
    } catch (err) {
      channel.close();
      const error = err instanceof ProxyError ? err : new ProxyError(ErrorCode.UPGRADE, (err as Error).message, { cause: err });
      // A process that never started (no pid: the fork failed) has nothing to wait for.
      const gone = child.pid === undefined || child.exitCode !== null || child.signalCode !== null;
      const exited = new Promise<void>((resolve) => (gone ? resolve() : child.once('exit', () => resolve())));
      // A process that failed on its own exits at once; one that is stuck (or silent) is made to.
      const exitedAlone = await Promise.race([exited.then(() => true), delay(EXIT_WAIT_MS).then(() => false)]);
      if (!exitedAlone) {
        child.kill('SIGKILL');
        await exited;
      }
      if (listening) {
        this.proxy.handOffOver();
        await this.proxy.acceptAgain();
      }
      return { ok: false, error, handedOver: this.handedOver, exit: { code: child.exitCode, signal: child.signalCode } };
    }
  }

  /**
   * Hands over every hibernating session at once, and attached resumable ones at the configured
   * rate (their clients lose the connection once the new process holds the session, and resume
   * there). Returns, with the number of sessions left, once nothing movable is left and the window
   * is over (or no session is left at all).
   */
  private async moveSessions(channel: IpcChannel<ToPrevious>, startedMs: number): Promise<number> {
    const { resumesPerSecond, windowMs } = this.settings;
    // A token bucket refilled by the time that passed, holding at most one tick's worth: a slow
    // round (many sessions, a busy new process) never turns into a burst above the rate.
    let allowance = 0;
    let refilledAtMs = this.now();
    let deadlineMs: number | undefined;
    for (;;) {
      const nowMs = this.now();
      allowance = Math.min(
        allowance + (resumesPerSecond * (nowMs - refilledAtMs)) / 1000,
        Math.max(1, (resumesPerSecond * TICK_MS) / 1000),
      );
      refilledAtMs = nowMs;
      let movable = 0;
      let stuck = 0;
      let left = 0;
      const sessions = [...this.proxy.sessions()];
      // A session a connection here is resuming stays until that resume is decided: it then moves attached.
      const beingResumed = new Set(sessions.map((session) => session.resuming).filter((smId) => smId !== undefined));
      for (const session of sessions) {
        left++;
        if (!this.proxy.canMove(session)) continue;
        const { state, resumable } = session.summary();
        const attached = state === 'active' && resumable;
        if (session.smId !== undefined && beingResumed.has(session.smId)) {
          movable++;
          continue;
        }
        if (state !== 'hibernating' && !attached) continue;
        if (attached && allowance < 1) {
          movable++;
          continue;
        }
        // A session taken out for a process that is gone would be lost: checked before each one.
        channel.check();
        let handed;
        try {
          handed = session.handOff();
        } catch (err) {
          // A bug in one session (logged there) stops neither the hand-off nor the others.
          this.log.error({ code: ErrorCode.UPGRADE, err: (err as Error).message }, 'upgrade: a session could not be handed over');
          continue;
        }
        if (handed === undefined) {
          stuck++;
          continue;
        }
        if (attached) allowance--;
        left--;
        try {
          await this.send(channel, handed);
        } finally {
          // The new process holds the session (the client's <resume/> will find it there), or the
          // hand-off failed and the session is gone: either way its client connects again.
          handed.link?.destroy('the proxy is upgrading');
        }
      }
      await this.sendEndedSince(channel);
      const windowOver = nowMs - startedMs >= windowMs;
      if (movable === 0 && stuck === 0 && (windowOver || left === 0)) return left;
      // Only sessions that cannot go yet are left: they get a bounded while longer.
      if (movable === 0 && windowOver) {
        deadlineMs ??= nowMs + STUCK_GRACE_MS;
        if (nowMs >= deadlineMs) return left;
      }
      await delay(TICK_MS);
    }
  }

  /** What ended since the last `ended` message: an announced session that ends here is no longer awaited there. */
  private async sendEndedSince(channel: IpcChannel<ToPrevious>): Promise<void> {
    const since = this.endedSentMs;
    this.endedSentMs = this.now();
    await this.sendEnded(channel, (ended) => ended.endedAtMs >= since);
  }

  private async sendEnded(channel: IpcChannel<ToPrevious>, which: (ended: RememberedEnd) => boolean): Promise<void> {
    const ended = this.proxy.rememberedEnded().filter(which);
    for (let i = 0; i < ended.length; i += ENTRIES_PER_MESSAGE) {
      await channel.send({ kind: 'ended', sessions: ended.slice(i, i + ENTRIES_PER_MESSAGE) } satisfies ToNext);
    }
  }

  /** Sends one session and waits until the new process holds it. */
  private async send(channel: IpcChannel<ToPrevious>, handed: HandedOff): Promise<void> {
    const { socket, serverHeader } = handed.upstream;
    // Node's child_process keeps a sent socket's handle open, its reads discarded, until the
    // receiver acknowledges it; and a paused net.Socket stops reading from the kernel only when it
    // was made with `onread`. So the kernel reads stop here: what the legacy server sends from now
    // on waits in the socket for the new process.
    stopReading(socket);
    const message: ToNext = { kind: 'session', session: writeSnapshot(handed.session), serverHeader: serverHeader.toString('base64') };
    try {
      await channel.send(message, socket);
    } catch (err) {
      // Not taken (the channel failed first): the session is lost, and its stream must not keep the user online at the legacy server.
      socket.destroy();
      throw err;
    }
    this.handedOver++;
    await answer(channel, 'adopted', ANSWER_TIMEOUT_MS);
  }
}

/** A session the hand-off moves: resumable, on a hop that can leave this process, hibernating or attached. */
function movable(session: MovableSession, proxy: UpgradingProxy): boolean {
  const { state, resumable } = session.summary();
  return session.smId !== undefined && resumable && proxy.canMove(session) && (state === 'hibernating' || state === 'active');
}

/**
 * Stops the kernel reads of a paused socket (see `Upgrade.send`), as `Socket.pause()` does for an
 * `onread` socket. A socket without its handle was destroyed meanwhile: it travels as nothing, and
 * the new process finds the session's upstream gone. A handle without `readStop` (another Node)
 * would lose bytes silently: that stops the hand-off instead.
 */
function stopReading(socket: ReleasedUpstream['socket']): void {
  const handle = (socket as unknown as { _handle?: { readStop?: () => number; reading?: boolean } | null })._handle;
  if (handle === null || handle === undefined) return;
  if (typeof handle.readStop !== 'function') throw new ProxyError(ErrorCode.UPGRADE, 'this Node cannot stop a socket reading: no hand-off');
  handle.reading = false;
  handle.readStop();
}

async function answer(channel: IpcChannel<ToPrevious>, kind: ToPrevious['kind'], timeoutMs: number): Promise<void> {
  const { message } = await channel.next(timeoutMs);
  if (message.kind === kind) return;
  if (message.kind === 'refused') throw new ProxyError(ErrorCode.UPGRADE, `the new process refused the hand-off: ${message.reason}`);
  throw new ProxyError(ErrorCode.UPGRADE, `expected '${kind}' from the new process, got '${message.kind}'`);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
