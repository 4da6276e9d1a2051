/**
 * TLS credentials towards clients: loads the configured PEM files into `tls.SecureContext`s and
 * picks one per server name (SNI, or the domain a STARTTLS client named in its stream header).
 *
 * Selection, in order: an exact domain match; a wildcard `*.example.org` covering exactly one
 * label (`a.example.org`, never `example.org` or `a.b.example.org`, as RFC 6125 §6.4.3 allows
 * clients to check); the `defaultCertificate` entry. With `tls.selfSigned`, domains no
 * certificate covers get an in-memory self-signed certificate.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { CertificateConfig, TlsConfig } from '../config/config.js';
import { ConfigError, ErrorCode } from '../errors.js';

/** Validity of a generated self-signed certificate. */
const SELF_SIGNED_VALIDITY_MS = 30 * 24 * 60 * 60 * 1000;
/** A certificate that expires sooner than this is logged at warn (at start-up, each reload, and daily). */
const EXPIRY_WARNING_MS = 14 * 24 * 60 * 60 * 1000;

/** One certificate the proxy can serve. */
export interface CredentialEntry {
  /** Where it came from: `tls.certificates[i]`, or `selfSigned`. */
  readonly source: string;
  /** Path of the certificate file; `undefined` for the generated one. */
  readonly certFile: string | undefined;
  /** Lowercase names it serves (exact names and `*.` wildcards), configured or from its subjectAltName. */
  readonly domains: readonly string[];
  /** SHA-256 fingerprint of the leaf certificate, `AA:BB:…`. */
  readonly fingerprint256: string;
  /** End of validity. */
  readonly validTo: Date;
  readonly context: tls.SecureContext;
}

/** The SNI callback shape `tls.createServer` and `new tls.TLSSocket` take. */
export type SniCallback = (serverName: string, callback: (err: Error | null, context?: tls.SecureContext) => void) => void;

/** Loaded client-facing TLS credentials. Immutable once created. */
export interface TlsCredentials {
  /** Served when the server name is absent or no certificate covers it. */
  readonly defaultContext: tls.SecureContext;
  /** Every loaded certificate, configured ones in config order, the self-signed one (if any) last. */
  readonly entries: readonly CredentialEntry[];
  /**
   * The context for a server name: exact match, then one-label wildcard, then the default.
   * Case-insensitive; a trailing dot is ignored; `undefined` or `''` gives the default.
   */
  contextFor(serverName: string | undefined): tls.SecureContext;
  /** For `{ SNICallback }` of `tls.createServer` / `new tls.TLSSocket`: answers with {@link contextFor}. */
  readonly sniCallback: SniCallback;
  /**
   * Options for `tls.createServer` / `https.createServer`: the default certificate's key material
   * (Node serves it to clients that send no SNI; a `secureContext` option is ignored there),
   * `minVersion`, `ciphers` and `SNICallback`. For `new tls.TLSSocket` use
   * `{ isServer: true, secureContext: defaultContext, SNICallback: sniCallback }` instead.
   */
  readonly serverOptions: Readonly<tls.TlsOptions>;
}

/** The log calls this module makes. */
export type TlsCredentialsLog = Pick<Logger, 'warn' | 'info'>;

/** A certificate's key material, PEM, before it becomes a context. */
interface Pem {
  readonly cert: string;
  readonly key: string;
  readonly passphrase?: string;
}

interface LoadedEntry extends CredentialEntry {
  readonly pem: Pem;
}

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** The DNS names of a certificate's subjectAltName, lowercased. */
export function subjectAltDnsNames(certificate: X509Certificate): string[] {
  const san = certificate.subjectAltName;
  if (san === undefined) return [];
  const names: string[] = [];
  // Node lists entries as `DNS:a, DNS:b, IP Address:…`, quoting (JSON-style) any value that
  // contains a separator character.
  const entry = /(?:^|, )DNS:("(?:[^"\\]|\\.)*"|[^,]*)/g;
  for (const match of san.matchAll(entry)) {
    const raw = match[1] ?? '';
    const value = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
    if (value !== '') names.push(normalizeName(value));
  }
  return names;
}

/** Server-name lookup over the entries, in their order: the first entry naming a domain wins. */
class ContextSelector {
  private readonly exact = new Map<string, tls.SecureContext>();
  private readonly wildcard = new Map<string, tls.SecureContext>();

