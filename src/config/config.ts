/**
 * The proxy's configuration: its types, validation against `proxy.schema.json`, defaults, and
 * loading from a file. The config is read once at start-up; every problem is reported at once by
 * JSON pointer; the result is frozen. Only the composition root reads it.
 *
 * The schema (`src/config/proxy.schema.json`) is the single source of the keys, their ranges and
 * their defaults; the interfaces below mirror it for TypeScript and must be kept in step (the unit
 * test compares a defaults-filled config with them). Checks that involve two keys, which JSON
 * Schema cannot express, live in `crossFieldProblems` below.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { ConfigError, ErrorCode } from '../errors.js';
import { parseIpRange } from '../transport/ip-range.js';
import schema from './proxy.schema.json' with { type: 'json' };

/** Listener kinds: STARTTLS on plain TCP (RFC 6120 §5), direct TLS (XEP-0368), WebSocket (RFC 7395). */
export type ListenerType = 'starttls' | 'directtls' | 'websocket';

/** A TCP listener: STARTTLS (`starttls`) or TLS from the first byte (`directtls`). */
export interface TcpListenerConfig {
  /** `starttls`: plain TCP that must be upgraded with STARTTLS first (port 5222); `directtls`: TLS from the first byte, XEP-0368 (port 5223). */
  readonly type: 'starttls' | 'directtls';
  /** Local address to bind (IP address or host name). Default `"::"`. */
  readonly host: string;
  /** TCP port to bind, 0..65535; 0 = ephemeral (tests). Required. */
  readonly port: number;
  /** Load balancers that send a PROXY protocol header (IP addresses or CIDR ranges). Default `[]` = none. */
  readonly proxyProtocolFrom: readonly string[];
}

/** An XMPP-over-WebSocket listener (RFC 7395). */
export interface WebSocketListenerConfig {
  /** Always `websocket`. */
  readonly type: 'websocket';
  /** Local address to bind (IP address or host name). Default `"::"`. */
  readonly host: string;
  /** TCP port to bind, 0..65535; 0 = ephemeral (tests). Required. */
  readonly port: number;
  /** `true` = wss:// with the `tls` section's certificates; `false` = plain ws:// behind a TLS-terminating reverse proxy. Default `true`. */
  readonly tls: boolean;
  /** URL path of the endpoint, starting with `/`; other paths get HTTP 404. Default `"/xmpp-websocket"`. */
  readonly path: string;
  /**
   * Browser origins allowed (`scheme://host[:port]`, lowercase, no trailing slash), compared with
   * the Origin header; others get HTTP 403. Default `[]` = any origin. A handshake without an
   * Origin header (non-browser client) is always allowed.
   */
  readonly allowedOrigins: readonly string[];
  /** Seconds between WebSocket pings to the client. Default 25, range 0.05..3600. */
  readonly pingIntervalSeconds: number;
  /**
   * Reverse proxies whose X-Forwarded-For / Forwarded headers are believed (for logs): IPv4 or IPv6
   * addresses, or CIDR ranges `address/prefix` (prefix 0..32 for IPv4, 0..128 for IPv6).
   * Default `[]` = never.
   */
  readonly trustedProxies: readonly string[];
  /** Load balancers that send a PROXY protocol header before TLS and HTTP (IP addresses or CIDR ranges). Default `[]` = none. */
  readonly proxyProtocolFrom: readonly string[];
}

/** One client listener; `type` discriminates. */
export type ListenerConfig = TcpListenerConfig | WebSocketListenerConfig;

/** A certificate chain and its key, both PEM files. */
export interface CertificateConfig {
  /** Absolute path of the PEM certificate chain, leaf first (resolved against the config file's directory). */
  readonly cert: string;
  /** Absolute path of the PEM private key (resolved against the config file's directory). */
  readonly key: string;
  /** Passphrase of an encrypted key. Optional. Never logged: `describeConfig` shows `"<elided>"`. */
  readonly passphrase?: string;
  /**
   * Server names this certificate serves: lowercase host names or `*.example.org` (one label).
   * Optional: when absent, taken from the certificate's subjectAltName DNS entries at load time.
   */
  readonly domains?: readonly string[];
}

