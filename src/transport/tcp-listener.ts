import type { Server, Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { ErrorCode, ProxyError } from '../errors.js';
import type { ScannerLimits } from '../xml/stream-scanner.js';
import type { ClientLink } from './client-link.js';
import { ConnectionGate } from './connection-gate.js';
import { addressList } from './ip-range.js';
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
  /** Load balancers that send a PROXY protocol header (config `proxyProtocolFrom`); empty = none. */
  readonly proxyProtocolFrom: readonly string[];
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
 * stream header) or `directtls` (XEP-0368, TLS from the first byte, ALPN `xmpp-client`). Its
 * {@link ConnectionGate} accepts the connections (and reads a load balancer's PROXY protocol
 * header); a direct TLS connection then goes through a TLS server that does not listen itself.
 */
export class TcpListener implements Listener {
  private readonly gate: ConnectionGate;
  /** The sockets handed to client links (the TLS socket for direct TLS). */
  private readonly sockets = new Set<Socket>();
  /** Set once it stopped accepting (an upgrade, then the shutdown, may both ask). */
  private closing: Promise<void> | undefined;

  constructor(private readonly options: TcpListenerOptions) {
    const { credentials } = options;
    let admit = (socket: Socket): void => this.accept(socket);
    if (options.type === 'directtls') {
      const tlsServer = createTlsServer({
        ...credentials.serverOptions,
        ALPNProtocols: ['xmpp-client'],
        handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
      });
      credentials.serve(tlsServer);
      tlsServer.on('secureConnection', (socket: TLSSocket) => this.accept(socket));
      tlsServer.on('tlsClientError', (err: Error, socket: TLSSocket) => {
        options.log.info({ code: ErrorCode.TLS_HANDSHAKE, err: err.message, remote: socket.remoteAddress }, 'client TLS handshake failed');
        options.refused(ErrorCode.TLS_HANDSHAKE);
        socket.destroy();
      });
      admit = (socket) => tlsServer.emit('connection', socket);
    }
    this.gate = new ConnectionGate({
      proxyProtocolFrom: options.proxyProtocolFrom.length === 0 ? undefined : addressList(options.proxyProtocolFrom, 'proxyProtocolFrom'),
      admit,
      refused: options.refused,
      log: options.log,
    });
    this.gate.server.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
  }

  listen(inherited?: Server): Promise<{ host: string; port: number }> {
    const { host, port, type, log } = this.options;
    const server = this.gate.server;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(new ProxyError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (${type}): ${err.message}`, { cause: err }));
      };
      server.once('error', onError);
      server.listen(inherited ?? { host, port }, () => {
        server.off('error', onError);
        const address = server.address();
        const bound = typeof address === 'object' && address !== null ? { host: address.address, port: address.port } : { host, port };
        log.info({ ...bound, type, proxyProtocol: this.options.proxyProtocolFrom.length > 0 }, 'listening');
        resolve(bound);
      });
    });
  }

  get server(): Server {
    return this.gate.server;
  }

  /** Stops accepting; existing connections stay until the sessions close them. */
  stopAccepting(): Promise<void> {
    this.closing ??= new Promise((resolve) => this.gate.server.close(() => resolve()));
    return this.closing;
  }

  /** Drops every connection still open (end of the shutdown grace period), TLS handshakes in progress included. */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
    for (const socket of this.gate.sockets) socket.destroy();
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const { type, limits, log, credentials, isServedDomain, refused } = this.options;
    const sid = this.options.newSid();
    const client = this.gate.clientOf(socket);
    const sessionLog = log.child({ sid, transport: type, remote: `${client.address}:${client.port}` });
    const link = new SocketClientLink({
      socket,
      client,
      transport: type,
      limits: limits(),
      log: sessionLog,
      ...(type === 'starttls' ? { startTls: { credentials, isServedDomain, refused } } : {}),
    });
    this.options.onLink(link, sessionLog);
  }
}
