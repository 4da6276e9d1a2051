import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  describeConfig,
  findDomain,
  loadConfig,
  parseConfig,
  type ProxyConfig,
  type WebSocketListenerConfig,
} from '../../src/config/config.js';
import schema from '../../src/config/proxy.schema.json' with { type: 'json' };
import { ConfigError, ErrorCode } from '../../src/errors.js';

type Json = Record<string, unknown>;

/** The smallest valid config; a fresh object each call so cases can mutate it. */
function minimal(): Json {
  return {
    listeners: [{ type: 'starttls', host: '127.0.0.1', port: 5222 }],
    tls: { selfSigned: true },
    domains: { localhost: { upstream: { host: '127.0.0.1' } } },
  };
}

/** `minimal()` with `patch` merged one level deep (objects merged, everything else replaced). */
function withPatch(patch: Json): Json {
  const base = minimal();
  for (const [key, value] of Object.entries(patch)) {
    const current = base[key];
    base[key] =
      typeof value === 'object' &&
      value !== null &&
      !Array.isArray(value) &&
      typeof current === 'object' &&
      current !== null &&
      !Array.isArray(current)
        ? { ...current, ...value }
        : value;
  }
  return base;
}

/** The problem lines `parseConfig` reports for `raw`; fails the test when it accepts it. */
function problemsOf(raw: unknown): readonly string[] {
  try {
    parseConfig(raw, '/etc/smacks-proxy');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const configError = err as ConfigError;
    expect(configError.code).toBe(ErrorCode.CONFIG_INVALID);
    for (const line of configError.problems) expect(configError.message).toContain(line);
    return configError.problems;
  }
  throw new Error(`expected problems, but the config was accepted: ${JSON.stringify(raw)}`);
}