/** Lowest accepted TLS protocol version. */
export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

/** TLS towards clients. */
export interface TlsConfig {
  /** Certificates, chosen per SNI server name: exact, then `*.` wildcard, then `defaultCertificate`. Default `[]`. */
  readonly certificates: readonly CertificateConfig[];
  /** Index into `certificates` used when the server name is absent or matches none. Default 0. */
  readonly defaultCertificate: number;
  /** Generate an in-memory self-signed certificate for domains no certificate covers (trials only). Default `false`. */
  readonly selfSigned: boolean;
  /** Lowest TLS version accepted from clients. Default `"TLSv1.2"`. */
  readonly minVersion: TlsMinVersion;
  /** TLS 1.2 cipher suites (OpenSSL list). Default: ECDHE with AEAD only. */
  readonly ciphers: string;
}

/** Security of the hop to the legacy server. */
export type UpstreamSecurity = 'plain' | 'starttls' | 'tls';

/** How the proxy reaches the legacy server of one domain. */
export interface UpstreamConfig {
  /** Host name or IP address of the legacy server (no SRV lookup). Required. */
  readonly host: string;
  /** Client-to-server port of the legacy server, 1..65535. Default 5222. */
  readonly port: number;
  /** `plain` (loopback/trusted network only), `starttls`, or `tls` from the first byte. Default `"plain"`. */
  readonly security: UpstreamSecurity;
  /** Seconds allowed for the TCP connect (and TLS handshake). Default 10, range 0.05..300. */
  readonly connectTimeoutSeconds: number;
  /** Verify the legacy server's certificate (`starttls`/`tls` only). Default `true`. */
  readonly rejectUnauthorized: boolean;
  /** SNI and certificate name for the hop. Optional; when absent use the XMPP domain. */
  readonly serverName?: string;
  /** A PROXY protocol header with the client's address first on each connection: `v1`, `v2` or `off`. Default `"off"`. */
  readonly proxyProtocol: 'off' | 'v1' | 'v2';
}

/** One served XMPP domain. */
export interface DomainConfig {
  /** The hop to the legacy server for this domain. */
  readonly upstream: UpstreamConfig;
}

/** Resource limits. */
export interface LimitsConfig {
  /** Largest top-level element after authentication, in bytes. Default 262144 (256 KiB), range 4096..16777216. */
  readonly maxStanzaBytes: number;
  /** Largest element from the client before SASL success, in bytes. Default 16384 (16 KiB), range 4096..16777216, ≤ `maxStanzaBytes`. */
  readonly maxStanzaBytesPreAuth: number;
  /** Deepest element nesting, the stream element included. Default 64, range 4..1024. */
  readonly maxDepth: number;
  /** Seconds a connection may stay unauthenticated before `connection-timeout`. Default 60, range 0.05..3600. */
  readonly authTimeoutSeconds: number;
  /** Most bound sessions (connected plus hibernating) at once; enforced at bind. Default 100000, range 1..10000000. */
  readonly maxSessions: number;
  /**
   * Most sessions (connected plus hibernating) opened from one client address (for WebSocket
   * behind a trusted reverse proxy, the forwarded one). 0 = no limit. Default 0, range 0..10000000.
   */
  readonly maxSessionsPerAddress: number;
  /** Most connections not yet bound or resumed; beyond, the oldest is closed. Default 1000, range 1..10000000. */
  readonly maxUnauthenticated: number;
  /** Most connections not yet bound or resumed from one client address. 0 = no limit. Default 10, range 0..10000000. */
  readonly maxUnauthenticatedPerAddress: number;
  /** IPv6 clients count per network of this prefix length for the per-address limits. Default 64, range 1..128. */
  readonly ipv6PrefixLength: number;
  /** Failed logins from one address before its logins are refused for a while. 0 = never. Default 5, range 0..1000. */
  readonly maxFailedLogins: number;
  /** How long the first refusal lasts, in seconds; each further failure doubles it, up to an hour. Default 60, range 1..3600. */
  readonly failedLoginBackoffSeconds: number;
}

