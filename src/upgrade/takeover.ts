import { Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { ErrorCode, ProxyError } from '../errors.js';
import { readSnapshot, type HibernatedSession } from '../session/hibernated-snapshot.js';
import type { ReleasedUpstream } from '../upstream/upstream-link.js';
import { HANDOFF_PROTOCOL, readToNext, type RememberedEnd, type ToNext, type ToPrevious } from './handoff-protocol.js';
import { IpcChannel, type IpcEnd } from './ipc-channel.js';

/** How long the old process may take between two messages before the listeners came. */
const LISTENERS_TIMEOUT_MS = 15_000;

/** What the new process's proxy does with what it is handed. */
export interface TakingOverProxy {
  start(inherited: ReadonlyMap<string, Server>): Promise<unknown>;
  adopt(session: HibernatedSession, released: ReleasedUpstream | undefined): void;
  /** Ended sessions the previous process remembered, for a late `<resume/>`. */
  rememberEnded(sessions: readonly RememberedEnd[]): void;
}

/**
 * The new process's side of an upgrade (README "Upgrading"), over the IPC channel its
 * predecessor started it with. `refuseUnreadable` first: a version it cannot read is refused.
 */
export class TakeOver {
  private readonly channel: IpcChannel<ToNext>;

  constructor(
    end: IpcEnd,
    private readonly log: Logger,
  ) {
    this.channel = new IpcChannel(end, readToNext);
  }

  /** The predecessor's hand-off version, from the environment; a refusal to send back when this process cannot read it. */
  static refusal(version: string): string | undefined {
    return version === String(HANDOFF_PROTOCOL)
      ? undefined
      : `the previous process hands over with protocol ${version}; this one reads protocol ${HANDOFF_PROTOCOL}`;
  }

  refuse(reason: string): Promise<void> {
    return this.channel.send({ kind: 'refused', reason } satisfies ToPrevious);
  }

  /** Says it is ready, takes the listening sockets and starts the proxy on them; rejects if it cannot (the predecessor serves on). */
  async start(proxy: TakingOverProxy): Promise<void> {
    await this.channel.send({ kind: 'ready' } satisfies ToPrevious);
    const inherited = new Map<string, Server>();
    for (;;) {
      const { message, handle } = await this.channel.next(LISTENERS_TIMEOUT_MS);
      if (message.kind === 'listeners-sent') break;
      if (message.kind !== 'listener' || !(handle instanceof Server)) {
        throw new ProxyError(ErrorCode.UPGRADE, `expected a listening socket from the previous process, got '${message.kind}'`);
      }
      inherited.set(message.key, handle);
    }
    await proxy.start(inherited);
    await this.channel.send({ kind: 'listening' } satisfies ToPrevious);
  }

  /**
   * Adopts each session the predecessor hands over, until it says it is done or goes away; then
   * `running` is called (the PID file), and the predecessor is told. Resolves with the count.
   */
  async receiveSessions(proxy: TakingOverProxy, running: () => Promise<void>): Promise<number> {
    let adopted = 0;
    for (;;) {
      let received;
      try {
        // Sessions come as fast as the predecessor's clients can be moved: no deadline but its exit.
        received = await this.channel.next();
      } catch (err) {
        this.log.warn(
          { code: ErrorCode.UPGRADE, err: (err as Error).message, adopted },
          'upgrade: the previous process went away before it was done',
        );
        break;
      }
      const { message, handle } = received;
      if (message.kind === 'done') break;
      if (message.kind === 'ended') {
        proxy.rememberEnded(message.sessions);
        continue;
      }
      if (message.kind !== 'session') {
        this.log.error({ code: ErrorCode.UPGRADE, kind: message.kind }, 'upgrade: unexpected message from the previous process');
        continue;
      }
      this.adopt(proxy, message, handle);
      adopted++;
      try {
        await this.channel.send({ kind: 'adopted' } satisfies ToPrevious);
      } catch {
        // The predecessor is gone: the next read of the channel says so.
      }
    }
    await running();
    try {
      await this.channel.send({ kind: 'running' } satisfies ToPrevious);
    } catch {
      // The predecessor is gone already: there is nobody to tell.
    }
    this.channel.close();
    return adopted;
  }

  private adopt(proxy: TakingOverProxy, message: Extract<ToNext, { kind: 'session' }>, handle: unknown): void {
    const socket = handle instanceof Socket ? handle : undefined;
    let session;
    try {
      session = readSnapshot(message.session);
    } catch (err) {
      // Both processes agreed on the version: a snapshot that does not read is a bug, and the session is lost.
      this.log.error(
        { code: ErrorCode.UPGRADE, err: (err as Error).message },
        'upgrade: a handed-over session cannot be read; it is dropped',
      );
      socket?.destroy();
      return;
    }
    socket?.pause();
    proxy.adopt(session, socket === undefined ? undefined : { socket, serverHeader: Buffer.from(message.serverHeader, 'base64') });
  }
}
