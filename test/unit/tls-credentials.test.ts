import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { pino } from 'pino';
import selfsigned from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateConfig, TlsConfig } from '../../src/config/config.js';
import { ConfigError, ErrorCode } from '../../src/errors.js';
import { createTlsCredentials, subjectAltDnsNames, type TlsCredentials } from '../../src/transport/tls-credentials.js';

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

/** A pino logger that keeps its lines for the test to read. */
function capturingLog(): { log: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'trace' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  return { log, lines };
}

const WARN = 40;

function tlsConfig(certificates: CertificateConfig[], patch: Partial<TlsConfig> = {}): TlsConfig {
  return {
    certificates,
    defaultCertificate: 0,
    selfSigned: false,
    minVersion: 'TLSv1.2',
    ciphers: 'ECDHE+AESGCM:ECDHE+CHACHA20',
    ...patch,
  };
}

/** Writes a fresh certificate for `dnsNames` (EC keys: quick to make) and returns the file paths. */
async function makeCertificate(
  dir: string,
  name: string,
  dnsNames: string[],
  options: { passphrase?: string } = {},
): Promise<{ cert: string; key: string; fingerprint256: string }> {
  const pems = await selfsigned.generate([{ name: 'commonName', value: dnsNames[0] ?? name }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: dnsNames.map((value) => ({ type: 2 as const, value })) }],
    ...(options.passphrase === undefined ? {} : { passphrase: options.passphrase }),
  });
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, pems.cert);
  await writeFile(key, pems.private);
  return { cert, key, fingerprint256: new X509Certificate(pems.cert).fingerprint256 };
}

/** Runs a TLS handshake against `options` and returns the certificate the server showed. */
async function servedCertificate(
  options: tls.TlsOptions,
  client: { servername?: string; maxVersion?: tls.SecureVersion } = {},
): Promise<tls.DetailedPeerCertificate> {
  const server = tls.createServer(options, (socket) => socket.end());
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('expected a TLS handshake within 5 s; none completed')), 5000);
      const socket = tls.connect(
        {
          host: '127.0.0.1',
          port,
          rejectUnauthorized: false,
          ...(client.servername === undefined ? {} : { servername: client.servername }),
          ...(client.maxVersion === undefined ? {} : { maxVersion: client.maxVersion }),
        },
        () => {
          clearTimeout(timer);
          const certificate = socket.getPeerCertificate(true);
          socket.destroy();
          resolve(certificate);
        },
      );
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

async function credentialsError(promise: Promise<unknown>): Promise<ConfigError> {
  const err = await promise.then(
    () => new Error('expected createTlsCredentials to fail'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as ConfigError).code).toBe(ErrorCode.TLS_CREDENTIALS);
  return err as ConfigError;
}