/** What happens to unacked stanzas of an expired session. */
export type ExpiryPolicy = 'bounce' | 'drop';

/** XEP-0352 client state indication, for legacy servers that do not offer it. */
export interface ClientStateIndicationConfig {
  /** Offer `<csi/>` when the legacy server does not, and hold what can wait for inactive clients. Default `true`. */
  readonly enabled: boolean;
}

/** XEP-0357 push notifications, for legacy servers without them. */
export interface PushConfig {
  /** Answer push enable/disable, keep registrations in private XML storage, notify while hibernating. Default `true`. */
  readonly enabled: boolean;
  /** At most one notification per hibernating session within this many seconds. Default 60, range 0..3600. */
  readonly intervalSeconds: number;
  /** How long a hibernating session with registrations is kept. Default 259200, range 0..604800. */
  readonly hibernationSeconds: number;
  /** Include the sender's bare JID in notifications. Default `false`. */
  readonly withSender: boolean;
  /** Include the message body in notifications. Default `false`. */
  readonly withBody: boolean;
}

/** XEP-0198 stream management. */
export interface StreamManagementConfig {
  /** Seconds a session stays resumable after its client link is lost (mod_smacks `smacks_hibernation_time`). 0 = no resumption. Default 300, range 0..604800. */
  readonly hibernationSeconds: number;
  /** Cap for the client's `<enable max='…'/>`, seconds. Default 300, range 0..604800, ≥ `hibernationSeconds`. */
  readonly maxHibernationSeconds: number;
  /** Request an ack when more than this many stanzas are unacked (`smacks_max_unacked_stanzas`). Default 0, range 0..100000, < `maxQueueStanzas`. */
  readonly maxUnackedStanzas: number;
  /** Seconds an ack request may stay unanswered before "ack delayed" (`smacks_max_ack_delay`). Default 60, range 0.05..3600. */
  readonly maxAckDelaySeconds: number;
  /** While stanzas are unacked, request an ack at least this often, seconds. Default 30, range 0.05..3600. */
  readonly ackRequestIntervalSeconds: number;
  /** Most unacked stanzas per session. Default 1000, range 1..1000000. */
  readonly maxQueueStanzas: number;
  /** Most bytes of unacked stanzas per session. Default 1048576 (1 MiB), range 4096..1073741824, ≥ `limits.maxStanzaBytes`, ≤ `globalQueueBytes`. */
  readonly maxQueueBytes: number;
  /** Most bytes of unacked stanzas for all sessions of one account together. Default 8388608 (8 MiB), range 4096..1099511627776, ≥ `maxQueueBytes`. */
  readonly maxQueueBytesPerAccount: number;
  /** Most bytes of unacked stanzas for all sessions from one client address together; 0 = no limit. Default 67108864 (64 MiB), range 0..1099511627776. */
  readonly maxQueueBytesPerAddress: number;
  /** Most bytes of unacked stanzas for all sessions together. Default 268435456 (256 MiB), range 4096..1099511627776. */
  readonly globalQueueBytes: number;
  /** `bounce` = answer unacked stanzas with errors on expiry; `drop` = discard them. Default `"bounce"`. */
  readonly expiryPolicy: ExpiryPolicy;
  /** How long a stranded session keeps its queue after its legacy server stream ended, seconds (its hibernation time when longer). Default 3600, range 0..604800. */
  readonly strandedSeconds: number;
  /** Seconds the h of an expired session is kept for `<failed h='…'/>`. 0 = not kept. Default 3600, range 0..604800. */
  readonly rememberExpiredSeconds: number;
  /** Most expired sessions remembered at once, oldest forgotten first. Default 100000, range 0..10000000. */
  readonly maxRememberedExpired: number;
  /** Seconds of upstream idleness after which a whitespace keepalive is written, once bound. Default 60, range 0.05..3600. */
  readonly upstreamKeepaliveSeconds: number;
}

