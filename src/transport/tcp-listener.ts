import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { ErrorCode, ProxyError } from '../errors.js';
import type { ScannerLimits } from '../xml/stream-scanner.js';
import type { ClientLink } from './client-link.js';
import type { Listener } from './listener.js';
import { SocketClientLink } from './socket-client-link.js';
import type { LiveCredentials } from './live-credentials.js';

/** TLS handshakes that take longer than this are abandoned (slowloris before TLS). */
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;

export interface TcpListenerOptions {
  readonly type: 'starttls' | 'directtls';
  readonly host: string;
  readonly port: number;
  readonly credentials: LiveCredentials;
  /** Limits before authentication for each new connection, read at accept (a reload may change them; the session raises them after SASL success). */
  readonly limits: () => ScannerLimits;
  readonly isServedDomain: (domain: string) => boolean;
  /** Told the code of each connection refused before a session saw it (TLS handshakes, refusals before STARTTLS), for the metrics. */
  readonly refused: (code: ErrorCode) => void;
  readonly log: Logger;
  /** Called with each new client link and its session logger. */
  readonly onLink: (link: ClientLink, log: Logger) => void;
  /** Returns a fresh session id. */
  readonly newSid: () => string;
}

/**
 * A TCP listener for XMPP clients: `starttls` (RFC 6120 §5, the client upgrades after the first
 * stream header) or `directtls` (XEP-0368, TLS from the first byte, ALPN `xmpp-client`).
 */
export class TcpListener implements Listener {
  private readonly server: Server;
  /** Accepted sockets: the raw TCP ones, before any TLS (a direct TLS handshake in progress is in no link yet). */
  private readonly rawSockets = new Set<Socket>();
  /** The sockets handed to client links (the TLS socket for direct TLS). */
  private readonly sockets = new Set<Socket>();

  constructor(private readonly options: TcpListenerOptions) {
    const { credentials } = options;
    if (options.type === 'directtls') {
      const server = createTlsServer({
        ...credentials.serverOptions,
        ALPNProtocols: ['xmpp-client'],
        handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
      });
      credentials.serve(server);
      this.server = server;
      server.on('secureConnection', (socket: TLSSocket) => this.accept(socket));
      server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
        options.log.info({ code: ErrorCode.TLS_HANDSHAKE, err: err.message, remote: socket.remoteAddress }, 'client TLS handshake failed');
        options.refused(ErrorCode.TLS_HANDSHAKE);
        socket.destroy();
      });
    } else {
      this.server = createNetServer((socket) => this.accept(socket));
    }
    this.server.on('connection', (socket: Socket) => {
      this.rawSockets.add(socket);
      socket.once('close', () => this.rawSockets.delete(socket));
    });
    this.server.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
  }

  /** Binds the address; rejects with PROXY_ERR_LISTEN. */
  listen(): Promise<{ host: string; port: number }> {
    const { host, port, type, log } = this.options;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(new ProxyError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (${type}): ${err.message}`, { cause: err }));
      };
      this.server.once('error', onError);
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError);
        const address = this.server.address();
        const bound = typeof address === 'object' && address !== null ? { host: address.address, port: address.port } : { host, port };
        log.info({ ...bound, type }, 'listening');
        resolve(bound);
      });
    });
  }

  /** Stops accepting; existing connections stay until the sessions close them. */
  stopAccepting(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Drops every connection still open (end of the shutdown grace period), TLS handshakes in progress included. */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
    for (const socket of this.rawSockets) socket.destroy();
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const { type, limits, log, credentials, isServedDomain, refused } = this.options;
    const sid = this.options.newSid();
    const sessionLog = log.child({ sid, transport: type, remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}` });
    const link = new SocketClientLink({
      socket,
      transport: type,
      limits: limits(),
      log: sessionLog,
      ...(type === 'starttls' ? { startTls: { credentials, isServedDomain, refused } } : {}),
    });
    this.options.onLink(link, sessionLog);
  }
}
