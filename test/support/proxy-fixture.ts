import { pino } from 'pino';
import { parseConfig } from '../../src/config/config.js';
import { Proxy, type ProxyOptions } from '../../src/proxy.js';
import { startLegacyServer, type LegacyServer, type LegacyServerKind, type LegacyUser } from './legacy-server.js';
import { RawClient, type RawTransport } from './raw-client.js';

/** Accounts every fixture registers on its legacy Prosody. */
export const USERS = {
  alice: { username: 'alice', password: 'alice-secret' },
  bob: { username: 'bob', password: 'bob-secret' },
  carol: { username: 'carol', password: 'carol-secret' },
} as const satisfies Record<string, LegacyUser>;

export interface FixtureOptions {
  /** Merged into the proxy config's `limits`. */
  readonly limits?: Record<string, unknown>;
  /** Merged into the proxy config's `streamManagement`. */
  readonly streamManagement?: Record<string, unknown>;
  /** Extra served domains (e.g. one whose upstream is down), merged into `domains`. */
  readonly domains?: Record<string, unknown>;
  /** Merged into both TCP listeners' configs (e.g. `proxyProtocolFrom`). */
  readonly tcp?: Record<string, unknown>;
  /** Merged into the websocket listener's config (e.g. `allowedOrigins`, `pingIntervalSeconds`). */
  readonly websocket?: Record<string, unknown>;
  readonly proxyOptions?: ProxyOptions;
  /** The proxy config's `admin` section (host 127.0.0.1 and an ephemeral port unless given); absent = no admin listener. */
  readonly admin?: Record<string, unknown>;
  /** The proxy config's `webhook` section; absent = none. */
  readonly webhook?: Record<string, unknown>;
  /** Reuse a running legacy server instead of starting one. */
  readonly server?: LegacyServer;
  /** Which legacy server to start when `server` is not given. Default 'prosody'. */
  readonly kind?: LegacyServerKind;
}

/** A legacy server (no XEP-0198) with the proxy in front of it, in this process, on loopback. */
export interface ProxyFixture {
  readonly server: LegacyServer;
  readonly proxy: Proxy;
  readonly domain: string;
  /** The bound port of each listener: STARTTLS, direct TLS, and wss:// on `websocketPath`. */
  readonly ports: Readonly<Record<RawTransport, number>>;
  /** The URL path of the WebSocket endpoint. */
  readonly websocketPath: string;
  /** The admin listener's port, when the fixture has one. */
  readonly adminPort: number | undefined;
  /** A TLS connection to the proxy (over WebSocket: wss://, subprotocol xmpp) with the stream opened (post-TLS features received). */
  connect(
    transport: RawTransport,
    options?: { timeoutMs?: number; openStream?: boolean; headers?: Record<string, string> },
  ): Promise<RawClient>;
  /** connect + login (PLAIN) + bind; with `sm`, also `<enable resume='true'/>`. */
  login(transport: RawTransport, user: LegacyUser, options?: { resource?: string; sm?: boolean }): Promise<LoggedIn>;
  stop(): Promise<void>;
}

export interface LoggedIn {
  readonly client: RawClient;
  readonly jid: string;
  /** The SM-ID when stream management was enabled with resumption. */
  readonly smId: string | undefined;
}

/**
 * Proxy logs are silent unless SMACKS_TEST_LOG names a level (`SMACKS_TEST_LOG=debug npx vitest …`).
 */
function testLogger() {
  const level = process.env.SMACKS_TEST_LOG ?? 'silent';
  return pino({ level });
}

export async function startProxyFixture(options: FixtureOptions = {}): Promise<ProxyFixture> {
  const server = options.server ?? (await startLegacyServer(options.kind ?? 'prosody', { users: Object.values(USERS) }));
  const config = parseConfig(
    {
      listeners: [
        { type: 'starttls', host: '127.0.0.1', port: 0, ...options.tcp },
        { type: 'directtls', host: '127.0.0.1', port: 0, ...options.tcp },
        { type: 'websocket', host: '127.0.0.1', port: 0, tls: true, ...options.websocket },
      ],
      tls: { selfSigned: true },
      domains: { [server.domain]: { upstream: { host: server.host, port: server.c2sPort, connectTimeoutSeconds: 2 } }, ...options.domains },
      limits: { authTimeoutSeconds: 10, ...options.limits },
      streamManagement: { ...options.streamManagement },
      shutdownGraceSeconds: 1,
      ...(options.admin === undefined ? {} : { admin: { host: '127.0.0.1', port: 0, ...options.admin } }),
      ...(options.webhook === undefined ? {} : { webhook: options.webhook }),
    },
    process.cwd(),
  );
  const proxy = new Proxy(config, testLogger(), { skipProbe: true, ...options.proxyOptions });
  const bound = await proxy.start();
  const portOf = (type: RawTransport): number => {
    const listener = bound.find((b) => b.type === type);
    if (listener === undefined) throw new Error(`no ${type} listener bound`);
    return listener.port;
  };
  const ports = { starttls: portOf('starttls'), directtls: portOf('directtls'), websocket: portOf('websocket') };
  const websocketListener = config.listeners.find((listener) => listener.type === 'websocket');
  if (websocketListener?.type !== 'websocket') throw new Error('no websocket listener configured');
  const websocketPath = websocketListener.path;
  const adminPort = bound.find((b) => b.type === 'admin')?.port;
  const domain = server.domain;
  const clients: RawClient[] = [];

  const connect: ProxyFixture['connect'] = async (transport, connectOptions = {}) => {
    const client = await RawClient.connect({
      host: '127.0.0.1',
      port: ports[transport],
      transport,
      domain,
      path: websocketPath,
      ...connectOptions,
    });
    clients.push(client);
    return client;
  };

  return {
    server,
    proxy,
    domain,
    ports,
    websocketPath,
    adminPort,
    connect,
    async login(transport, user, loginOptions = {}) {
      const client = await connect(transport);
      const jid = await client.login(
        user.username,
        user.password,
        loginOptions.resource === undefined ? {} : { resource: loginOptions.resource },
      );
      let smId: string | undefined;
      if (loginOptions.sm === true) {
        const enabled = await client.enableSm({ resume: true });
        if (enabled.name !== 'enabled') throw new Error(`stream management refused: ${enabled.toString()}`);
        smId = enabled.attrs.id as string | undefined;
      }
      return { client, jid, smId };
    },
    async stop() {
      for (const client of clients) client.drop();
      await proxy.stop();
      if (options.server === undefined) await server.stop();
    },
  };
}