/** pino level names. */
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/** Log output format. */
export type LogFormat = 'auto' | 'json' | 'pretty';

/** Logging. */
export interface LogConfig {
  /** Least severe level written. Default `"info"`. */
  readonly level: LogLevel;
  /** `json`, `pretty`, or `auto` (pretty on a TTY, JSON otherwise). Default `"auto"`. */
  readonly format: LogFormat;
}

/** The admin and metrics HTTP listener (README, Metrics and health). */
export interface AdminConfig {
  /** Local address to bind. Default `"127.0.0.1"`. */
  readonly host: string;
  /** TCP port to bind, 0..65535; 0 = ephemeral (tests). Required. */
  readonly port: number;
  /** Absolute path of the file holding the bearer token of `/sessions`, `/kick`, `/drain` and `/metrics` (resolved against the config file's directory). Optional. */
  readonly tokenFile?: string;
  /** Seconds between probes of each legacy server (`/readyz`, `smacks_upstream_up`). Default 30, range 1..3600. */
  readonly probeIntervalSeconds: number;
}

/** The SM events a webhook may carry (README, Webhook). */
export type WebhookEvent = 'hibernationStarted' | 'hibernationEnded' | 'ackDelayed' | 'stanzaQueuedWhileHibernating';

/** The webhook that POSTs SM events (README, Webhook). */
export interface WebhookConfig {
  /** An http:// or https:// URL. Required. */
  readonly url: string;
  /** Absolute path of the file holding the HMAC secret (resolved against the config file's directory). Required. */
  readonly secretFile: string;
  /** The events sent. Default all four. */
  readonly events: readonly WebhookEvent[];
  /** Events waiting at most; beyond, the oldest is dropped. Default 10000. */
  readonly maxQueue: number;
  /** Seconds allowed per POST. Default 5. */
  readonly timeoutSeconds: number;
  /** Attempts per event before it is dropped. Default 6. */
  readonly maxAttempts: number;
}

/** The hand-off to a new process on SIGUSR2 (README, Upgrading). */
export interface UpgradeConfig {
  /** Attached clients are disconnected, to resume at the new process, at most this many per second. Default 20. */
  readonly resumesPerSecond: number;
  /** Sessions that cannot move (no stream management) end no sooner than this many seconds after the upgrade began. Default 30. */
  readonly windowSeconds: number;
}

/** The effective configuration: validated, defaults filled, file paths absolute, deeply frozen. */
export interface ProxyConfig {
  /** Client-facing listeners, at least one. */
  readonly listeners: readonly ListenerConfig[];
  /** TLS towards clients. */
  readonly tls: TlsConfig;
  /**
   * Served XMPP domains (lowercase host names) → their upstream. At least one. A null-prototype
   * object: look names up with {@link findDomain}, which never finds inherited keys such as
   * `constructor`.
   */
  readonly domains: Readonly<Record<string, DomainConfig>>;
  /** Resource limits. */
  readonly limits: LimitsConfig;
  /** XEP-0198 stream management. */
  readonly streamManagement: StreamManagementConfig;
  /** XEP-0352 client state indication done by the proxy. */
  readonly clientStateIndication: ClientStateIndicationConfig;
  /** XEP-0357 push notifications done by the proxy. */
  readonly push: PushConfig;
  /** Seconds sessions get to close cleanly on shutdown before sockets are destroyed. Default 5, range 0..300. */
  readonly shutdownGraceSeconds: number;
  /** The hand-off to a new process on SIGUSR2 (README, Upgrading). */
  readonly upgrade: UpgradeConfig;
  /** Absolute path of the file the running process's PID is written to (resolved against the config file's directory); absent = none. */
  readonly pidFile?: string;
  /** The admin and metrics listener; absent = none. */
  readonly admin?: AdminConfig;
  /** The webhook for SM events; absent = none. */
  readonly webhook?: WebhookConfig;
  /** Logging. */
  readonly log: LogConfig;
}