/** The repository root: the nearest directory above this file holding package.json. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('package.json not found above the test file');
    dir = parent;
  }
  return dir;
}

const BASE = '/etc/smacks-proxy';

describe('parseConfig: defaults', () => {
  it('fills every default of a minimal config', () => {
    const expected: ProxyConfig = {
      listeners: [{ type: 'starttls', host: '127.0.0.1', port: 5222, proxyProtocolFrom: [] }],
      tls: {
        certificates: [],
        defaultCertificate: 0,
        selfSigned: true,
        minVersion: 'TLSv1.2',
        ciphers:
          'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305',
      },
      domains: {
        localhost: {
          upstream: {
            host: '127.0.0.1',
            port: 5222,
            security: 'plain',
            connectTimeoutSeconds: 10,
            rejectUnauthorized: true,
            proxyProtocol: 'off',
          },
        },
      },
      limits: {
        maxStanzaBytes: 262144,
        maxStanzaBytesPreAuth: 16384,
        maxDepth: 64,
        authTimeoutSeconds: 60,
        maxSessions: 100000,
        maxSessionsPerAddress: 0,
        maxUnauthenticated: 1000,
        maxUnauthenticatedPerAddress: 10,
        ipv6PrefixLength: 64,
        maxFailedLogins: 5,
        failedLoginBackoffSeconds: 60,
      },
      streamManagement: {
        hibernationSeconds: 300,
        maxHibernationSeconds: 300,
        maxUnackedStanzas: 0,
        maxAckDelaySeconds: 60,
        ackRequestIntervalSeconds: 30,
        maxQueueStanzas: 1000,
        maxQueueBytes: 1048576,
        maxQueueBytesPerAccount: 8388608,
        maxQueueBytesPerAddress: 67108864,
        globalQueueBytes: 268435456,
        expiryPolicy: 'bounce',
        strandedSeconds: 3600,
        rememberExpiredSeconds: 3600,
        maxRememberedExpired: 100000,
        upstreamKeepaliveSeconds: 60,
      },
      clientStateIndication: { enabled: true },
      push: { enabled: true, intervalSeconds: 60, hibernationSeconds: 259200, withSender: false, withBody: false },
      shutdownGraceSeconds: 5,
      upgrade: { resumesPerSecond: 20, windowSeconds: 30 },
      log: { level: 'info', format: 'auto' },
    };
    const config = parseConfig(minimal(), BASE);
    expect(JSON.parse(JSON.stringify(config))).toEqual(expected);
  });

  it('fills listener defaults per type: host everywhere, websocket keys only on websocket listeners', () => {
    const config = parseConfig(
      withPatch({
        listeners: [
          { type: 'directtls', port: 5223 },
          { type: 'websocket', port: 5443 },
        ],
      }),
      BASE,
    );
    expect(config.listeners[0]).toEqual({ type: 'directtls', host: '::', port: 5223, proxyProtocolFrom: [] });
    const websocket: WebSocketListenerConfig = {
      type: 'websocket',
      host: '::',
      port: 5443,
      tls: true,
      path: '/xmpp-websocket',
      allowedOrigins: [],
      pingIntervalSeconds: 25,
      trustedProxies: [],
      proxyProtocolFrom: [],
    };
    expect(config.listeners[1]).toEqual(websocket);
  });

  it('accepts trusted proxies as IPv4 and IPv6 addresses and CIDR ranges', () => {
    const trustedProxies = [
      '127.0.0.1',
      '::1',
      '10.0.0.0/8',
      '192.0.2.7/32',
      '0.0.0.0/0',
      'fd00::/8',
      '2001:db8::/128',
      '::/0',
      '::ffff:10.0.0.0/104',
    ];
    const config = parseConfig(withPatch({ listeners: [{ type: 'websocket', port: 5443, trustedProxies }] }), '/etc/smacks-proxy');
    expect((config.listeners[0] as WebSocketListenerConfig).trustedProxies).toEqual(trustedProxies);
  });

  it('keeps values that are given, fractional seconds included', () => {
    const config = parseConfig(
      withPatch({
        limits: { authTimeoutSeconds: 0.5, maxStanzaBytes: 65536 },
        streamManagement: { hibernationSeconds: 0, maxHibernationSeconds: 0.05, maxAckDelaySeconds: 0.05 },
        shutdownGraceSeconds: 0,
        log: { level: 'trace', format: 'json' },
      }),
      BASE,
    );
    expect(config.limits.authTimeoutSeconds).toBe(0.5);
    expect(config.limits.maxStanzaBytes).toBe(65536);
    expect(config.limits.maxStanzaBytesPreAuth).toBe(16384);
    expect(config.streamManagement.hibernationSeconds).toBe(0);
    expect(config.streamManagement.maxAckDelaySeconds).toBe(0.05);
    expect(config.shutdownGraceSeconds).toBe(0);
    expect(config.log).toEqual({ level: 'trace', format: 'json' });
  });

  it('drops $schema and leaves the raw input untouched', () => {
    const raw = { $schema: './src/config/proxy.schema.json', ...minimal() };
    const before = JSON.stringify(raw);
    const config = parseConfig(raw, BASE);
    expect(JSON.stringify(raw)).toBe(before);
    expect(Object.keys(config)).not.toContain('$schema');
  });
});

describe('parseConfig: file paths', () => {
  it('resolves relative certificate paths against baseDir and keeps absolute ones', () => {
    const config = parseConfig(
      withPatch({
        tls: {
          certificates: [
            { cert: 'certs/fullchain.pem', key: './certs/privkey.pem' },
            { cert: '/srv/tls/b.pem', key: '../b.key', passphrase: 'secret', domains: ['b.example'] },
          ],
        },
      }),
      BASE,
    );
    expect(config.tls.certificates).toEqual([
      { cert: '/etc/smacks-proxy/certs/fullchain.pem', key: '/etc/smacks-proxy/certs/privkey.pem' },
      { cert: '/srv/tls/b.pem', key: '/etc/b.key', passphrase: 'secret', domains: ['b.example'] },
    ]);
  });

  it('resolves the admin token file against baseDir and fills the admin defaults', () => {
    const config = parseConfig(withPatch({ admin: { port: 9180, tokenFile: 'admin.token' } }), BASE);
    expect(config.admin).toEqual({ host: '127.0.0.1', port: 9180, tokenFile: '/etc/smacks-proxy/admin.token', probeIntervalSeconds: 30 });
    expect(parseConfig(minimal(), BASE).admin).toBeUndefined();
  });

  it('resolves the PID file against baseDir; absent means none', () => {
    expect(parseConfig(withPatch({ pidFile: 'run/proxy.pid' }), BASE).pidFile).toBe('/etc/smacks-proxy/run/proxy.pid');
    expect(parseConfig(withPatch({ pidFile: '/run/smacks-proxy/smacks-proxy.pid' }), BASE).pidFile).toBe(
      '/run/smacks-proxy/smacks-proxy.pid',
    );
    expect(parseConfig(minimal(), BASE).pidFile).toBeUndefined();
  });
});

describe('parseConfig: result', () => {
  it('is deeply frozen', () => {
    const config = parseConfig(
      withPatch({
        tls: { certificates: [{ cert: 'a.pem', key: 'a.key', domains: ['a.example'] }] },
        listeners: [{ type: 'websocket', port: 5443, allowedOrigins: ['https://chat.example.org'] }],
      }),
      BASE,
    );
    const frozen: unknown[] = [
      config,
      config.listeners,
      config.listeners[0],
      (config.listeners[0] as WebSocketListenerConfig).allowedOrigins,
      config.tls,
      config.tls.certificates,
      config.tls.certificates[0],
      config.tls.certificates[0]?.domains,
      config.domains,
      config.domains.localhost,
      config.domains.localhost?.upstream,
      config.limits,
      config.streamManagement,
      config.log,
    ];
    for (const value of frozen) expect(Object.isFrozen(value)).toBe(true);
    expect(() => {
      (config.limits as { maxDepth: number }).maxDepth = 1;
    }).toThrow(TypeError);
    expect(() => {
      (config.listeners as unknown[]).push({});
    }).toThrow(TypeError);
  });

  it('finds domains case-insensitively and never through inherited keys', () => {
    const config = parseConfig(minimal(), BASE);
    expect(findDomain(config, 'localhost')?.upstream.host).toBe('127.0.0.1');
    expect(findDomain(config, 'LocalHost.')?.upstream.host).toBe('127.0.0.1');
    expect(findDomain(config, 'example.org')).toBeUndefined();
    expect(findDomain(config, 'constructor')).toBeUndefined();
    expect(findDomain(config, '__proto__')).toBeUndefined();
    expect(Object.getPrototypeOf(config.domains)).toBeNull();
  });
});

interface InvalidCase {
  readonly name: string;
  readonly raw: unknown;
  readonly problems: readonly string[];
}

const invalidCases: readonly InvalidCase[] = [
  // --- not an object, missing required keys
  { name: 'not an object', raw: 'listeners', problems: ['/: must be object'] },
  { name: 'null', raw: null, problems: ['/: must be object'] },
  {
    name: 'empty object',
    raw: {},
    problems: ["/: missing required key 'listeners'", "/: missing required key 'domains'"],
  },
  {
    name: 'listener without port',
    raw: withPatch({ listeners: [{ type: 'starttls' }] }),
    problems: ["/listeners/0: missing required key 'port'"],
  },
  {
    name: 'listener without type',
    raw: withPatch({ listeners: [{ port: 5222 }] }),
    problems: ["/listeners/0: missing required key 'type'"],
  },
  {
    name: 'domain without upstream, upstream without host',
    raw: withPatch({ domains: { 'a.example': {}, 'b.example': { upstream: { port: 5222 } } } }),
    problems: ["/domains/a.example: missing required key 'upstream'", "/domains/b.example/upstream: missing required key 'host'"],
  },
  {
    name: 'certificate without key',
    raw: withPatch({ tls: { certificates: [{ cert: 'a.pem' }] } }),
    problems: ["/tls/certificates/0: missing required key 'key'"],
  },
  {
    name: 'empty listeners and domains',
    raw: { listeners: [], domains: {} },
    problems: ['/listeners: must NOT have fewer than 1 items', '/domains: must NOT have fewer than 1 properties'],
  },

  // --- wrong types
  {
    name: 'port as a string',
    raw: withPatch({ listeners: [{ type: 'starttls', port: '5222' }] }),
    problems: ['/listeners/0/port: must be integer'],
  },
  {
    name: 'fractional count',
    raw: withPatch({ limits: { maxDepth: 10.5 }, streamManagement: { maxQueueStanzas: 99.9 } }),
    problems: ['/limits/maxDepth: must be integer', '/streamManagement/maxQueueStanzas: must be integer'],
  },
  {
    name: 'section of the wrong type',
    raw: withPatch({ limits: [], log: 'debug', tls: { selfSigned: 'yes' } }),
    problems: ['/tls/selfSigned: must be boolean', '/limits: must be object', '/log: must be object'],
  },
  {
    name: 'listeners not an array',
    raw: withPatch({ listeners: { type: 'starttls', port: 5222 } }),
    problems: ['/listeners: must be array'],
  },

  // --- enums and patterns
  {
    name: 'unknown listener type',
    raw: withPatch({ listeners: [{ type: 'bosh', port: 5280 }] }),
    problems: ['/listeners/0/type: must be one of "starttls", "directtls", "websocket"'],
  },
  {
    name: 'unknown enum values',
    raw: withPatch({
      tls: { minVersion: 'TLSv1.1' },
      domains: { localhost: { upstream: { host: 'x', security: 'ssl' } } },
      streamManagement: { expiryPolicy: 'keep' },
      log: { level: 'verbose', format: 'text' },
    }),
    problems: [
      '/tls/minVersion: must be one of "TLSv1.2", "TLSv1.3"',
      '/domains/localhost/upstream/security: must be one of "plain", "starttls", "tls"',
      '/streamManagement/expiryPolicy: must be one of "bounce", "drop"',
      '/log/level: must be one of "fatal", "error", "warn", "info", "debug", "trace"',
      '/log/format: must be one of "auto", "json", "pretty"',
    ],
  },
  {
    name: 'domain names that are not lowercase host names',
    raw: withPatch({ domains: { 'Example.org': { upstream: { host: 'x' } }, 'a_b.example': { upstream: { host: 'x' } } } }),
    problems: ["/domains: key 'Example.org' must be a lowercase host name", "/domains: key 'a_b.example' must be a lowercase host name"],
  },
  {
    name: 'websocket path, origin and certificate domain formats',
    raw: withPatch({
      listeners: [{ type: 'websocket', port: 5443, path: 'xmpp', allowedOrigins: ['https://chat.example.org/'] }],
      tls: { certificates: [{ cert: 'a', key: 'b', domains: ['*.*.example.org'] }] },
    }),
    problems: [
      "/listeners/0/path: must be a URL path starting with '/', without query, fragment or spaces",
      '/listeners/0/allowedOrigins/0: must be an origin as browsers send it: lowercase scheme://host[:port], no path or trailing slash',
      "/tls/certificates/0/domains/0: must be a lowercase host name, or '*.' followed by one",
    ],
  },

  // --- out of range
  {
    name: 'port above 65535',
    raw: withPatch({ listeners: [{ type: 'starttls', port: 70000 }] }),
    problems: ['/listeners/0/port: must be <= 65535'],
  },
  {
    name: 'negative port, upstream port 0',
    raw: withPatch({
      listeners: [{ type: 'directtls', port: -1 }],
      domains: { localhost: { upstream: { host: 'x', port: 0 } } },
    }),
    problems: ['/listeners/0/port: must be >= 0', '/domains/localhost/upstream/port: must be >= 1'],
  },
  {
    name: 'limits out of range',
    raw: withPatch({ limits: { maxStanzaBytes: 1024, maxDepth: 2000, authTimeoutSeconds: 0, maxSessions: 0 } }),
    problems: [
      '/limits/maxStanzaBytes: must be >= 4096',
      '/limits/maxDepth: must be <= 1024',
      '/limits/authTimeoutSeconds: must be >= 0.05',
      '/limits/maxSessions: must be >= 1',
    ],
  },
  {
    name: 'durations out of range',
    raw: withPatch({
      streamManagement: { hibernationSeconds: -1, maxAckDelaySeconds: 0.01, upstreamKeepaliveSeconds: 0 },
      shutdownGraceSeconds: 301,
      domains: { localhost: { upstream: { host: 'x', connectTimeoutSeconds: 0 } } },
    }),
    problems: [
      '/domains/localhost/upstream/connectTimeoutSeconds: must be >= 0.05',
      '/streamManagement/hibernationSeconds: must be >= 0',
      '/streamManagement/maxAckDelaySeconds: must be >= 0.05',
      '/streamManagement/upstreamKeepaliveSeconds: must be >= 0.05',
      '/shutdownGraceSeconds: must be <= 300',
    ],
  },

  // --- unknown keys at several levels
  {
    name: 'unknown top-level key',
    raw: withPatch({ listener: [] }),
    problems: ["/: unknown key 'listener'"],
  },
  {
    name: 'misspelt limit',
    raw: withPatch({ limits: { maxStanzaByte: 100000 } }),
    problems: ["/limits: unknown key 'maxStanzaByte'"],
  },
  {
    name: 'unknown keys in nested sections',
    raw: withPatch({
      tls: { certificates: [{ cert: 'a', key: 'b', chain: 'c' }], cipherSuites: 'HIGH' },
      domains: { localhost: { upstream: { host: 'x', tls: true }, admin: 'me' } },
      streamManagement: { resumeTimeout: 5 },
      log: { file: '/var/log/x' },
    }),
    problems: [
      "/tls: unknown key 'cipherSuites'",
      "/tls/certificates/0: unknown key 'chain'",
      "/domains/localhost: unknown key 'admin'",
      "/domains/localhost/upstream: unknown key 'tls'",
      "/streamManagement: unknown key 'resumeTimeout'",
      "/log: unknown key 'file'",
    ],
  },
  {
    name: '__proto__ keys, as JSON.parse makes them, are unknown keys and never prototypes',
    raw: JSON.parse(
      '{"__proto__": {"x": 1}, "listeners": [{"type": "starttls", "port": 5222}], "tls": {"selfSigned": true},' +
        ' "domains": {"__proto__": {"upstream": {"host": "x"}}, "localhost": {"upstream": {"host": "x"}}}}',
    ) as unknown,
    problems: ["/: unknown key '__proto__'", "/domains: key '__proto__' must be a lowercase host name"],
  },
  {
    name: 'websocket keys on a TCP listener',
    raw: withPatch({ listeners: [{ type: 'starttls', port: 5222, path: '/xmpp', tls: true }] }),
    problems: ["/listeners/0: unknown key 'path'", "/listeners/0: unknown key 'tls'"],
  },

  // --- cross-field rules
  {
    name: 'TLS listener without a certificate source',
    raw: withPatch({
      listeners: [
        { type: 'starttls', port: 5222 },
        { type: 'websocket', port: 5280, tls: false },
        { type: 'websocket', port: 5443 },
      ],
      tls: { selfSigned: false },
    }),
    problems: [
      '/listeners/0: a starttls listener needs a TLS certificate: add entries to tls.certificates or set tls.selfSigned to true',
      '/listeners/2: a websocket listener needs a TLS certificate: add entries to tls.certificates or set tls.selfSigned to true',
    ],
  },
  {
    name: 'duplicate host and port',
    raw: withPatch({
      listeners: [
        { type: 'starttls', host: '127.0.0.1', port: 5222 },
        { type: 'directtls', host: '127.0.0.1', port: 5222 },
        { type: 'starttls', host: '::1', port: 5222 },
        { type: 'websocket', host: '[::1]', port: 5222 },
        { type: 'starttls', host: '127.0.0.1', port: 0 },
        { type: 'directtls', host: '127.0.0.1', port: 0 },
      ],
    }),
    problems: [
      '/listeners/1: same host and port (127.0.0.1 5222) as /listeners/0',
      '/listeners/3: same host and port ([::1] 5222) as /listeners/2',
    ],
  },
  {
    name: 'admin listener on a client listener',
    raw: withPatch({
      listeners: [{ type: 'starttls', host: '::1', port: 5222 }],
      admin: { host: '[::1]', port: 5222 },
    }),
    problems: ['/admin: same host and port ([::1] 5222) as /listeners/0'],
  },
  {
    name: 'webhook URL with a password',
    raw: withPatch({ webhook: { url: 'https://user:secret@push.example/hook', secretFile: 'webhook.secret' } }),
    problems: ['/webhook/url: must be an http:// or https:// URL without spaces, user name or password'],
  },
  {
    name: 'admin listener without a port',
    raw: withPatch({ admin: { host: '127.0.0.1', tokenFile: '' } }),
    problems: ["/admin: missing required key 'port'", '/admin/tokenFile: must NOT have fewer than 1 characters'],
  },
  {
    name: 'maxStanzaBytesPreAuth above maxStanzaBytes',
    raw: withPatch({ limits: { maxStanzaBytes: 8192, maxStanzaBytesPreAuth: 16384 } }),
    problems: ['/limits/maxStanzaBytesPreAuth: 16384 exceeds limits.maxStanzaBytes 8192'],
  },
  {
    name: 'maxHibernationSeconds below hibernationSeconds',
    raw: withPatch({ streamManagement: { hibernationSeconds: 600 } }),
    problems: ['/streamManagement/maxHibernationSeconds: 300 is less than streamManagement.hibernationSeconds 600'],
  },
  {
    name: 'queue limits that contradict each other',
    raw: withPatch({
      limits: { maxStanzaBytes: 2097152 },
      streamManagement: { maxUnackedStanzas: 10, maxQueueStanzas: 10, globalQueueBytes: 4096 },
    }),
    problems: [
      '/streamManagement/maxUnackedStanzas: 10 is not less than streamManagement.maxQueueStanzas 10: the queue would overflow before an ack is requested',
      '/streamManagement/maxQueueBytes: 1048576 is less than limits.maxStanzaBytes 2097152: a stanza of the largest allowed size could not be queued',
      '/streamManagement/maxQueueBytes: 1048576 exceeds streamManagement.globalQueueBytes 4096',
    ],
  },
  {
    name: 'a session queue larger than its account or address share',
    raw: withPatch({ streamManagement: { maxQueueBytes: 16777216, maxQueueBytesPerAccount: 8388608, maxQueueBytesPerAddress: 4194304 } }),
    problems: [
      '/streamManagement/maxQueueBytes: 16777216 exceeds streamManagement.maxQueueBytesPerAccount 8388608',
      '/streamManagement/maxQueueBytes: 16777216 exceeds streamManagement.maxQueueBytesPerAddress 4194304',
    ],
  },
  {
    name: 'defaultCertificate out of range',
    raw: withPatch({ tls: { certificates: [{ cert: 'a', key: 'b' }], defaultCertificate: 1 } }),
    problems: ['/tls/defaultCertificate: index 1 is out of range: tls.certificates has 1 entry'],
  },
  {
    name: 'trusted proxy that is not an IP address',
    raw: withPatch({ listeners: [{ type: 'websocket', port: 5443, trustedProxies: ['127.0.0.1', 'proxy.lan', '::1'] }] }),
    problems: [
      '/listeners/0/trustedProxies/1: "proxy.lan" is not an IP address or CIDR range: \'proxy.lan\' is not an IPv4 or IPv6 address',
    ],
  },
  {
    name: 'PROXY protocol sources that are not addresses, and an unknown upstream version',
    raw: withPatch({
      listeners: [
        { type: 'directtls', port: 5223, proxyProtocolFrom: ['10.0.0.0/24', 'lb.lan', '10.0.0.0/40'] },
        { type: 'websocket', port: 5443, proxyProtocolFrom: ['10.0.0.1', 'fd00::/200'] },
      ],
      domains: { localhost: { upstream: { host: '127.0.0.1', proxyProtocol: 'v3' } } },
    }),
    problems: [
      '/domains/localhost/upstream/proxyProtocol: must be one of "off", "v1", "v2"',
      '/listeners/0/proxyProtocolFrom/1: "lb.lan" is not an IP address or CIDR range: \'lb.lan\' is not an IPv4 or IPv6 address',
      '/listeners/0/proxyProtocolFrom/2: "10.0.0.0/40" is not an IP address or CIDR range: prefix \'/40\' is not a whole number of bits in 0..32 for an IPv4 address',
      '/listeners/1/proxyProtocolFrom/1: "fd00::/200" is not an IP address or CIDR range: prefix \'/200\' is not a whole number of bits in 0..128 for an IPv6 address',
    ],
  },
  {
    name: 'trusted proxy CIDR ranges with a bad prefix or address',
    raw: withPatch({
      listeners: [
        {
          type: 'websocket',
          port: 5443,
          trustedProxies: [
            '10.0.0.0/8',
            '10.0.0.0/33',
            'fd00::/129',
            '192.0.2.0/',
            '192.0.2.0/-1',
            '192.0.2.0/8.5',
            'proxy.lan/24',
            '10.0.0.0/8/8',
          ],
        },
      ],
    }),
    problems: [
      '/listeners/0/trustedProxies/1: "10.0.0.0/33" is not an IP address or CIDR range: prefix \'/33\' is not a whole number of bits in 0..32 for an IPv4 address',
      '/listeners/0/trustedProxies/2: "fd00::/129" is not an IP address or CIDR range: prefix \'/129\' is not a whole number of bits in 0..128 for an IPv6 address',
      '/listeners/0/trustedProxies/3: "192.0.2.0/" is not an IP address or CIDR range: prefix \'/\' is not a whole number of bits in 0..32 for an IPv4 address',
      '/listeners/0/trustedProxies/4: "192.0.2.0/-1" is not an IP address or CIDR range: prefix \'/-1\' is not a whole number of bits in 0..32 for an IPv4 address',
      '/listeners/0/trustedProxies/5: "192.0.2.0/8.5" is not an IP address or CIDR range: prefix \'/8.5\' is not a whole number of bits in 0..32 for an IPv4 address',
      '/listeners/0/trustedProxies/6: "proxy.lan/24" is not an IP address or CIDR range: \'proxy.lan\' is not an IPv4 or IPv6 address',
      '/listeners/0/trustedProxies/7: "10.0.0.0/8/8" is not an IP address or CIDR range: prefix \'/8/8\' is not a whole number of bits in 0..32 for an IPv4 address',
    ],
  },

  // --- several problems at once: all reported, schema and cross-field alike
  {
    name: 'several problems at once',
    raw: {
      $schema: 42,
      listeners: [
        { type: 'starttls', port: 70000, path: '/x' },
        { type: 'websocket', port: 5443, pingIntervalSeconds: 0 },
      ],
      tls: { selfSigned: false },
      domains: { localhost: { upstream: { host: 5200 } } },
      limits: { maxStanzaByte: 1, maxStanzaBytesPreAuth: 300000 },
      streamManagement: { maxHibernationSeconds: 10 },
      logging: {},
    },
    problems: [
      "/: unknown key 'logging'",
      '/$schema: must be string',
      "/listeners/0: unknown key 'path'",
      '/listeners/0/port: must be <= 65535',
      '/listeners/1/pingIntervalSeconds: must be >= 0.05',
      '/domains/localhost/upstream/host: must be string',
      "/limits: unknown key 'maxStanzaByte'",
      '/listeners/0: a starttls listener needs a TLS certificate: add entries to tls.certificates or set tls.selfSigned to true',
      '/listeners/1: a websocket listener needs a TLS certificate: add entries to tls.certificates or set tls.selfSigned to true',
      '/limits/maxStanzaBytesPreAuth: 300000 exceeds limits.maxStanzaBytes 262144',
      '/streamManagement/maxHibernationSeconds: 10 is less than streamManagement.hibernationSeconds 300',
    ],
  },
];

describe('parseConfig: invalid configs', () => {
  it.each(invalidCases)('$name', ({ raw, problems }) => {
    expect(problemsOf(raw)).toEqual(problems);
  });

  it('puts every problem in the error message', () => {
    try {
      parseConfig({}, BASE);
      expect.unreachable('an empty config must be refused');
    } catch (err) {
      expect((err as Error).message).toBe(
        "invalid config (2 problems):\n  /: missing required key 'listeners'\n  /: missing required key 'domains'",
      );
    }
  });

  it('refuses values that are not JSON data', () => {
    expect(problemsOf({ listeners: [], domains: {}, f: () => 1 })).toEqual(['/: must be JSON data']);
  });
});

describe('describeConfig', () => {
  it('prints the effective config as JSON with every passphrase elided', () => {
    const config = parseConfig(
      withPatch({
        tls: {
          certificates: [
            { cert: 'a.pem', key: 'a.key', passphrase: 'hunter2' },
            { cert: 'b.pem', key: 'b.key', passphrase: 'correct horse' },
          ],
        },
      }),
      BASE,
    );
    const text = describeConfig(config);
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('correct horse');
    const shown = JSON.parse(text) as { tls: { certificates: { passphrase: string }[] }; limits: unknown };
    expect(shown.tls.certificates.map((c) => c.passphrase)).toEqual(['<elided>', '<elided>']);
    expect(shown.limits).toEqual(config.limits);
    expect(text).toContain('\n  "listeners": [');
    // The config itself keeps the secret.
    expect(config.tls.certificates[0]?.passphrase).toBe('hunter2');
  });
});

describe('loadConfig', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'smacks-config-'));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads, validates and resolves paths against the file directory', async () => {
    const file = join(dir, 'proxy.json');
    const raw = withPatch({ tls: { certificates: [{ cert: 'tls/cert.pem', key: 'tls/key.pem' }] } });
    // A byte order mark, as some editors write, is accepted.
    await writeFile(file, `\uFEFF${JSON.stringify(raw)}`);
    const config = await loadConfig(file);
    expect(config.tls.certificates[0]).toEqual({ cert: join(dir, 'tls/cert.pem'), key: join(dir, 'tls/key.pem') });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('reports a missing file as CONFIG_READ with the path and the cause', async () => {
    const file = join(dir, 'absent.json');
    const err = await loadConfig(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe(ErrorCode.CONFIG_READ);
    expect((err as ConfigError).message).toContain(file);
    expect((err as ConfigError).message).toContain('ENOENT');
    expect(((err as ConfigError).cause as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  it('reports JSON syntax errors as CONFIG_READ with the path', async () => {
    const file = join(dir, 'broken.json');
    await writeFile(file, '{ "listeners": [ }');
    const err = await loadConfig(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe(ErrorCode.CONFIG_READ);
    expect((err as ConfigError).message).toContain(`config file ${file} is not valid JSON`);
    expect((err as ConfigError).cause).toBeInstanceOf(SyntaxError);
  });

  it('reports an invalid config as CONFIG_INVALID with the path and every problem', async () => {
    const file = join(dir, 'invalid.json');
    await writeFile(file, JSON.stringify(withPatch({ limits: { maxDepth: 1 }, extra: true })));
    const err = await loadConfig(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe(ErrorCode.CONFIG_INVALID);
    expect((err as ConfigError).message).toContain(file);
    expect((err as ConfigError).problems).toEqual(["/: unknown key 'extra'", '/limits/maxDepth: must be >= 4']);
  });

  it('accepts the repository example proxy.config.json', async () => {
    const config = await loadConfig(join(repoRoot(), 'proxy.config.json'));
    expect(config.listeners).toEqual([
      { type: 'starttls', host: '127.0.0.1', port: 5222, proxyProtocolFrom: [] },
      { type: 'directtls', host: '127.0.0.1', port: 5223, proxyProtocolFrom: [] },
    ]);
    expect(config.tls.selfSigned).toBe(true);
    expect(Object.keys(config.domains)).toEqual(['localhost']);
    expect(config.domains.localhost?.upstream).toMatchObject({ host: '127.0.0.1', port: 5200, security: 'plain' });
    expect(config.log.level).toBe('info');
  });
});

/** Every schema node that describes a value, with its JSON pointer inside the schema. */
function schemaNodes(node: unknown, at = '#'): Array<{ at: string; node: Json }> {
  if (typeof node !== 'object' || node === null || Array.isArray(node)) return [];
  const n = node as Json;
  const found = [{ at, node: n }];
  for (const [name, child] of Object.entries((n.properties as Json | undefined) ?? {})) {
    found.push(...schemaNodes(child, `${at}/properties/${name}`));
  }
  if (typeof n.additionalProperties === 'object') found.push(...schemaNodes(n.additionalProperties, `${at}/additionalProperties`));
  if (n.items !== undefined) found.push(...schemaNodes(n.items, `${at}/items`));
  ((n.oneOf as unknown[] | undefined) ?? []).forEach((branch, i) => found.push(...schemaNodes(branch, `${at}/oneOf/${i}`)));
  return found;
}