describe('createTlsCredentials', () => {
  let dir: string;
  let exact: Awaited<ReturnType<typeof makeCertificate>>;
  let wildcard: Awaited<ReturnType<typeof makeCertificate>>;
  let fallback: Awaited<ReturnType<typeof makeCertificate>>;
  let encrypted: Awaited<ReturnType<typeof makeCertificate>>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'smacks-tls-'));
    exact = await makeCertificate(dir, 'exact', ['example.org', 'conference.example.org']);
    wildcard = await makeCertificate(dir, 'wildcard', ['*.example.org']);
    fallback = await makeCertificate(dir, 'fallback', ['fallback.test']);
    encrypted = await makeCertificate(dir, 'encrypted', ['secret.test'], { passphrase: 'open sesame' });
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('server name selection', () => {
    let credentials: TlsCredentials;

    beforeAll(async () => {
      credentials = await createTlsCredentials(
        tlsConfig(
          [
            { cert: wildcard.cert, key: wildcard.key },
            { cert: exact.cert, key: exact.key },
            { cert: fallback.cert, key: fallback.key, domains: ['fallback.test'] },
          ],
          { defaultCertificate: 2 },
        ),
        ['example.org'],
        capturingLog().log,
      );
    });

    it('derives domains from subjectAltName when the entry lists none', () => {
      expect(credentials.entries.map((entry) => entry.domains)).toEqual([
        ['*.example.org'],
        ['example.org', 'conference.example.org'],
        ['fallback.test'],
      ]);
      expect(credentials.entries.map((entry) => entry.fingerprint256)).toEqual([
        wildcard.fingerprint256,
        exact.fingerprint256,
        fallback.fingerprint256,
      ]);
    });

    it.each([
      ['exact name', 'example.org', 1],
      ['exact name beats an earlier wildcard', 'conference.example.org', 1],
      ['exact name, any case, trailing dot', 'Example.ORG.', 1],
      ['wildcard covers one label', 'chat.example.org', 0],
      ['wildcard does not cover two labels', 'a.chat.example.org', 2],
      ['wildcard does not cover the bare domain of another', 'example.net', 2],
      ['unknown name gets the default', 'unknown.test', 2],
      ['no name gets the default', undefined, 2],
      ['empty name gets the default', '', 2],
    ] as const)('%s: %s', (_label, serverName, index) => {
      expect(credentials.contextFor(serverName)).toBe(credentials.entries[index]?.context);
    });

    it('uses defaultCertificate as the default context', () => {
      expect(credentials.defaultContext).toBe(credentials.entries[2]?.context);
    });

    it('answers SNI callbacks with the same choice', async () => {
      const chosen = await new Promise<tls.SecureContext | undefined>((resolve, reject) =>
        credentials.sniCallback('muc.example.org', (err, context) => (err ? reject(err) : resolve(context))),
      );
      expect(chosen).toBe(credentials.entries[0]?.context);
    });

    it.each([
      ['chat.example.org', 'wildcard'],
      ['example.org', 'exact'],
      [undefined, 'fallback'],
    ] as const)('serves the chosen certificate in a real handshake (SNI %s)', async (servername, which) => {
      const expected = { wildcard, exact, fallback }[which].fingerprint256;
      const certificate = await servedCertificate(credentials.serverOptions, servername === undefined ? {} : { servername });
      expect(certificate.fingerprint256).toBe(expected);
    });
  });

  it('lets explicit domains override the subjectAltName', async () => {
    const credentials = await createTlsCredentials(
      tlsConfig([{ cert: exact.cert, key: exact.key, domains: ['xmpp.example.com', '*.example.com'] }]),
      [],
      capturingLog().log,
    );
    expect(credentials.entries[0]?.domains).toEqual(['xmpp.example.com', '*.example.com']);
  });

  it('loads a key protected by a passphrase', async () => {
    const credentials = await createTlsCredentials(
      tlsConfig([{ cert: encrypted.cert, key: encrypted.key, passphrase: 'open sesame' }]),
      ['secret.test'],
      capturingLog().log,
    );
    const certificate = await servedCertificate(credentials.serverOptions, { servername: 'secret.test' });
    expect(certificate.fingerprint256).toBe(encrypted.fingerprint256);
  });

  it('applies minVersion', async () => {
    const credentials = await createTlsCredentials(
      tlsConfig([{ cert: exact.cert, key: exact.key }], { minVersion: 'TLSv1.3' }),
      ['example.org'],
      capturingLog().log,
    );
    await expect(servedCertificate(credentials.serverOptions, { maxVersion: 'TLSv1.2' })).rejects.toThrow();
    const certificate = await servedCertificate(credentials.serverOptions, { maxVersion: 'TLSv1.3' });
    expect(certificate.fingerprint256).toBe(exact.fingerprint256);
  });

  it('warns about a domain no certificate covers when selfSigned is off', async () => {
    const { log, lines } = capturingLog();
    const credentials = await createTlsCredentials(tlsConfig([{ cert: exact.cert, key: exact.key }]), ['example.org', 'other.test'], log);
    expect(credentials.entries).toHaveLength(1);
    const warnings = lines.filter((line) => line.level === WARN);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.domains).toEqual(['other.test']);
  });

  describe('errors', () => {
    it('names a missing certificate file', async () => {
      const missing = join(dir, 'absent.crt');
      const err = await credentialsError(createTlsCredentials(tlsConfig([{ cert: missing, key: exact.key }]), [], capturingLog().log));
      expect(err.message).toContain(missing);
      expect(err.message).toContain('ENOENT');
      expect(err.problems).toEqual([expect.stringMatching(/^\/tls\/certificates\/0\/cert: cannot read .*absent\.crt: ENOENT/)]);
    });

    it('names a missing key file', async () => {
      const missing = join(dir, 'absent.key');
      const err = await credentialsError(
        createTlsCredentials(
          tlsConfig([
            { cert: exact.cert, key: exact.key },
            { cert: wildcard.cert, key: missing },
          ]),
          [],
          capturingLog().log,
        ),
      );
      expect(err.message).toContain(missing);
      expect(err.problems[0]).toMatch(/^\/tls\/certificates\/1\/key: /);
    });

    it('names a file that holds no certificate', async () => {
      const garbage = join(dir, 'garbage.crt');
      await writeFile(garbage, 'not a certificate\n');
      const err = await credentialsError(createTlsCredentials(tlsConfig([{ cert: garbage, key: exact.key }]), [], capturingLog().log));
      expect(err.message).toContain(garbage);
    });

    it('names both files when the key does not match the certificate', async () => {
      const err = await credentialsError(
        createTlsCredentials(tlsConfig([{ cert: exact.cert, key: wildcard.key }]), [], capturingLog().log),
      );
      expect(err.message).toContain(exact.cert);
      expect(err.message).toContain(wildcard.key);
    });

    it('refuses a wrong passphrase without printing it', async () => {
      const err = await credentialsError(
        createTlsCredentials(tlsConfig([{ cert: encrypted.cert, key: encrypted.key, passphrase: 'wrong guess' }]), [], capturingLog().log),
      );
      expect(err.message).toContain(encrypted.key);
      expect(err.message).not.toContain('wrong guess');
    });

    it('refuses to run without any certificate when selfSigned is off', async () => {
      const err = await credentialsError(createTlsCredentials(tlsConfig([]), ['localhost'], capturingLog().log));
      expect(err.message).toContain('tls.selfSigned');
    });
  });

  describe('self-signed certificate', () => {
    it('is generated when there are no certificates, for every domain, localhost and 127.0.0.1', async () => {
      const { log, lines } = capturingLog();
      const before = Date.now();
      const credentials = await createTlsCredentials(tlsConfig([], { selfSigned: true }), ['example.net', 'localhost'], log);
      expect(credentials.entries).toHaveLength(1);
      const entry = credentials.entries[0];
      expect(entry?.source).toBe('selfSigned');
      expect(entry?.domains).toEqual(['example.net', 'localhost']);
      expect(credentials.defaultContext).toBe(entry?.context);
      expect(credentials.contextFor('example.net')).toBe(entry?.context);

      const certificate = await servedCertificate(credentials.serverOptions, { servername: 'example.net' });
      expect(certificate.fingerprint256).toBe(entry?.fingerprint256);
      expect(certificate.subjectaltname).toBe('DNS:example.net, DNS:localhost, IP Address:127.0.0.1');
      expect(certificate.bits).toBe(2048);
      expect(certificate.modulus).toBeDefined();
      const validFrom = new Date(certificate.valid_from).getTime();
      const validTo = new Date(certificate.valid_to).getTime();
      expect(validTo - validFrom).toBe(30 * 24 * 3600 * 1000);
      expect(validFrom).toBeLessThanOrEqual(before);
      expect(validTo).toBeGreaterThan(before + 29 * 24 * 3600 * 1000);

      const warnings = lines.filter((line) => line.level === WARN);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]?.msg).toMatch(/self-signed.*clients will reject it unless told to trust it/);
    }, 30_000);

    it('is not generated when the certificates cover every domain', async () => {
      const { log, lines } = capturingLog();
      const credentials = await createTlsCredentials(
        tlsConfig([{ cert: wildcard.cert, key: wildcard.key }], { selfSigned: true }),
        ['chat.example.org'],
        log,
      );
      expect(credentials.entries.map((entry) => entry.source)).toEqual(['tls.certificates[0]']);
      expect(lines.filter((line) => line.level === WARN)).toEqual([]);
    });

    it('serves only the domains no certificate covers; the configured default stays', async () => {
      const credentials = await createTlsCredentials(
        tlsConfig([{ cert: exact.cert, key: exact.key }], { selfSigned: true }),
        ['example.org', 'localhost'],
        capturingLog().log,
      );
      expect(credentials.entries.map((entry) => entry.source)).toEqual(['tls.certificates[0]', 'selfSigned']);
      expect(credentials.contextFor('example.org')).toBe(credentials.entries[0]?.context);
      expect(credentials.contextFor('localhost')).toBe(credentials.entries[1]?.context);
      expect(credentials.defaultContext).toBe(credentials.entries[0]?.context);
    }, 30_000);
  });
});

describe('subjectAltDnsNames', () => {
  it('lists DNS names lowercased and skips other kinds', async () => {
    const pems = await selfsigned.generate([{ name: 'commonName', value: 'x' }], {
      keyType: 'ec',
      extensions: [
        {
          name: 'subjectAltName',
          altNames: [
            { type: 2, value: 'Example.ORG' },
            { type: 7, ip: '192.0.2.1' },
            { type: 1, value: 'admin@example.org' },
            { type: 2, value: '*.example.org' },
          ],
        },
      ],
    });
    expect(subjectAltDnsNames(new X509Certificate(pems.cert))).toEqual(['example.org', '*.example.org']);
  });
});