/** Shown instead of every `passphrase` by {@link describeConfig}. */
const ELIDED = '<elided>';

let validator: ValidateFunction | undefined;

/** Compiles the schema once, on first use (a few milliseconds). */
function validate(data: unknown): readonly ErrorObject[] {
  if (validator === undefined) {
    const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, discriminator: true });
    validator = ajv.compile(schema);
  }
  return validator(data) ? [] : (validator.errors ?? []);
}

/** Plain-words meaning of the schema's patterns, so a problem line never shows a regular expression. */
const PATTERN_MEANING: Readonly<Record<string, string>> = {
  '^/[^?#\\s]*$': "must be a URL path starting with '/', without query, fragment or spaces",
  '^https?://[^/\\s@]+(?:[/?#]\\S*)?$': 'must be an http:// or https:// URL without spaces, user name or password',
  '^[a-z][a-z0-9+.-]*://[^/?#\\s]+$': 'must be an origin as browsers send it: lowercase scheme://host[:port], no path or trailing slash',
  '^(\\*\\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$':
    "must be a lowercase host name, or '*.' followed by one",
  '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$': 'must be a lowercase host name',
};

/** JSON pointer for display: the document root is shown as `/` rather than the empty string. */
function showPath(pointer: string): string {
  return pointer === '' ? '/' : pointer;
}

/**
 * One problem line per ajv error: `<JSON pointer>: <message>`. Unknown and missing keys name the
 * key; enums list the allowed values; patterns are explained in words.
 */
function problemLine(error: ErrorObject): string | undefined {
  const path = showPath(error.instancePath);
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'discriminator':
      // The listener's own `type` property (enum + required) already reports this, in better words.
      return undefined;
    case 'propertyNames':
      // A wrapper; the failing name's own error (with `propertyName`) follows or precedes it.
      return undefined;
    case 'additionalProperties':
      return `${path}: unknown key '${String(params.additionalProperty)}'`;
    case 'required':
      return `${path}: missing required key '${String(params.missingProperty)}'`;
    case 'enum': {
      const allowed = (params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ');
      return `${path}: must be one of ${allowed}`;
    }
    case 'const':
      return `${path}: must be ${JSON.stringify(params.allowedValue)}`;
    default:
      break;
  }
  let message = error.message ?? `fails ${error.keyword}`;
  if (error.keyword === 'pattern') {
    message = PATTERN_MEANING[String(params.pattern)] ?? message;
  }
  if (error.propertyName !== undefined) {
    return `${path}: key '${error.propertyName}' ${message}`;
  }
  return `${path}: ${message}`;
}

type Obj = Record<string, unknown>;

function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function asArray(value: unknown): readonly unknown[] {
  return Array.isArray(value) ? value : [];
}

function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** A listening address as one string, so that `::1` and `[::1]`, or a name in capitals and in lower case, compare equal. */
function bindAddress(host: string, port: number): string {
  return `${host.toLowerCase().replace(/^\[(.*)\]$/, '$1')} ${port}`;
}

/**
 * Rules that join two keys, which the schema cannot state. Runs on the defaults-filled data even
 * when the schema found problems, so the operator sees everything at once; a rule skips values the
 * schema already refused (`invalid` holds their JSON pointers) and values of the wrong type.
 */
