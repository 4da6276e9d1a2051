/**
 * The baseline the proxy is measured against: a TLS-terminating relay made of Node's own `pipe()`,
 * `tls.createServer` → `net.connect(upstream)`, `client.pipe(upstream).pipe(client)`. It serves the
 * same certificate (the proxy's `tls.selfSigned` one, RSA 2048, from the proxy's own credentials
 * code) with the same TLS options, so the two differ only in what happens between the sockets.
 *
 * Runs as a peer process: `fork('pipe-relay.js')`, then `start { upstreamPort, domain }`.
 */
import { connect, type Socket } from 'node:net';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { createTlsCredentials } from '../../src/transport/tls-credentials.js';
import { serve } from './bench-util.js';

const quietLog = { warn: () => undefined, info: () => undefined };

export async function startPipeRelay(upstreamPort: number, domain: string): Promise<{ server: Server; port: number }> {
  const credentials = await createTlsCredentials(
    { certificates: [], defaultCertificate: 0, selfSigned: true, minVersion: 'TLSv1.2', ciphers: 'ECDHE+AESGCM' },
    [domain],
    quietLog,
  );
  const server = createServer({ ...credentials.serverOptions, ALPNProtocols: ['xmpp-client'] }, (client: TLSSocket) => {
    const upstream: Socket = connect({ host: '127.0.0.1', port: upstreamPort });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, resolve));
  const address = server.address();
  return { server, port: typeof address === 'object' && address !== null ? address.port : 0 };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  serve({
    start: async (args: { upstreamPort: number; domain: string }) => (await startPipeRelay(args.upstreamPort, args.domain)).port,
  });
}
