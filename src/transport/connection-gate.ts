import { createServer, type BlockList, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';
import { normalizeAddress } from './ip-range.js';
import { readHeader, type Endpoint } from './proxy-protocol.js';

/** A load balancer's header must arrive this soon after it connected (HAProxy sends it at once). */
const HEADER_TIMEOUT_MS = 10_000;

export interface ConnectionGateOptions {
  /** Load balancers that send a PROXY protocol header (config `proxyProtocolFrom`); undefined = none. */
  readonly proxyProtocolFrom: BlockList | undefined;
  /**
   * Gets each admitted connection, with whatever followed the header still to be read. Absent: the
   * listeners the server had for 'connection' when the gate took it over (an HTTP or TLS server's).
   */
  readonly admit?: (socket: Socket) => void;
  /** Told the code of each connection refused here, for the metrics. */
  readonly refused: (code: ErrorCode) => void;
  readonly log: Logger;
}

/**
 * The TCP front of a client listener: it takes the connections of its server, keeps every one
 * (so that a shutdown can drop them, TLS handshakes in progress included), and, when the listener
 * takes the PROXY protocol (README, Behind a load balancer), reads the header first: a load
 * balancer listed in `proxyProtocolFrom` must send one, anyone else must not. What comes after the
 * header goes on (to a TLS or HTTP server, or a client link), which learns the client the header
 * named through {@link clientOf}. The server keeps listening as it was, so its own timeouts (an
 * HTTP server's request timeouts) stay in force.
 */
export class ConnectionGate {
  /** Every accepted connection until it closes. */
  readonly sockets = new Set<Socket>();
  /** The client a header named, by the load balancer's end of the connection (`address port`). */
  private readonly clients = new Map<string, Endpoint>();
  private readonly admit: (socket: Socket) => void;

  /** Takes over the 'connection' event of `server` (a plain TCP server when none is given). */
  constructor(
    private readonly options: ConnectionGateOptions,
    readonly server: Server = createServer(),
  ) {
    const taken = server.listeners('connection') as ((socket: Socket) => void)[];
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => this.accept(socket));
    this.admit = options.admit ?? ((socket) => taken.forEach((listener) => listener.call(server, socket)));
  }

  /**
   * The client at the other end of `socket` (the accepted connection, or a TLS socket over it): the
   * one the PROXY header named, else the peer itself.
   */
  clientOf(socket: { readonly remoteAddress?: string | undefined; readonly remotePort?: number | undefined }): Endpoint {
    const named = this.clients.get(peerKey(socket));
    if (named !== undefined) return named;
    return { address: normalizeAddress(socket.remoteAddress) ?? '?', port: socket.remotePort ?? 0 };
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const balancers = this.options.proxyProtocolFrom;
    if (balancers === undefined) {
      this.admit(socket);
      return;
    }
    const peer = normalizeAddress(socket.remoteAddress) ?? '';
    const trusted = balancers.check(peer, peer.includes(':') ? 'ipv6' : 'ipv4');
    void readHeader(socket, trusted, HEADER_TIMEOUT_MS).then((outcome) => {
      if (outcome.kind === 'closed') {
        // A TCP health check of the balancer (connect, close): no refusal, and no info line each time.
        this.options.log.debug(
          { remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}` },
          'connection closed before its first bytes',
        );
        return;
      }
      if (outcome.kind === 'refused') {
        this.options.log.info(
          { code: ErrorCode.PROXY_HEADER, reason: outcome.reason, remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}` },
          'connection refused: PROXY protocol',
        );
        this.options.refused(ErrorCode.PROXY_HEADER);
        socket.destroy();
        return;
      }
      if (socket.destroyed) return;
      if (outcome.kind === 'proxied') {
        const key = peerKey(socket);
        this.clients.set(key, outcome.client);
        socket.once('close', () => this.clients.delete(key));
      }
      this.admit(socket);
    });
  }
}

function peerKey(socket: { readonly remoteAddress?: string | undefined; readonly remotePort?: number | undefined }): string {
  return `${socket.remoteAddress ?? '?'} ${socket.remotePort ?? '?'}`;
}