function crossFieldProblems(data: unknown, invalid: ReadonlySet<string>): string[] {
  const problems: string[] = [];
  if (!isObject(data)) return problems;
  const number = (pointer: string, value: unknown): number | undefined => (invalid.has(pointer) ? undefined : num(value));
  const tls = isObject(data.tls) ? data.tls : {};
  const certificateCount = asArray(tls.certificates).length;
  const certificateSourceKnown = !['/tls', '/tls/certificates', '/tls/selfSigned'].some((p) => invalid.has(p));
  const hasCertificateSource = certificateCount > 0 || tls.selfSigned === true;

  // Every listener that speaks TLS needs a certificate to offer.
  const seen = new Map<string, number>();
  asArray(data.listeners).forEach((listener, i) => {
    if (!isObject(listener)) return;
    const usesTls =
      listener.type === 'starttls' || listener.type === 'directtls' || (listener.type === 'websocket' && listener.tls !== false);
    if (usesTls && certificateSourceKnown && !hasCertificateSource && !invalid.has(`/listeners/${i}/tls`)) {
      problems.push(
        `/listeners/${i}: a ${String(listener.type)} listener needs a TLS certificate: ` +
          'add entries to tls.certificates or set tls.selfSigned to true',
      );
    }
    // Two listeners on one address fail at bind time; say so now, by path. Port 0 is ephemeral.
    const port = number(`/listeners/${i}/port`, listener.port);
    if (typeof listener.host === 'string' && port !== undefined && port !== 0) {
      const key = bindAddress(listener.host, port);
      const first = seen.get(key);
      if (first === undefined) {
        seen.set(key, i);
      } else {
        problems.push(`/listeners/${i}: same host and port (${listener.host} ${port}) as /listeners/${first}`);
      }
    }
    for (const key of ['trustedProxies', 'proxyProtocolFrom']) {
      asArray(listener[key]).forEach((entry, k) => {
        if (typeof entry !== 'string' || entry === '') return;
        const parsed = parseIpRange(entry);
        if (!parsed.ok) {
          problems.push(`/listeners/${i}/${key}/${k}: ${JSON.stringify(entry)} is not an IP address or CIDR range: ${parsed.reason}`);
        }
      });
    }
  });

  // The admin listener must not take a client listener's address (the operator meant one or the other).
  const admin = isObject(data.admin) ? data.admin : undefined;
  const adminPort = number('/admin/port', admin?.port);
  if (admin !== undefined && typeof admin.host === 'string' && adminPort !== undefined && adminPort !== 0) {
    const first = seen.get(bindAddress(admin.host, adminPort));
    if (first !== undefined) problems.push(`/admin: same host and port (${admin.host} ${adminPort}) as /listeners/${first}`);
  }

  const defaultCertificate = number('/tls/defaultCertificate', tls.defaultCertificate);
  if (defaultCertificate !== undefined && defaultCertificate > 0 && defaultCertificate >= certificateCount) {
    problems.push(
      `/tls/defaultCertificate: index ${defaultCertificate} is out of range: ` +
        `tls.certificates has ${certificateCount} ${certificateCount === 1 ? 'entry' : 'entries'}`,
    );
  }

  const limits = isObject(data.limits) ? data.limits : {};
  const maxStanzaBytes = number('/limits/maxStanzaBytes', limits.maxStanzaBytes);
  const maxStanzaBytesPreAuth = number('/limits/maxStanzaBytesPreAuth', limits.maxStanzaBytesPreAuth);
  if (maxStanzaBytes !== undefined && maxStanzaBytesPreAuth !== undefined && maxStanzaBytesPreAuth > maxStanzaBytes) {
    problems.push(`/limits/maxStanzaBytesPreAuth: ${maxStanzaBytesPreAuth} exceeds limits.maxStanzaBytes ${maxStanzaBytes}`);
  }

  const sm = isObject(data.streamManagement) ? data.streamManagement : {};
  const hibernationSeconds = number('/streamManagement/hibernationSeconds', sm.hibernationSeconds);
  const maxHibernationSeconds = number('/streamManagement/maxHibernationSeconds', sm.maxHibernationSeconds);
  if (hibernationSeconds !== undefined && maxHibernationSeconds !== undefined && maxHibernationSeconds < hibernationSeconds) {
    problems.push(
      `/streamManagement/maxHibernationSeconds: ${maxHibernationSeconds} is less than ` +
        `streamManagement.hibernationSeconds ${hibernationSeconds}`,
    );
  }
  const maxUnackedStanzas = number('/streamManagement/maxUnackedStanzas', sm.maxUnackedStanzas);
  const maxQueueStanzas = number('/streamManagement/maxQueueStanzas', sm.maxQueueStanzas);
  if (maxUnackedStanzas !== undefined && maxQueueStanzas !== undefined && maxUnackedStanzas >= maxQueueStanzas) {
    problems.push(
      `/streamManagement/maxUnackedStanzas: ${maxUnackedStanzas} is not less than ` +
        `streamManagement.maxQueueStanzas ${maxQueueStanzas}: the queue would overflow before an ack is requested`,
    );
  }
  const maxQueueBytes = number('/streamManagement/maxQueueBytes', sm.maxQueueBytes);
  const globalQueueBytes = number('/streamManagement/globalQueueBytes', sm.globalQueueBytes);
  if (maxQueueBytes !== undefined && maxStanzaBytes !== undefined && maxQueueBytes < maxStanzaBytes) {
    problems.push(
      `/streamManagement/maxQueueBytes: ${maxQueueBytes} is less than limits.maxStanzaBytes ${maxStanzaBytes}: ` +
        'a stanza of the largest allowed size could not be queued',
    );
  }
  if (maxQueueBytes !== undefined && globalQueueBytes !== undefined && maxQueueBytes > globalQueueBytes) {
    problems.push(`/streamManagement/maxQueueBytes: ${maxQueueBytes} exceeds streamManagement.globalQueueBytes ${globalQueueBytes}`);
  }
  // A share below one session's queue would refuse that session before its own limit.
  const perAccount = number('/streamManagement/maxQueueBytesPerAccount', sm.maxQueueBytesPerAccount);
  if (maxQueueBytes !== undefined && perAccount !== undefined && maxQueueBytes > perAccount) {
    problems.push(`/streamManagement/maxQueueBytes: ${maxQueueBytes} exceeds streamManagement.maxQueueBytesPerAccount ${perAccount}`);
  }
  const perAddress = number('/streamManagement/maxQueueBytesPerAddress', sm.maxQueueBytesPerAddress);
  if (maxQueueBytes !== undefined && perAddress !== undefined && perAddress !== 0 && maxQueueBytes > perAddress) {
    problems.push(`/streamManagement/maxQueueBytes: ${maxQueueBytes} exceeds streamManagement.maxQueueBytesPerAddress ${perAddress}`);
  }
  return problems;
}

