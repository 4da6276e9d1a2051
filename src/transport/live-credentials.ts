import type tls from 'node:tls';
import type { CredentialEntry, SniCallback, TlsCredentials } from './tls-credentials.js';

/**
 * The client-facing TLS credentials a running proxy serves, replaceable while it runs (a renewed
 * certificate, README "Reloading"). Every lookup reads the current set, so a handshake that starts
 * after `replace` gets the new certificates; a connection already established keeps what it
 * negotiated. A TLS server registers with `serve`, so that the certificate it gives clients that
 * send no SNI follows too.
 */
export class LiveCredentials implements TlsCredentials {
  #current: TlsCredentials;
  readonly #servers = new Set<tls.Server>();

  constructor(initial: TlsCredentials) {
    this.#current = initial;
  }

  get defaultContext(): tls.SecureContext {
    return this.#current.defaultContext;
  }

  get entries(): readonly CredentialEntry[] {
    return this.#current.entries;
  }

  contextFor(serverName: string | undefined): tls.SecureContext {
    return this.#current.contextFor(serverName);
  }

  readonly sniCallback: SniCallback = (serverName, callback) => this.#current.sniCallback(serverName, callback);

  get serverOptions(): Readonly<tls.TlsOptions> {
    return { ...this.#current.serverOptions, SNICallback: this.sniCallback };
  }

  /**
   * `server` was created with {@link serverOptions}: its default certificate follows each
   * `replace`, and its clients may not renegotiate ({@link refuseRenegotiation}).
   */
  serve(server: tls.Server): void {
    this.#servers.add(server);
    server.once('close', () => this.#servers.delete(server));
    server.on('secureConnection', refuseRenegotiation);
  }

  replace(next: TlsCredentials): void {
    this.#current = next;
    const options = this.serverOptions;
    for (const server of this.#servers) server.setSecureContext(options);
  }
}

/**
 * A client of the proxy may not renegotiate TLS 1.2: each client-initiated renegotiation costs
 * the server a handshake, and nothing here needs one. An attempt ends the connection.
 */
export function refuseRenegotiation(socket: tls.TLSSocket): void {
  socket.disableRenegotiation();
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'ERR_TLS_RENEGOTIATION_DISABLED') socket.destroy();
  });
}
