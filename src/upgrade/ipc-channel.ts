import type { ChildProcess } from 'node:child_process';
import { Server, Socket } from 'node:net';
import { ErrorCode, ProxyError } from '../errors.js';

/** What both ends of the hand-off need of Node's IPC channel: messages, with a socket or server handle riding along. */
export interface IpcEnd {
  send(message: unknown, handle: Socket | Server | undefined, callback: (err: Error | null) => void): boolean;
  on(event: 'message', listener: (message: unknown, handle: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown, handle: unknown) => void): unknown;
  once(event: 'disconnect', listener: () => void): unknown;
  off(event: 'disconnect', listener: () => void): unknown;
}

/** How long one message may wait to be written (Node writes a handle only once the previous one was acknowledged). */
const SEND_TIMEOUT_MS = 15_000;

/** A message received, with the handle that came with it (a `net.Server` or `net.Socket`, or nothing). */
export interface Received<T> {
  readonly message: T;
  readonly handle: unknown;
}

/**
 * One end of the hand-off's IPC channel (`child_process.fork`'s, README "Upgrading"): messages
 * are read in order through `next`, which fails when the other end goes away or takes too long.
 * A message that does not parse fails the channel: the two processes disagree on the protocol,
 * and the hand-off stops (what is still unread is dropped, sends in flight fail).
 */
export class IpcChannel<In> {
  private readonly inbox: Received<In>[] = [];
  private failure: ProxyError | undefined;
  private wake: (() => void) | undefined;
  /** Sends not yet written: a handle waits in Node for the previous one's acknowledgement, and a gone process never gives it. */
  private readonly sending = new Set<(failure: ProxyError) => void>();
  private readonly onMessage = (message: unknown, handle: unknown): void => {
    if (this.failure !== undefined) {
      release(handle);
      return;
    }
    try {
      this.inbox.push({ message: this.read(message), handle });
    } catch (err) {
      release(handle);
      this.fail(new ProxyError(ErrorCode.UPGRADE, (err as Error).message, { cause: err }));
      return;
    }
    this.wake?.();
  };
  private readonly onGone = (): void => this.fail(new ProxyError(ErrorCode.UPGRADE, 'the other process of the hand-off went away'));

  constructor(
    private readonly end: IpcEnd,
    private readonly read: (message: unknown) => In,
  ) {
    end.on('message', this.onMessage);
    end.once('disconnect', this.onGone);
  }

  /** The new process, from the old side: its exit (which may come before the channel's `disconnect`) and a failed start. */
  watch(child: ChildProcess): void {
    child.once('exit', (code, signal) =>
      this.fail(new ProxyError(ErrorCode.UPGRADE, `the new process exited (code ${String(code)}, signal ${String(signal)})`)),
    );
    child.once('error', (err) => this.fail(new ProxyError(ErrorCode.UPGRADE, `the new process: ${err.message}`, { cause: err })));
  }

  /** The hand-off stops: whoever waits learns why; nothing is read or sent any more. */
  private fail(failure: ProxyError): void {
    if (this.failure !== undefined) return;
    this.failure = failure;
    for (const { handle } of this.inbox.splice(0)) release(handle);
    for (const reject of this.sending) reject(failure);
    this.sending.clear();
    this.wake?.();
  }

  /**
   * The next message; rejects with PROXY_ERR_UPGRADE when the other end went away or sent
   * nonsense, or, with `timeoutMs`, was silent that long.
   */
  async next(timeoutMs?: number): Promise<Received<In>> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      const first = this.inbox.shift();
      if (first !== undefined) return first;
      if (this.failure !== undefined) throw this.failure;
      const left = deadline === undefined ? undefined : deadline - Date.now();
      if (left !== undefined && left <= 0) throw new ProxyError(ErrorCode.UPGRADE, `no answer within ${String(timeoutMs)} ms`);
      await new Promise<void>((resolve) => {
        const timer = left === undefined ? undefined : setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** Throws (PROXY_ERR_UPGRADE) once the other end went away or sent nonsense: nothing more may be given to it. */
  check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Resolves once the message (and its handle) is written; rejects when the hand-off failed, now or before, or after `timeoutMs`. */
  send(message: unknown, handle?: Socket | Server, timeoutMs = SEND_TIMEOUT_MS): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const settle = (failure: ProxyError | undefined): void => {
        clearTimeout(timer);
        this.sending.delete(rejectWith);
        if (failure === undefined) resolve();
        else reject(failure);
      };
      const rejectWith = (failure: ProxyError): void => settle(failure);
      const timer = setTimeout(
        () => this.fail(new ProxyError(ErrorCode.UPGRADE, `a message was not taken within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.sending.add(rejectWith);
      try {
        this.end.send(message, handle, (err) => {
          settle(
            err === null
              ? undefined
              : new ProxyError(ErrorCode.UPGRADE, `cannot send to the other process: ${err.message}`, { cause: err }),
          );
        });
      } catch (err) {
        // A channel closed meanwhile throws at once.
        settle(new ProxyError(ErrorCode.UPGRADE, `cannot send to the other process: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  close(): void {
    this.end.off('message', this.onMessage);
    this.end.off('disconnect', this.onGone);
  }
}

/** Closes what came with a message that the hand-off will not use: a socket or a listening server. */
function release(handle: unknown): void {
  if (handle instanceof Socket) handle.destroy();
  else if (handle instanceof Server) handle.close();
}