/** Freezes an object graph in place and returns it. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) {
      deepFreeze((value as Obj)[key]);
    }
  }
  return value;
}

/** Builds the effective config from schema-valid, defaults-filled data. */
function effectiveConfig(data: Obj, baseDir: string): ProxyConfig {
  // `$schema` is for editors only.
  delete data.$schema;
  const config = data as unknown as {
    tls: { certificates: CertificateConfig[] };
    domains: Record<string, DomainConfig>;
    admin?: { tokenFile?: string };
    webhook?: { secretFile: string };
    pidFile?: string;
  };
  if (config.admin?.tokenFile !== undefined) config.admin.tokenFile = resolve(baseDir, config.admin.tokenFile);
  if (config.webhook !== undefined) config.webhook.secretFile = resolve(baseDir, config.webhook.secretFile);
  if (config.pidFile !== undefined) config.pidFile = resolve(baseDir, config.pidFile);
  config.tls.certificates = config.tls.certificates.map((certificate) => ({
    ...certificate,
    cert: resolve(baseDir, certificate.cert),
    key: resolve(baseDir, certificate.key),
  }));
  // A client chooses the domain name looked up here; no inherited key may answer it.
  const domains: Record<string, DomainConfig> = Object.create(null) as Record<string, DomainConfig>;
  for (const [name, domain] of Object.entries(config.domains)) domains[name] = domain;
  config.domains = domains;
  return deepFreeze(config as unknown as ProxyConfig);
}

