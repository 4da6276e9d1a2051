import type { ChildProcess } from 'node:child_process';
import type { Server, Socket } from 'node:net';
import { ErrorCode, ProxyError } from '../errors.js';

/** What both ends of the hand-off need of Node's IPC channel: messages, with a socket or server handle riding along. */
export interface IpcEnd {
  send(message: unknown, handle: Socket | Server | undefined, callback: (err: Error | null) => void): boolean;
  on(event: 'message', listener: (message: unknown, handle: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown, handle: unknown) => void): unknown;
  once(event: 'disconnect', listener: () => void): unknown;
  off(event: 'disconnect', listener: () => void): unknown;
}

/** A message received, with the handle that came with it (a `net.Server` or `net.Socket`, or nothing). */
export interface Received<T> {
  readonly message: T;
  readonly handle: unknown;
}

/**
 * One end of the hand-off's IPC channel (`child_process.fork`'s, README "Upgrading"): messages
 * are read in order through `next`, which fails when the other end goes away or takes too long.
 * A message that does not parse fails the waiting `next` too: the two processes disagree on the
 * protocol, and the hand-off stops.
 */
export class IpcChannel<In> {
  private readonly inbox: Received<In>[] = [];
  private failure: ProxyError | undefined;
  private wake: (() => void) | undefined;
  private readonly onMessage = (message: unknown, handle: unknown): void => {
    try {
      this.inbox.push({ message: this.read(message), handle });
    } catch (err) {
      this.failure ??= new ProxyError(ErrorCode.UPGRADE, (err as Error).message, { cause: err });
    }
    this.wake?.();
  };
  private readonly onGone = (): void => {
    this.failure ??= new ProxyError(ErrorCode.UPGRADE, 'the other process of the hand-off went away');
    this.wake?.();
  };

  constructor(
    private readonly end: IpcEnd,
    private readonly read: (message: unknown) => In,
  ) {
    end.on('message', this.onMessage);
    end.once('disconnect', this.onGone);
  }

  /** The other process exited (the old side may see this before the channel's `disconnect`). */
  watchExit(child: ChildProcess): void {
    child.once('exit', (code, signal) => {
      this.failure ??= new ProxyError(ErrorCode.UPGRADE, `the new process exited (code ${String(code)}, signal ${String(signal)})`);
      this.wake?.();
    });
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

  send(message: unknown, handle?: Socket | Server): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.end.send(message, handle, (err) => {
        if (err === null) resolve();
        else reject(new ProxyError(ErrorCode.UPGRADE, `cannot send to the other process: ${err.message}`, { cause: err }));
      });
    });
  }

  close(): void {
    this.end.off('message', this.onMessage);
    this.end.off('disconnect', this.onGone);
  }
}
