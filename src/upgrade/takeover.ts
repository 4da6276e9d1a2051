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
  /** Everything slow before the sockets come (the certificates): the predecessor's sockets then wait only for `start`. */
  prepare(): Promise<void>;
  start(inherited: ReadonlyMap<string, Server>): Promise<unknown>;
  /** The listening sockets serving now, by `listenerKey`. */
  listeningSockets(): ReadonlyMap<string, Server>;
  adopt(session: HibernatedSession, released: ReleasedUpstream | undefined): void;
  /** Ended sessions the previous process remembered, for a late `<resume/>`. */
  rememberEnded(sessions: readonly RememberedEnd[]): void;
  /** Sessions that will come: a `<resume/>` of one is told to connect again until it is here. */
  expectArrivals(smIds: readonly string[]): void;
  /** The hand-off is over: what was announced and did not come is unknown. */
  handOffOver(): void;
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

  /**
   * Loads what is slow first, says it is ready, takes the listening sockets and starts the proxy on
   * them; rejects if it cannot (the predecessor serves on). A listening socket accepts from the
   * moment Node hands it over, before the proxy's own server takes it: connections accepted
   * meanwhile are parked and handed to that server, none is dropped.
   */
  async start(proxy: TakingOverProxy): Promise<void> {
    await proxy.prepare();
    await this.channel.send({ kind: 'ready' } satisfies ToPrevious);
    const inherited = new Map<string, Server>();
    const parked = new Map<string, Socket[]>();
    try {
      for (;;) {
        const { message, handle } = await this.channel.next(LISTENERS_TIMEOUT_MS);
        if (message.kind === 'listeners-sent') {
          if (message.count !== inherited.size) {
            throw new ProxyError(ErrorCode.UPGRADE, `${inherited.size} listening sockets arrived of the ${message.count} sent`);
          }
          break;
        }
        if (message.kind !== 'listener' || !(handle instanceof Server)) {
          throw new ProxyError(ErrorCode.UPGRADE, `expected a listening socket from the previous process, got '${message.kind}'`);
        }
        // Installed before the event loop polls again (this runs in the message's own turn).
        const sockets: Socket[] = [];
        handle.on('connection', (socket: Socket) => {
          // A client that resets meanwhile must not end the process with an unhandled 'error'.
          socket.on('error', () => socket.destroy());
          sockets.push(socket);
        });
        inherited.set(message.key, handle);
        parked.set(message.key, sockets);
      }
      await proxy.start(inherited);
    } finally {
      const serving = proxy.listeningSockets();
      for (const [key, server] of inherited) {
        server.removeAllListeners('connection');
        const to = serving.get(key);
        for (const socket of parked.get(key) ?? []) {
          if (to === undefined) socket.destroy();
          else if (!socket.destroyed) to.emit('connection', socket);
        }
      }
    }
    await this.channel.send({ kind: 'listening' } satisfies ToPrevious);
  }

  /**
   * Adopts each session the predecessor hands over (and remembers the ended ones it names), until
   * it says it is done or goes away; then tells it this process runs on alone. Resolves with the
   * number adopted; never rejects: a session that cannot be adopted is logged and dropped.
   */
  async receiveSessions(proxy: TakingOverProxy): Promise<number> {
    let adopted = 0;
    /** Sessions that arrived, adopted or not: the predecessor's count must match. */
    let arrived = 0;
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
        proxy.handOffOver();
        return adopted;
      }
      const { message, handle } = received;
      if (message.kind === 'done') {
        if (message.handedOver !== arrived) {
          this.log.error(
            { code: ErrorCode.UPGRADE, sent: message.handedOver, received: arrived },
            'upgrade: sessions were lost on the way',
          );
        }
        break;
      }
      if (message.kind === 'ended') {
        proxy.rememberEnded(message.sessions);
        continue;
      }
      if (message.kind === 'coming') {
        proxy.expectArrivals(message.smIds);
        continue;
      }
      if (message.kind !== 'session') {
        this.log.error({ code: ErrorCode.UPGRADE, kind: message.kind }, 'upgrade: unexpected message from the previous process');
        continue;
      }
      arrived++;
      if (this.adopt(proxy, message, handle)) adopted++;
      // Answered also for a session that could not be adopted: the predecessor waits for it to drop the client.
      await this.channel.send({ kind: 'adopted' } satisfies ToPrevious).catch(() => undefined);
    }
    proxy.handOffOver();
    await this.channel.send({ kind: 'running' } satisfies ToPrevious).catch(() => undefined);
    this.channel.close();
    return adopted;
  }

  private adopt(proxy: TakingOverProxy, message: Extract<ToNext, { kind: 'session' }>, handle: unknown): boolean {
    const socket = handle instanceof Socket ? handle : undefined;
    try {
      const session = readSnapshot(message.session);
      socket?.pause();
      proxy.adopt(session, socket === undefined ? undefined : { socket, serverHeader: Buffer.from(message.serverHeader, 'base64') });
      return true;
    } catch (err) {
      // Both processes agreed on the version: a session that does not read or adopt is a bug; it is lost.
      this.log.error(
        { code: ErrorCode.UPGRADE, err: (err as Error).message },
        'upgrade: a handed-over session cannot be adopted; it is dropped',
      );
      socket?.destroy();
      return false;
    }
  }
}