/** The CONFIG_INVALID error: its message lists every problem too, for logs that show only messages. */
function invalidConfig(problems: readonly string[], cause?: unknown): ConfigError {
  const count = `${problems.length} ${problems.length === 1 ? 'problem' : 'problems'}`;
  const message = `invalid config (${count}):\n${problems.map((p) => `  ${p}`).join('\n')}`;
  return new ConfigError(ErrorCode.CONFIG_INVALID, message, problems, cause === undefined ? undefined : { cause });
}

/**
 * Validates raw config data (a parsed JSON document) and returns the effective config: defaults
 * filled, relative `tls.certificates[].cert`/`key` resolved against `baseDir`, `$schema` dropped,
 * deeply frozen. `raw` itself is not modified.
 *
 * @throws ConfigError `PROXY_ERR_CONFIG_INVALID` whose `problems` lists every violation, one line
 *   each, as `<JSON pointer>: <message>` (e.g. `/listeners/0/port: must be <= 65535`,
 *   `/limits: unknown key 'maxStanzaByte'`); the document root is shown as `/`.
 */
export function parseConfig(raw: unknown, baseDir: string): ProxyConfig {
  let data: unknown;
  try {
    data = structuredClone(raw);
  } catch (err) {
    throw invalidConfig(['/: must be JSON data'], err);
  }
  const problems: string[] = [];
  const errors = validate(data);
  for (const error of errors) {
    const line = problemLine(error);
    if (line !== undefined && !problems.includes(line)) problems.push(line);
  }
  problems.push(...crossFieldProblems(data, new Set(errors.map((error) => error.instancePath))));
  if (problems.length > 0 || !isObject(data)) throw invalidConfig(problems);
  return effectiveConfig(data, baseDir);
}

/**
 * Reads, parses and validates the config file at `path`. Relative paths inside it are resolved
 * against the file's directory.
 *
 * @throws ConfigError `PROXY_ERR_CONFIG_READ` when the file cannot be read or is not JSON (the
 *   message names the path; `cause` is the underlying error), `PROXY_ERR_CONFIG_INVALID` when it
 *   breaks the schema or a cross-field rule (`problems` holds every line; the message names the path).
 */
export async function loadConfig(path: string): Promise<ProxyConfig> {
  const absolute = resolve(path);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new ConfigError(ErrorCode.CONFIG_READ, `cannot read config file ${absolute}: ${reason}`, [], { cause: err });
  }
  let raw: unknown;
  try {
    // Editors on some systems save a byte order mark, which JSON.parse refuses.
    raw = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new ConfigError(ErrorCode.CONFIG_READ, `config file ${absolute} is not valid JSON: ${reason}`, [], {
      cause: err,
    });
  }
  try {
    return parseConfig(raw, dirname(absolute));
  } catch (err) {
    if (err instanceof ConfigError && err.code === ErrorCode.CONFIG_INVALID) {
      throw new ConfigError(ErrorCode.CONFIG_INVALID, `config file ${absolute}: ${err.message}`, err.problems, {
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * The effective config as pretty JSON (2-space indent), for `--check` and start-up logs. Every
 * `passphrase` is shown as `"<elided>"`.
 */
export function describeConfig(config: ProxyConfig): string {
  return JSON.stringify(config, (key, value: unknown) => (key === 'passphrase' ? ELIDED : value), 2);
}

/**
 * The config of an XMPP domain as named in a stream header's `to`, or `undefined` when the proxy
 * does not serve it. Domain names compare case-insensitively (RFC 7622 §3.2); a trailing dot is
 * ignored. Only own keys match.
 */
export function findDomain(config: ProxyConfig, domain: string): DomainConfig | undefined {
  const name = domainKey(domain);
  return Object.hasOwn(config.domains, name) ? config.domains[name] : undefined;
}

/** A domain name as the config's `domains` keys spell it: lowercase, no trailing dot. */
export function domainKey(domain: string): string {
  return domain.toLowerCase().replace(/\.$/, '');
}
