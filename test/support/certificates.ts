import { X509Certificate } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import selfsigned from 'selfsigned';

/** A fresh self-signed EC certificate for `name` (subjectAltName too), with its SHA-256 fingerprint. */
export async function certificate(name = 'localhost'): Promise<{ cert: string; key: string; fingerprint256: string }> {
  const pems = await selfsigned.generate([{ name: 'commonName', value: name }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2 as const, value: name }] }],
  });
  return { cert: pems.cert, key: pems.private, fingerprint256: new X509Certificate(pems.cert).fingerprint256 };
}

/** Replaces `path` as certbot and acme.sh do: a new file renamed over the old one. */
export async function renameOver(path: string, content: string): Promise<void> {
  await writeFile(`${path}.new`, content);
  await rename(`${path}.new`, path);
}

/** Opens a TLS connection to 127.0.0.1 (with SNI `servername`, or none) and returns it with the certificate it was shown. */
export function handshake(port: number, servername?: string): Promise<{ socket: TLSSocket; fingerprint256: string }> {
  return new Promise((resolveHandshake, reject) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      ...(servername === undefined ? {} : { servername }),
    });
    const timer = setTimeout(() => reject(new Error(`expected a TLS handshake with 127.0.0.1:${port} within 5 s`)), 5_000);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      resolveHandshake({ socket, fingerprint256: socket.getPeerCertificate().fingerprint256 });
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