  constructor(entries: readonly CredentialEntry[]) {
    for (const entry of entries) {
      for (const domain of entry.domains) {
        const table = domain.startsWith('*.') ? this.wildcard : this.exact;
        const key = domain.startsWith('*.') ? domain.slice(2) : domain;
        if (!table.has(key)) table.set(key, entry.context);
      }
    }
  }

  /** The matching context, or `undefined` when no entry covers `serverName`. */
  find(serverName: string): tls.SecureContext | undefined {
    const name = normalizeName(serverName);
    const exact = this.exact.get(name);
    if (exact !== undefined) return exact;
    const dot = name.indexOf('.');
    if (dot <= 0) return undefined;
    return this.wildcard.get(name.slice(dot + 1));
  }
}

function credentialsError(problem: string, message: string, cause?: unknown): ConfigError {
  return new ConfigError(ErrorCode.TLS_CREDENTIALS, message, [problem], { cause });
}

function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function readPem(file: string, pointer: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const reason = reasonOf(err);
    throw credentialsError(`${pointer}: cannot read ${file}: ${reason}`, `cannot read TLS ${what} file ${file}: ${reason}`, err);
  }
}

/** What every context offers clients, from the `tls` section: the lowest version and the TLS 1.2 cipher suites. */
interface Protocol {
  readonly minVersion: tls.SecureVersion;
  readonly ciphers: string;
}

function secureContext(pem: Pem, protocol: Protocol, describe: () => string): tls.SecureContext {
  try {
    return tls.createSecureContext({ ...pem, ...protocol });
  } catch (err) {
    const reason = reasonOf(err);
    throw credentialsError(`${describe()}: ${reason}`, `cannot use TLS ${describe()}: ${reason}`, err);
  }
}

async function loadEntry(config: CertificateConfig, index: number, protocol: Protocol, log: TlsCredentialsLog): Promise<LoadedEntry> {
  const pointer = `/tls/certificates/${index}`;
  const source = `tls.certificates[${index}]`;
  const cert = await readPem(config.cert, `${pointer}/cert`, 'certificate');
  const key = await readPem(config.key, `${pointer}/key`, 'key');
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (err) {
    const reason = reasonOf(err);
    throw credentialsError(
      `${pointer}/cert: ${config.cert} holds no PEM certificate: ${reason}`,
      `TLS certificate file ${config.cert} holds no PEM certificate: ${reason}`,
      err,
    );
  }
  const pem: Pem = config.passphrase === undefined ? { cert, key } : { cert, key, passphrase: config.passphrase };
  const context = secureContext(pem, protocol, () => `certificate ${config.cert} with key ${config.key}`);
  const domains = config.domains?.map(normalizeName) ?? subjectAltDnsNames(certificate);
  const validTo = new Date(certificate.validTo);
  const entry: LoadedEntry = {
    source,
    certFile: config.cert,
    domains,
    fingerprint256: certificate.fingerprint256,
    validTo,
    context,
    pem,
  };
  log.info({ source, cert: config.cert, domains, validTo: validTo.toISOString() }, 'tls certificate loaded');
  if (domains.length === 0) {
    log.warn({ source, cert: config.cert }, 'tls certificate names no DNS domain; it can only serve as the default');
  }
  if (isLeafOnly(cert, certificate)) {
    log.warn(
      { source, cert: config.cert, issuer: certificate.issuer.replaceAll('\n', ', ') },
      "tls certificate file holds the server certificate without its issuer: unless a root CA issued it directly, clients that lack the intermediate certificate will refuse it; use the full chain (fullchain.pem, not cert.pem, with Let's Encrypt)",
    );
  }
  return entry;
}

/**
 * True when a PEM file holds one certificate that a CA issued: the chain a client needs to reach
 * its trust anchor (RFC 8446 §4.4.2, "certificate_list") is missing the intermediate. A
 * self-signed certificate is its own chain.
 */
function isLeafOnly(pem: string, certificate: X509Certificate): boolean {
  const count = pem.split('-----BEGIN CERTIFICATE-----').length - 1;
  return count === 1 && certificate.issuer !== certificate.subject;
}

