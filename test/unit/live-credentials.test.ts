import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { LiveCredentials } from '../../src/transport/live-credentials.js';
import { createTlsCredentials } from '../../src/transport/tls-credentials.js';

// What a TLS listener offers clients (README, Configuration `tls.*`; Security), on a real TLS server.

const quiet = { warn: () => undefined, info: () => undefined };
const DEFAULT_CIPHERS =
  'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305';

const servers: tls.Server[] = [];

afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise<void>((resolve) => server.close(() => resolve()));
});

async function listening(): Promise<number> {
  const credentials = new LiveCredentials(
    await createTlsCredentials(
      { certificates: [], defaultCertificate: 0, selfSigned: true, minVersion: 'TLSv1.2', ciphers: DEFAULT_CIPHERS },
      ['localhost'],
      quiet,
    ),
  );
  const server = tls.createServer(credentials.serverOptions, (socket) => socket.on('error', () => undefined));
  credentials.serve(server);
  server.on('tlsClientError', () => undefined);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function connect(port: number, options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('LiveCredentials on a TLS server', () => {
  it('refuses TLS 1.2 suites without forward secrecy or without AEAD, and accepts ECDHE with AES-GCM', async () => {
    const port = await listening();
    for (const cipher of ['AES128-SHA', 'AES256-GCM-SHA384', 'ECDHE-RSA-AES128-SHA']) {
      await expect(connect(port, { maxVersion: 'TLSv1.2', ciphers: cipher }), cipher).rejects.toThrow();
    }
    const socket = await connect(port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' });
    expect(socket.getCipher().standardName).toBe('TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256');
    socket.destroy();
  });

  it('ends a connection whose client tries to renegotiate', async () => {
    const port = await listening();
    const socket = await connect(port, { maxVersion: 'TLSv1.2' });
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.renegotiate({ rejectUnauthorized: false }, () => undefined);
    await closed;
    expect(socket.destroyed).toBe(true);
  });
});
