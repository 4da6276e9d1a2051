/** What the composition root needs of every client listener, whatever its transport. */
export interface Listener {
  /** Binds the address; rejects with PROXY_ERR_LISTEN. */
  listen(): Promise<{ host: string; port: number }>;
  /** Stops accepting; resolves once every connection it accepted has closed. */
  stopAccepting(): Promise<void>;
  /** Drops every connection still open (end of the shutdown grace period). */
  destroyAll(): void;
}