/** Generates the in-memory self-signed certificate for `domains`, 'localhost' and 127.0.0.1. */
async function generateSelfSigned(domains: readonly string[], protocol: Protocol, log: TlsCredentialsLog): Promise<LoadedEntry> {
  const names = [...new Set([...domains.map(normalizeName), 'localhost'])];
  const notBeforeDate = new Date(Date.now() - 60_000); // a minute of clock skew
  const notAfterDate = new Date(notBeforeDate.getTime() + SELF_SIGNED_VALIDITY_MS);
  // Loaded only here: a production config names its certificates and never needs it.
  const { default: selfsigned } = await import('selfsigned');
  const generated = await selfsigned.generate([{ name: 'commonName', value: names[0] ?? 'localhost' }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [...names.map((value) => ({ type: 2 as const, value })), { type: 7 as const, ip: '127.0.0.1' }],
      },
    ],
  });
  const pem: Pem = { cert: generated.cert, key: generated.private };
  const certificate = new X509Certificate(generated.cert);
  const context = secureContext(pem, protocol, () => 'generated self-signed certificate');
  const entry: LoadedEntry = {
    source: 'selfSigned',
    certFile: undefined,
    domains: names,
    fingerprint256: certificate.fingerprint256,
    validTo: new Date(certificate.validTo),
    context,
    pem,
  };
  log.warn(
    { domains: names, fingerprint256: entry.fingerprint256, validTo: entry.validTo.toISOString() },
    'tls.selfSigned: serving a generated self-signed certificate; clients will reject it unless told to trust it',
  );
  return entry;
}

/** Logs, at warn, each configured certificate that expires within 14 days or has expired. */
export function warnExpiring(entries: readonly CredentialEntry[], log: TlsCredentialsLog, nowMs: number): void {
  for (const { source, certFile, validTo } of entries) {
    if (certFile === undefined || validTo.getTime() - nowMs >= EXPIRY_WARNING_MS) continue;
    log.warn({ source, cert: certFile, validTo: validTo.toISOString() }, 'tls certificate expires soon or has expired');
  }
}

/**
 * Loads the client-facing TLS credentials, at start-up and at each reload (README, Reloading).
 * Async because the self-signed certificate is generated with WebCrypto.
 *
 * @param config the effective `tls` section (absolute paths).
 * @param domains the served XMPP domains (`Object.keys(config.domains)`): the self-signed
 *   certificate is made for them, and a domain no certificate covers is logged.
 * @throws ConfigError `PROXY_ERR_TLS_CREDENTIALS` naming the file when a PEM file is missing,
 *   unreadable or unusable (wrong passphrase, key not matching the certificate), or when there is
 *   no certificate at all and `selfSigned` is false.
 */
export async function createTlsCredentials(config: TlsConfig, domains: readonly string[], log: TlsCredentialsLog): Promise<TlsCredentials> {
  const protocol: Protocol = { minVersion: config.minVersion, ciphers: config.ciphers };
  const loaded: LoadedEntry[] = [];
  for (const [index, certificate] of config.certificates.entries()) {
    loaded.push(await loadEntry(certificate, index, protocol, log));
  }
  const configured = new ContextSelector(loaded);
  const uncovered = domains.map(normalizeName).filter((domain) => configured.find(domain) === undefined);
  if (config.selfSigned && (uncovered.length > 0 || loaded.length === 0)) {
    loaded.push(await generateSelfSigned(domains, protocol, log));
  } else if (uncovered.length > 0) {
    log.warn(
      { domains: uncovered, default: loaded[config.defaultCertificate]?.source },
      'no tls certificate covers these domains; their clients get the default certificate',
    );
  }

  // The configured default; the self-signed certificate when none is configured.
  const defaultEntry = config.certificates.length === 0 ? loaded[0] : loaded[config.defaultCertificate];
  if (defaultEntry === undefined) {
    if (loaded.length === 0) {
      throw credentialsError(
        '/tls: no certificate: tls.certificates is empty and tls.selfSigned is false',
        'no TLS certificate: tls.certificates is empty and tls.selfSigned is false',
      );
    }
    throw credentialsError(
      `/tls/defaultCertificate: index ${config.defaultCertificate} is out of range`,
      `tls.defaultCertificate ${config.defaultCertificate} is out of range: ${config.certificates.length} certificates`,
    );
  }

  const selector = new ContextSelector(loaded);
  const defaultContext = defaultEntry.context;
  const contextFor = (serverName: string | undefined): tls.SecureContext =>
    (serverName ? selector.find(serverName) : undefined) ?? defaultContext;
  const sniCallback: SniCallback = (serverName, callback) => callback(null, contextFor(serverName));
  const entries: CredentialEntry[] = loaded.map(({ pem: _pem, ...entry }) => Object.freeze(entry));
  warnExpiring(entries, log, Date.now());
  return Object.freeze({
    defaultContext,
    entries: Object.freeze(entries),
    contextFor,
    sniCallback,
    serverOptions: Object.freeze({ ...defaultEntry.pem, ...protocol, SNICallback: sniCallback }),
  });
}