describe('proxy.schema.json', () => {
  const nodes = schemaNodes(schema);

  it('describes every key', () => {
    const undocumented = nodes.filter(({ node }) => typeof node.description !== 'string' || node.description.length < 20);
    expect(undocumented.map(({ at }) => at)).toEqual([]);
  });

  it('closes every object to unknown keys', () => {
    const open = nodes.filter(
      ({ node }) =>
        node.type === 'object' && node.properties !== undefined && node.oneOf === undefined && node.additionalProperties !== false,
    );
    expect(open.map(({ at }) => at)).toEqual([]);
  });

  it('gives every optional key a default, except the documented optional ones', () => {
    const optionalWithoutDefault: string[] = [];
    for (const { at, node } of nodes) {
      const required = (node.required as string[] | undefined) ?? [];
      for (const [name, child] of Object.entries((node.properties as Record<string, Json> | undefined) ?? {})) {
        if (!required.includes(name) && child.default === undefined && node.oneOf === undefined) {
          optionalWithoutDefault.push(`${at}/properties/${name}`);
        }
      }
    }
    expect(optionalWithoutDefault.sort()).toEqual(
      [
        '#/properties/$schema',
        '#/properties/tls/properties/certificates/items/properties/passphrase',
        '#/properties/tls/properties/certificates/items/properties/domains',
        '#/properties/domains/additionalProperties/properties/upstream/properties/serverName',
        '#/properties/admin',
        '#/properties/admin/properties/tokenFile',
        '#/properties/webhook',
        '#/properties/pidFile',
      ].sort(),
    );
  });

  it('is the schema the example config points editors to', async () => {
    const example = JSON.parse(await readFile(join(repoRoot(), 'proxy.config.json'), 'utf8')) as { $schema: string };
    expect(example.$schema).toBe('./src/config/proxy.schema.json');
    const onDisk = JSON.parse(await readFile(resolve(repoRoot(), example.$schema), 'utf8')) as unknown;
    expect(onDisk).toEqual(schema);
  });
});
