/**
 * A loopback TCP relay put between the proxy and the legacy server (the fixture's `domains` option
 * points the upstream at it), so that a test can make the legacy server's side of one upstream
 * connection vanish without a stream close: a crash or a network cut, which a running Prosody does
 * not produce on request. Bytes pass unchanged both ways.
 *
 *   const relay = await startTcpRelay(prosody.host, prosody.c2sPort);
 *   ...
 *   relay.connectionCarrying('<resource>phone</resource>').cut();
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

/** One proxy → legacy server connection through the relay. */
export interface RelayedConnection {
  /** What the proxy sent on it so far (UTF-8, first 64 KiB): to tell sessions apart by their bind. */
  readonly fromProxy: string;
  /** True once either side closed. */
  readonly closed: boolean;
  /**
   * The legacy server "goes away": both sockets are destroyed, the proxy's side with a FIN
   * ('fin') or a TCP RST ('reset'); neither side gets a stream close.
   */
  cut(how?: 'fin' | 'reset'): void;
}

export interface TcpRelay {
  readonly port: number;
  /** Every connection accepted so far, in order. */
  readonly connections: readonly RelayedConnection[];
  /** The one connection whose proxy-sent bytes contain `marker`; throws naming how many matched. */
  connectionCarrying(marker: string): RelayedConnection;
  /** Closes the listener and destroys every connection. */
  stop(): Promise<void>;
}

const MAX_TRANSCRIPT_CHARS = 64 * 1024;

export async function startTcpRelay(targetHost: string, targetPort: number): Promise<TcpRelay> {
  const connections: RelayedConnection[] = [];
  const sockets = new Set<Socket>();

  const server: Server = createServer((fromProxy) => {
    const toServer = connect({ host: targetHost, port: targetPort });
    sockets.add(fromProxy);
    sockets.add(toServer);
    let transcript = '';
    let closed = false;
    const close = (): void => {
      closed = true;
      fromProxy.destroy();
      toServer.destroy();
      sockets.delete(fromProxy);
      sockets.delete(toServer);
    };
    fromProxy.setNoDelay(true);
    toServer.setNoDelay(true);
    fromProxy.on('data', (chunk: Buffer) => {
      if (transcript.length < MAX_TRANSCRIPT_CHARS) transcript += chunk.toString('utf8');
    });
    fromProxy.pipe(toServer);
    toServer.pipe(fromProxy);
    fromProxy.on('error', close);
    toServer.on('error', close);
    fromProxy.on('close', close);
    toServer.on('close', close);
    connections.push({
      get fromProxy() {
        return transcript;
      },
      get closed() {
        return closed;
      },
      cut(how = 'fin') {
        if (how === 'reset') fromProxy.resetAndDestroy();
        close();
      },
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
  });
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error(`TCP relay: no port from ${String(address)}`);

  return {
    port: address.port,
    connections,
    connectionCarrying(marker) {
      const matching = connections.filter((c) => c.fromProxy.includes(marker));
      if (matching.length !== 1) {
        throw new Error(
          `TCP relay: expected one connection carrying ${JSON.stringify(marker)}, found ${matching.length} of ${connections.length}`,
        );
      }
      return matching[0]!;
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
