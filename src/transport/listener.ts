import type { Server } from 'node:net';

/** What the composition root needs of every client listener, whatever its transport. */
export interface Listener {
  /**
   * Binds the address, or goes on with `inherited`: the listening socket of this address that the
   * previous process of the proxy handed over (an upgrade), so that no connection is refused
   * meanwhile. Rejects with PROXY_ERR_LISTEN.
   */
  listen(inherited?: Server): Promise<{ host: string; port: number }>;
  /** The listening socket, for handing over to the next process (an upgrade). */
  readonly server: Server;
  /** Stops accepting; resolves once every connection it accepted has closed. */
  stopAccepting(): Promise<void>;
  /** Drops every connection still open (end of the shutdown grace period). */
  destroyAll(): void;
}
