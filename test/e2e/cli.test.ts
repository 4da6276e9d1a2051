/**
 * The command line as an operator meets it (README "Set-up": `smacks-proxy [--check] [config-file]`
 * and its exit codes): the built CLI (`node dist/src/cli.js`, built by `npm test` before vitest runs)
 * runs as a child process with a config file written to a temp dir; everything on 127.0.0.1.
 *
 * Shutdown cases put a real legacy Prosody (mod_smacks off) behind the proxy, with a recording TCP
 * relay between them, so that the test sees what the proxy writes to the legacy server and how it
 * ends each upstream connection.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import selfsigned from 'selfsigned';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDnsmasq, type Dnsmasq } from '../support/dnsmasq.js';
import { startProsody, type ProsodyServer } from '../support/prosody.js';
import { USERS } from '../support/proxy-fixture.js';
import { NS, RawClient } from '../support/raw-client.js';
import { findFreePort as unusedPort } from '../support/server-process.js';
import { waitUntil } from '../support/wait.js';
import { CliProcess, cliWorkDir, type Exit } from '../support/cli-process.js';
import { certificate, handshake, renameOver } from '../support/certificates.js';

const STANZA_ERRORS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

/** Exit codes from the README's table. */
const EXIT = { ok: 0, config: 2, startup: 3, forced: 4, noneMatched: 5, dns: 6, unavailable: 69, usage: 64 } as const;

/** How long a short-lived CLI run (`--check`, a refused start) may take. */
const QUICK_RUN_MS = 10_000;
/** How long the proxy may take to log that all its listeners are bound. */
const START_TIMEOUT_MS = 10_000;
/** Slack over `shutdownGraceSeconds` for a clean shutdown (process start-up excluded: it is already running). */
const SHUTDOWN_MARGIN_MS = 1_500;

const scratch = cliWorkDir('smacks-proxy-cli-');

// ---- helpers ---------------------------------------------------------------------------------

let fileCounter = 0;

/** Writes `content` (an object is JSON-encoded) to a fresh file in the temp dir; returns its path. */
async function configFile(content: unknown, name = `config-${++fileCounter}.json`): Promise<string> {
  const path = join(scratch(), name);
  await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return path;
}

/** Runs the CLI to completion. */
async function runCli(
  args: readonly string[],
  expected: string,
  env: Readonly<Record<string, string>> = {},
): Promise<CliProcess & { exit: Exit }> {
  const cli = new CliProcess(args, { cwd: scratch(), env });
  const exit = await cli.expectExit(QUICK_RUN_MS, expected);
  return Object.assign(cli, { exit });
}

/** Starts the proxy with `config` and waits until every listener is bound; returns the bound ports by listener type. */
async function startCli(config: Record<string, unknown>): Promise<{ cli: CliProcess; ports: Record<string, number> }> {
  const cli = new CliProcess([await configFile(config)], { cwd: scratch() });
  const listenerCount = (config.listeners as unknown[]).length;
  try {
    await waitUntil(
      () => cli.hasExited || cli.logLines.filter((line) => line.msg === 'listening').length === listenerCount,
      `${listenerCount} 'listening' log lines`,
      START_TIMEOUT_MS,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; ${cli.describe()}`, { cause: err });
  }
  if (cli.hasExited) throw new Error(`expected the proxy to keep running after start-up; ${cli.describe()}`);
  const ports: Record<string, number> = {};
  for (const line of cli.logLines.filter((l) => l.msg === 'listening')) ports[String(line.type)] = Number(line.port);
  return { cli, ports };
}

/** Resolves true when a TCP connect to the port is refused, false when it is accepted; bounded. */
function connectRefused(port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolveProbe, reject) => {
    const socket = netConnect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`expected a TCP connect to 127.0.0.1:${port} to be accepted or refused within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolveProbe(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ECONNREFUSED') resolveProbe(true);
      else reject(err);
    });
  });
}

/** One connection through the {@link UpstreamSpy}: what the proxy wrote, and how it ended its side. */
interface SpiedConnection {
  /** Bytes from the proxy to the legacy server, as text. */
  fromProxy: string;
  /** The proxy ended its side with a FIN. */
  proxyEnded: boolean;
  /** The proxy's side failed (e.g. ECONNRESET): not a clean close. */
  proxyError: string | undefined;
  /** Both sockets are closed. */
  closed: boolean;
}

/**
 * A TCP relay between the proxy and the legacy Prosody that records, per connection, what the
 * proxy sent and whether it closed with a FIN or a reset. Prosody never sees a difference.
 */
class UpstreamSpy {
  readonly connections: SpiedConnection[] = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((fromProxy) => this.relay(fromProxy));
  }

  static async start(target: { host: string; port: number }): Promise<UpstreamSpy> {
    const spy = new UpstreamSpy(target);
    await new Promise<void>((resolveListen) => spy.server.listen(0, '127.0.0.1', resolveListen));
    return spy;
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  /** The connections of sessions (those that carried SASL), leaving out the start-up probe. */
  sessionConnections(): SpiedConnection[] {
    return this.connections.filter((c) => c.fromProxy.includes(`xmlns='${NS.sasl}'`) || c.fromProxy.includes(`xmlns="${NS.sasl}"`));
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolveClose) => this.server.close(() => resolveClose()));
  }

  private relay(fromProxy: Socket): void {
    const record: SpiedConnection = { fromProxy: '', proxyEnded: false, proxyError: undefined, closed: false };
    this.connections.push(record);
    const toServer = netConnect(this.target);
    for (const socket of [fromProxy, toServer]) {
      this.sockets.add(socket);
      socket.once('close', () => {
        this.sockets.delete(socket);
        record.closed = fromProxy.destroyed && toServer.destroyed;
      });
    }
    fromProxy.on('data', (chunk: Buffer) => {
      record.fromProxy += chunk.toString('utf8');
      toServer.write(chunk);
    });
    toServer.on('data', (chunk: Buffer) => fromProxy.write(chunk));
    fromProxy.once('end', () => {
      record.proxyEnded = true;
      toServer.end();
    });
    toServer.once('end', () => fromProxy.end());
    fromProxy.once('error', (err) => {
      record.proxyError = err.message;
      toServer.destroy();
    });
    toServer.once('error', () => fromProxy.destroy());
  }
}

/** A fresh self-signed EC certificate for `name` (a DNS name), PEM. */
// ---- --check ---------------------------------------------------------------------------------

describe('--check', () => {
  it('exits 0 and prints the effective config: defaults filled, paths resolved, the passphrase elided', async () => {
    const secret = 'correct horse battery staple';
    // The certificates are loaded and matched, as at start-up (the passphrase does not matter to an unencrypted key).
    const pems = await certificate();
    await mkdir(join(scratch(), 'certs'), { recursive: true });
    await writeFile(join(scratch(), 'certs/fullchain.pem'), pems.cert);
    await writeFile(join(scratch(), 'certs/privkey.pem'), pems.key);
    const path = await configFile({
      $schema: './src/config/proxy.schema.json',
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 5223 }],
      tls: { certificates: [{ cert: 'certs/fullchain.pem', key: 'certs/privkey.pem', passphrase: secret }] },
      domains: { localhost: { upstream: { host: '127.0.0.1' } } },
    });
    const run = await runCli(['--check', path], 'exit 0 after --check on a valid config');

    expect(run.exit, run.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(run.stdout).not.toContain(secret);
    expect(run.stderr).not.toContain(secret);
    const effective = JSON.parse(run.stdout) as Record<string, any>;
    expect(effective.tls.certificates).toEqual([
      { cert: join(scratch(), 'certs/fullchain.pem'), key: join(scratch(), 'certs/privkey.pem'), passphrase: '<elided>' },
    ]);
    expect(effective.tls).toMatchObject({ defaultCertificate: 0, selfSigned: false, minVersion: 'TLSv1.2' });
    expect(effective.domains.localhost.upstream).toEqual({
      host: '127.0.0.1',
      port: 5222,
      security: 'plain',
      connectTimeoutSeconds: 10,
      rejectUnauthorized: true,
      proxyProtocol: 'off',
    });
    expect(effective.limits).toEqual({
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
    });
    expect(effective.streamManagement).toMatchObject({ hibernationSeconds: 300, expiryPolicy: 'bounce', maxQueueStanzas: 1000 });
    expect(effective.shutdownGraceSeconds).toBe(5);
    expect(effective.log).toEqual({ level: 'info', format: 'auto' });
    // `$schema` is for editors; it is not part of the effective config.
    expect(effective).not.toHaveProperty('$schema');
    expect(run.stderr).toContain('valid');
  });

  it.each([
    ['a certificate file that does not exist', 'missing.pem', /missing\.pem/],
    ['a key that belongs to another certificate', 'other-key.pem', /key|match/i],
  ])('exits 3 for %s, as the start would', async (_label, keyFile, message) => {
    const [mine, other] = [await certificate(), await certificate()];
    const dir = join(scratch(), 'check-certs');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'fullchain.pem'), mine.cert);
    await writeFile(join(dir, 'other-key.pem'), other.key);
    const path = await configFile({
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 5223 }],
      tls: { certificates: [{ cert: join(dir, 'fullchain.pem'), key: join(dir, keyFile) }] },
      domains: { localhost: { upstream: { host: '127.0.0.1' } } },
    });
    const run = await runCli(['--check', path], 'exit 3 after --check with a bad certificate');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.startup, signal: null });
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('PROXY_ERR_TLS_CREDENTIALS');
    expect(run.stderr).toMatch(message);
  });

  it('warns about a certificate file without its intermediate (cert.pem for fullchain.pem); not about the full chain', async () => {
    const ca = await selfsigned.generate([{ name: 'commonName', value: 'Test Intermediate CA' }], {
      keyType: 'ec',
      algorithm: 'sha256',
      extensions: [{ name: 'basicConstraints', cA: true }],
    });
    const leaf = await selfsigned.generate([{ name: 'commonName', value: 'localhost' }], {
      keyType: 'ec',
      algorithm: 'sha256',
      ca: { key: ca.private, cert: ca.cert },
      extensions: [{ name: 'subjectAltName', altNames: [{ type: 2 as const, value: 'localhost' }] }],
    });
    const dir = join(scratch(), 'chain');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'cert.pem'), leaf.cert);
    await writeFile(join(dir, 'fullchain.pem'), `${leaf.cert.trimEnd()}\n${ca.cert}`);
    await writeFile(join(dir, 'privkey.pem'), leaf.private);
    const check = async (certFile: string) => {
      const path = await configFile({
        listeners: [{ type: 'directtls', host: '127.0.0.1', port: 5223 }],
        tls: { certificates: [{ cert: join(dir, certFile), key: join(dir, 'privkey.pem') }] },
        domains: { localhost: { upstream: { host: '127.0.0.1' } } },
      });
      const run = await runCli(['--check', path], `--check with ${certFile}`);
      expect(run.exit, run.describe()).toEqual({ code: EXIT.ok, signal: null });
      return run.stderr;
    };
    expect(await check('cert.pem')).toContain('without its issuer');
    expect(await check('fullchain.pem')).not.toContain('without its issuer');
  });

  it.each([
    ['an admin token file', { admin: { port: 9180, tokenFile: 'no-such.token' } }, 'PROXY_ERR_ADMIN_TOKEN'],
    ['a webhook secret file', { webhook: { url: 'https://push.example/hook', secretFile: 'no-such.secret' } }, 'PROXY_ERR_WEBHOOK_SECRET'],
  ])('exits 3 for %s that does not exist, as the start would', async (_label, section, code) => {
    const path = await configFile({
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 5223 }],
      tls: { selfSigned: true },
      domains: { localhost: { upstream: { host: '127.0.0.1' } } },
      ...section,
    });
    const run = await runCli(['--check', path], 'exit 3 after --check with a missing secret file');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.startup, signal: null });
    expect(run.stderr).toContain(code);
    expect(run.stderr).toContain('no-such.');
  });

  it('exits 2 and lists every problem of an invalid config with its JSON path', async () => {
    const path = await configFile({
      listeners: [{ type: 'starttls', host: '127.0.0.1', port: 99999 }],
      tls: { selfSigned: true, minVersion: 'TLSv1.1' },
      domains: { localhost: { upstream: { host: '127.0.0.1', security: 'none' } } },
      limits: { maxStanzaByte: 1 },
      streamManagement: { hibernationSeconds: 600, maxHibernationSeconds: 300 },
    });
    const run = await runCli(['--check', path], 'exit 2 after --check on an invalid config');

    expect(run.exit, run.describe()).toEqual({ code: EXIT.config, signal: null });
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('PROXY_ERR_CONFIG_INVALID');
    expect(run.stderr).toContain(path);
    for (const problem of [
      '/listeners/0/port: must be <= 65535',
      '/tls/minVersion: must be one of "TLSv1.2", "TLSv1.3"',
      '/domains/localhost/upstream/security: must be one of "plain", "starttls", "tls"',
      "/limits: unknown key 'maxStanzaByte'",
      '/streamManagement/maxHibernationSeconds: 300 is less than streamManagement.hibernationSeconds 600',
    ]) {
      expect(run.stderr, run.describe()).toContain(problem);
    }
  });

  it.each([
    ['a file that does not exist', async () => join(scratch(), 'missing.json'), /cannot read config file .*missing\.json/],
    [
      'a directory',
      async () => {
        const dir = join(scratch(), 'a-directory.json');
        await mkdir(dir, { recursive: true });
        return dir;
      },
      /cannot read config file .*a-directory\.json/,
    ],
    ['a file that is not JSON', async () => configFile('{ "listeners": [ ', 'truncated.json'), /truncated\.json is not valid JSON/],
    ['an empty file', async () => configFile('', 'empty.json'), /empty\.json is not valid JSON/],
  ] as const)('exits 2 with PROXY_ERR_CONFIG_READ for %s', async (_label, makePath, message) => {
    const run = await runCli(['--check', await makePath()], 'exit 2 for an unreadable config');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.config, signal: null });
    expect(run.stderr).toContain('PROXY_ERR_CONFIG_READ');
    expect(run.stderr).toMatch(message);
  });

  it('exits 2 for an invalid config without --check too, before binding anything', async () => {
    const port = await unusedPort();
    const path = await configFile({ listeners: [{ type: 'starttls', host: '127.0.0.1', port }], domains: {} });
    const run = await runCli([path], 'exit 2 on start with an invalid config');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.config, signal: null });
    expect(run.stderr).toContain('/domains: must NOT have fewer than 1 properties');
    expect(run.stderr).toContain('/listeners/0: a starttls listener needs a TLS certificate');
  });
});

// ---- usage -----------------------------------------------------------------------------------

describe('command-line usage', () => {
  it.each([
    ['an unknown flag', ['--verbose']],
    ['an unknown flag with --check', ['--check', '--port=5222', 'proxy.config.json']],
    ['two config files', ['a.json', 'b.json']],
    ['a value given to --check', ['--check=yes']],
  ])('exits 64 and prints the usage for %s', async (_label, args) => {
    const run = await runCli(args, 'exit 64 for wrong usage');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.usage, signal: null });
    expect(run.stderr).toContain('usage: smacks-proxy [--check] [config-file]');
  });

  it('prints the usage and exits 0 for --help', async () => {
    const run = await runCli(['--help'], 'exit 0 for --help');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(run.stdout).toContain('usage: smacks-proxy [--check] [config-file]');
  });
});

// ---- start-up failures -----------------------------------------------------------------------

describe('start-up failure', () => {
  let held: Server;
  let heldPort: number;

  beforeAll(async () => {
    held = createServer((socket) => socket.destroy());
    await new Promise<void>((resolveListen) => held.listen(0, '127.0.0.1', resolveListen));
    heldPort = (held.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise<void>((resolveClose) => held?.close(() => resolveClose()));
  });

  it('exits 3 with PROXY_ERR_LISTEN when a listener cannot bind its address (port held by the test)', async () => {
    const free = await unusedPort();
    const path = await configFile({
      // The first listener binds; the second cannot: the first must be released, not left open.
      listeners: [
        { type: 'directtls', host: '127.0.0.1', port: free },
        { type: 'starttls', host: '127.0.0.1', port: heldPort },
      ],
      tls: { selfSigned: true },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 0.5 } } },
      log: { format: 'json' },
    });
    const run = await runCli([path], 'exit 3 when a port is taken');

    expect(run.exit, run.describe()).toEqual({ code: EXIT.startup, signal: null });
    const output = run.stdout + run.stderr;
    expect(output).toContain('PROXY_ERR_LISTEN');
    expect(output).toContain(`127.0.0.1:${heldPort}`);
    const fatal = run.logLines.find((line) => line.code === 'PROXY_ERR_LISTEN' && line.level === 60);
    expect(fatal, run.describe()).toBeDefined();
    expect(await connectRefused(free)).toBe(true);
  });

  it('exits 3 with PROXY_ERR_TLS_CREDENTIALS when a certificate file is missing', async () => {
    // README: exit 3 = "a certificate could not be loaded"; Errors: PROXY_ERR_TLS_CREDENTIALS "(exit 3)".
    const path = await configFile({
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
      tls: { certificates: [{ cert: 'nowhere/fullchain.pem', key: 'nowhere/privkey.pem' }] },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: await unusedPort() } } },
      log: { format: 'json' },
    });
    const run = await runCli([path], 'exit 3 when a certificate cannot be loaded');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.startup, signal: null });
    expect(run.stdout + run.stderr).toContain('PROXY_ERR_TLS_CREDENTIALS');
  });
});

// ---- shutdown --------------------------------------------------------------------------------

describe('shutdown on a signal', () => {
  let prosody: ProsodyServer;
  let spy: UpstreamSpy;

  beforeAll(async () => {
    prosody = await startProsody({ users: Object.values(USERS) });
    spy = await UpstreamSpy.start({ host: prosody.host, port: prosody.c2sPort });
  }, 30_000);

  afterAll(async () => {
    await spy?.stop();
    await prosody?.stop();
  });

  afterEach(() => {
    spy.connections.length = 0;
  });

  function proxyConfig(shutdownGraceSeconds: number): Record<string, unknown> {
    return {
      listeners: [
        { type: 'starttls', host: '127.0.0.1', port: 0 },
        { type: 'directtls', host: '127.0.0.1', port: 0 },
      ],
      tls: { selfSigned: true },
      domains: { [prosody.domain]: { upstream: { host: '127.0.0.1', port: spy.port, connectTimeoutSeconds: 2 } } },
      // Hibernation far longer than the test: only the shutdown may end the hibernating session.
      streamManagement: { hibernationSeconds: 300, maxHibernationSeconds: 300 },
      shutdownGraceSeconds,
      // debug: the test waits for 'stanza queued while hibernating'.
      log: { level: 'debug', format: 'json' },
    };
  }

  /** Connects through the proxy and logs in; with `sm`, enables stream management with resumption. */
  async function login(
    port: number,
    transport: 'starttls' | 'directtls',
    user: { username: string; password: string },
    resource: string,
    sm: boolean,
  ): Promise<{ client: RawClient; jid: string }> {
    const client = await RawClient.connect({ host: '127.0.0.1', port, transport, domain: prosody.domain });
    const jid = await client.login(user.username, user.password, { resource });
    if (sm) {
      const enabled = await client.enableSm({ resume: true });
      if (enabled.name !== 'enabled') throw new Error(`expected <enabled/>, got ${enabled.toString()}`);
    }
    return { client, jid };
  }

  it.each(['SIGTERM', 'SIGINT'] as const)(
    '%s: system-shutdown and a stream close to each client, a clean close upstream, hibernating sessions answered and ended, exit 0 in time',
    async (signal) => {
      const graceSeconds = 3;
      const { cli, ports } = await startCli(proxyConfig(graceSeconds));
      const starttlsPort = ports.starttls!;
      const directtlsPort = ports.directtls!;

      // alice: connected and logged in (no SM). bob: SM enabled and connected. carol: SM enabled,
      // then her connection is cut: she hibernates, with a stanza queued for her.
      const alice = await login(starttlsPort, 'starttls', USERS.alice, `${signal}-a`, false);
      const bob = await login(directtlsPort, 'directtls', USERS.bob, `${signal}-b`, true);
      const carol = await login(directtlsPort, 'directtls', USERS.carol, `${signal}-c`, true);
      carol.client.drop();
      await cli.expectLog('hibernating', (line) => line.jid === carol.jid);
      // A sender talking to the legacy server directly: the bounce at shutdown comes back to it.
      const sender = await RawClient.connectPlain({ host: prosody.host, port: prosody.c2sPort, domain: prosody.domain });
      await sender.openStream();
      const senderJid = await sender.login(USERS.alice.username, USERS.alice.password, { resource: `${signal}-direct` });
      sender.sendMessage(carol.jid, 'sent while carol was away', 'away-1');
      await cli.expectLog('stanza queued while hibernating', (line) => line.jid === carol.jid);
      expect(spy.sessionConnections(), 'three sessions through the proxy').toHaveLength(3);

      const signalledAt = Date.now();
      expect(process.kill(cli.pid, signal)).toBe(true);

      // RFC 6120 §4.9.3.20: <system-shutdown/>, then the stream's close (§4.4).
      for (const { client } of [alice, bob]) {
        await client.expectStreamError('system-shutdown');
        await waitUntil(() => client.streamClosedByPeer, "the proxy's </stream:stream> after <system-shutdown/>", 3_000);
      }
      // Carol's queue is answered as at expiry: the sender gets recipient-unavailable from carol's JID.
      const bounce = await sender.expect(
        (el) => el.is('message') && el.attrs.id === 'away-1' && el.attrs.type === 'error',
        'the bounce of the message queued for carol',
        5_000,
      );
      expect(bounce.attrs.from).toBe(carol.jid);
      expect(bounce.attrs.to).toBe(senderJid);
      expect(bounce.getChild('error')?.getChild('recipient-unavailable', STANZA_ERRORS)).toBeDefined();
      // Well-behaved clients answer the close (RFC 6120 §4.4).
      await Promise.all([alice.client.close(), bob.client.close()]);

      const exit = await cli.expectExit(
        graceSeconds * 1000 + SHUTDOWN_MARGIN_MS,
        `exit 0 within shutdownGraceSeconds ${graceSeconds} s + ${SHUTDOWN_MARGIN_MS} ms after ${signal}`,
      );
      const elapsedMs = Date.now() - signalledAt;
      expect(exit, cli.describe()).toEqual({ code: EXIT.ok, signal: null });
      expect(elapsedMs).toBeLessThan(graceSeconds * 1000 + SHUTDOWN_MARGIN_MS);

      expect(cli.logLines.find((line) => line.msg === 'signal received')?.signal).toBe(signal);
      expect(
        cli.logLines.some((line) => line.msg === 'hibernating session ends at shutdown' && line.jid === carol.jid),
        cli.describe(),
      ).toBe(true);
      expect(
        cli.logLines.some((line) => line.msg === 'stopped'),
        cli.describe(),
      ).toBe(true);
      // Nothing had to be destroyed: every session closed within the grace period.
      expect(
        cli.logLines.some((line) => line.level === 40 && String(line.msg).includes('grace period')),
        cli.describe(),
      ).toBe(false);

      // Every upstream stream of a session, the hibernating one included, was closed cleanly:
      // </stream:stream> as the last thing written, then a FIN, never a reset.
      await waitUntil(() => spy.sessionConnections().every((c) => c.closed), 'every upstream connection through the spy to close', 3_000);
      for (const connection of spy.sessionConnections()) {
        expect(connection.fromProxy.trimEnd(), 'the last bytes the proxy wrote upstream').toMatch(/<\/stream:stream>$/);
        expect(connection.proxyError, 'the proxy reset its upstream connection').toBeUndefined();
        expect(connection.proxyEnded, 'the proxy ended its upstream connection with a FIN').toBe(true);
      }
      expect(await connectRefused(starttlsPort)).toBe(true);
      expect(await connectRefused(directtlsPort)).toBe(true);
      await sender.close();
    },
    30_000,
  );

  it('stops listening at once and drops a connection stuck before TLS when the grace period ends, then exits 0', async () => {
    const graceSeconds = 1.5;
    const { cli, ports } = await startCli(proxyConfig(graceSeconds));
    const directtlsPort = ports.directtls!;
    // A client that connects to the direct TLS port and never sends its ClientHello.
    const stuck = netConnect({ host: '127.0.0.1', port: directtlsPort });
    stuck.on('error', () => undefined);
    let stuckClosed = false;
    stuck.once('close', () => (stuckClosed = true));
    await new Promise<void>((resolveConnect, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`expected a TCP connect to the direct TLS port ${directtlsPort} within 2000 ms`)),
        2_000,
      );
      stuck.once('connect', () => {
        clearTimeout(timer);
        resolveConnect();
      });
    });

    const signalledAt = Date.now();
    process.kill(cli.pid, 'SIGTERM');
    await cli.expectLog('shutting down');
    // The listeners close before the grace period is over: new clients are refused while the stuck one is still held.
    let refused = false;
    const deadline = signalledAt + graceSeconds * 1000 - 300;
    while (!refused && Date.now() < deadline) refused = await connectRefused(directtlsPort);
    expect(refused, 'a new connection refused during the grace period').toBe(true);
    expect(stuckClosed, 'the stuck connection is held until the grace period ends').toBe(false);

    const exit = await cli.expectExit(
      graceSeconds * 1000 + SHUTDOWN_MARGIN_MS,
      `exit 0 within shutdownGraceSeconds ${graceSeconds} s + ${SHUTDOWN_MARGIN_MS} ms`,
    );
    const elapsedMs = Date.now() - signalledAt;
    expect(exit, cli.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(elapsedMs).toBeGreaterThanOrEqual(graceSeconds * 1000 - 100);
    expect(elapsedMs).toBeLessThan(graceSeconds * 1000 + SHUTDOWN_MARGIN_MS);
    await waitUntil(() => stuckClosed, 'the stuck connection to be closed by the proxy', 1_000);
    expect(
      cli.logLines.some((line) => line.msg === 'connections still open after the grace period; destroying them'),
      cli.describe(),
    ).toBe(true);
  }, 20_000);

  it('does not wait for a client that never answers the stream close: it is dropped, exit 0 in time', async () => {
    const graceSeconds = 1.5;
    const { cli, ports } = await startCli(proxyConfig(graceSeconds));
    const mute = await login(ports.directtls!, 'directtls', USERS.bob, 'mute', true);
    const signalledAt = Date.now();
    process.kill(cli.pid, 'SIGTERM');
    await mute.client.expectStreamError('system-shutdown');
    await waitUntil(() => mute.client.streamClosedByPeer, "the proxy's </stream:stream> after <system-shutdown/>", 3_000);
    // The client neither answers </stream:stream> nor closes its socket.
    const exit = await cli.expectExit(
      graceSeconds * 1000 + SHUTDOWN_MARGIN_MS,
      `exit 0 within shutdownGraceSeconds ${graceSeconds} s + ${SHUTDOWN_MARGIN_MS} ms`,
    );
    expect(exit, cli.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(Date.now() - signalledAt).toBeLessThan(graceSeconds * 1000 + SHUTDOWN_MARGIN_MS);
    await mute.client.expectClosed(1_000);
    await waitUntil(() => spy.sessionConnections().every((c) => c.closed), 'the upstream connection through the spy to close', 3_000);
    const [upstream] = spy.sessionConnections();
    expect(upstream?.fromProxy.trimEnd(), 'the last bytes the proxy wrote upstream').toMatch(/<\/stream:stream>$/);
    expect(upstream?.proxyError, 'the proxy reset its upstream connection').toBeUndefined();
  }, 20_000);

  it('exits 0 on a signal with no session at all, at once', async () => {
    const { cli } = await startCli(proxyConfig(5));
    const signalledAt = Date.now();
    process.kill(cli.pid, 'SIGINT');
    const exit = await cli.expectExit(SHUTDOWN_MARGIN_MS, `exit 0 within ${SHUTDOWN_MARGIN_MS} ms: nothing to wait for`);
    expect(exit, cli.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(Date.now() - signalledAt).toBeLessThan(SHUTDOWN_MARGIN_MS);
  });
});

// ---- reloading and the other signals (README, Signals and Reloading) ---------------------------

describe('reloading and the other signals', () => {
  /** A certificate for localhost (EC: quick to make), as PEM, with its fingerprint. */
  /** Replaces `path` the way certbot's and acme.sh's deploy steps do: a new file renamed over the old one. */
  async function servedFingerprints(port: number): Promise<{ noSni: string; sni: string }> {
    const plain = await handshake(port);
    const named = await handshake(port, 'localhost');
    plain.socket.destroy();
    named.socket.destroy();
    return { noSni: plain.fingerprint256, sni: named.fingerprint256 };
  }

  async function proxyWithCertificate(
    name: string,
  ): Promise<{ cli: CliProcess; port: number; config: Record<string, unknown>; files: { cert: string; key: string } }> {
    const dir = join(scratch(), name);
    await mkdir(dir, { recursive: true });
    const files = { cert: join(dir, 'fullchain.pem'), key: join(dir, 'privkey.pem') };
    const first = await certificate();
    await writeFile(files.cert, first.cert);
    await writeFile(files.key, first.key);
    const config = {
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
      tls: { certificates: [files] },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 1 } } },
    };
    const { cli, ports } = await startCli(config);
    expect(await servedFingerprints(ports.directtls!)).toEqual({ noSni: first.fingerprint256, sni: first.fingerprint256 });
    return { cli, port: ports.directtls!, config, files };
  }

  it('serves a renewed certificate without a signal; a key that does not match keeps the one in use; open connections stay', async () => {
    const { cli, port, files } = await proxyWithCertificate('renewal');
    const open = await handshake(port, 'localhost');

    const renewed = await certificate();
    await renameOver(files.key, renewed.key);
    await renameOver(files.cert, renewed.cert);
    const reloaded = await cli.expectLog(
      'certificates reloaded; new handshakes get the new ones',
      (line) => line.trigger === 'file change',
    );
    expect(reloaded.changed).toEqual([expect.objectContaining({ source: 'tls.certificates[0]', fingerprint256: renewed.fingerprint256 })]);
    expect(await servedFingerprints(port)).toEqual({ noSni: renewed.fingerprint256, sni: renewed.fingerprint256 });
    expect(open.socket.destroyed, 'a connection made before the renewal').toBe(false);

    // A certificate whose key is not there yet (or never comes): refused, the renewed pair stays.
    const third = await certificate();
    await renameOver(files.cert, third.cert);
    const failed = await cli.expectLog('certificate reload failed; the certificates in use stay');
    expect(failed.code).toBe('PROXY_ERR_TLS_CREDENTIALS');
    expect(failed.level).toBe(50);
    expect(await servedFingerprints(port)).toEqual({ noSni: renewed.fingerprint256, sni: renewed.fingerprint256 });
    open.socket.destroy();
    expect(cli.hasExited).toBe(false);
  }, 20_000);

  it('SIGHUP reads the config again: an invalid file changes nothing; a valid one applies limits, domains and certificates, and names what waits for a restart', async () => {
    const { cli, port, config, files } = await proxyWithCertificate('sighup');
    const path = cli.args[0]!;

    await writeFile(path, JSON.stringify({ ...config, limits: { maxSessions: -1 } }));
    process.kill(cli.pid, 'SIGHUP');
    const refused = await cli.expectLog('reload refused: the config file is not valid; nothing changed');
    expect(refused.problems).toEqual([expect.stringContaining('/limits/maxSessions')]);

    // Certificate files, a limit, a domain and the log level changed: all but the log take effect.
    const next = await certificate();
    await writeFile(files.cert, next.cert);
    await writeFile(files.key, next.key);
    const domains = config.domains as Record<string, unknown>;
    await writeFile(
      path,
      JSON.stringify({
        ...config,
        domains: { ...domains, 'added.test': domains.localhost },
        limits: { maxUnauthenticatedPerAddress: 1 },
        log: { level: 'debug' },
      }),
    );
    process.kill(cli.pid, 'SIGHUP');
    const waiting = await cli.expectLog('config reloaded: these sections changed and take effect at the next upgrade or restart');
    expect(waiting.sections).toEqual(['log']);
    const reloaded = await cli.expectLog('config reloaded');
    expect(reloaded).toMatchObject({ changed: ['domains', 'limits', 'log'], domainsAdded: ['added.test'], domainsRemoved: [] });
    await cli.expectLog('certificates reloaded; new handshakes get the new ones', (line) => line.trigger === 'SIGHUP');
    expect(await servedFingerprints(port)).toEqual({ noSni: next.fingerprint256, sni: next.fingerprint256 });

    // maxUnauthenticatedPerAddress 1: a second connection logging in from 127.0.0.1 is refused.
    const first = await handshake(port, 'localhost');
    const second = await handshake(port, 'localhost');
    let answer = '';
    second.socket.on('data', (chunk: Buffer) => (answer += chunk.toString('utf8')));
    await waitUntil(() => answer.includes('</stream:stream>'), 'the refusal of the second connection');
    expect(answer).toContain('policy-violation');
    first.socket.destroy();
    second.socket.destroy();
    expect(cli.hasExited).toBe(false);
  }, 20_000);

  it('SIGHUP adds and removes listeners: a new one accepts at once, a removed one stops accepting while its connections go on', async () => {
    const { cli, port, config } = await proxyWithCertificate('listeners');
    const path = cli.args[0]!;
    const [starttlsPort, addedPort] = [await unusedPort(), await unusedPort()];
    const directtls = (config.listeners as unknown[])[0];
    await writeFile(
      path,
      JSON.stringify({ ...config, listeners: [directtls, { type: 'starttls', host: '127.0.0.1', port: starttlsPort }] }),
    );
    process.kill(cli.pid, 'SIGHUP');
    expect(await cli.expectLog('listeners reloaded')).toMatchObject({ added: [`starttls 127.0.0.1:${starttlsPort}`], removed: [] });
    // A stream opened on it before it is removed goes on.
    const open = netConnect({ host: '127.0.0.1', port: starttlsPort });
    let received = '';
    open.on('data', (chunk: Buffer) => (received += chunk.toString('utf8')));
    open.write(
      "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    await waitUntil(() => received.includes('</stream:features>'), 'the features on the STARTTLS listener');

    await writeFile(path, JSON.stringify({ ...config, listeners: [directtls, { type: 'directtls', host: '127.0.0.1', port: addedPort }] }));
    process.kill(cli.pid, 'SIGHUP');
    const second = await cli.expectLog('listeners reloaded', (line) => (line.removed as unknown[]).length > 0);
    expect(second).toMatchObject({
      added: [`directtls 127.0.0.1:${addedPort}`],
      removed: [`starttls 127.0.0.1:${starttlsPort}`],
      waiting: [],
    });
    expect(await connectRefused(starttlsPort), 'the removed listener refuses').toBe(true);
    open.write(`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`);
    await waitUntil(() => received.includes('<proceed'), 'the open stream answered after its listener was removed');
    const added = await handshake(addedPort, 'localhost');
    added.socket.destroy();
    (await handshake(port, 'localhost')).socket.destroy();
    open.destroy();
    expect(cli.hasExited).toBe(false);
  }, 20_000);

  it('SIGUSR1 is logged and changes nothing: the process runs on and no inspector opens (SIGUSR2 upgrades: upgrade.test.ts)', async () => {
    const { cli, ports } = await startCli({
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
      tls: { selfSigned: true },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 1 } } },
    });
    process.kill(cli.pid, 'SIGUSR1');
    await cli.expectLog('signal received; it has no meaning here (logs go to stdout)');
    const { socket } = await handshake(ports.directtls!);
    socket.destroy();
    expect(cli.hasExited).toBe(false);
    // Node prints this on stderr when a signal opens its inspector.
    expect(cli.stderr).not.toContain('Debugger listening');
    process.kill(cli.pid, 'SIGTERM');
    expect(await cli.expectExit(SHUTDOWN_MARGIN_MS + 5_000, 'exit 0 after SIGTERM')).toEqual({ code: EXIT.ok, signal: null });
  }, 20_000);
});

// ---- refusals and probes in the log -----------------------------------------------------------

describe('the log of a STARTTLS listener', () => {
  it('logs a refusal before TLS with its code, and a TCP probe (connect, close) only at debug', async () => {
    const { cli, ports } = await startCli({
      listeners: [{ type: 'starttls', host: '127.0.0.1', port: 0 }],
      tls: { selfSigned: true },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 1 } } },
    });
    const probe = netConnect({ host: '127.0.0.1', port: ports.starttls! });
    await new Promise<void>((resolveConnect) => probe.once('connect', () => resolveConnect()));
    probe.end();
    await new Promise<void>((resolveClose) => probe.once('close', () => resolveClose()));

    const refused = netConnect({ host: '127.0.0.1', port: ports.starttls! });
    refused.on('data', () => undefined);
    refused.write(
      "<?xml version='1.0'?><stream:stream to='elsewhere.example' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    const line = await cli.expectLog('stream error sent to client before TLS');
    expect(line).toMatchObject({ code: 'PROXY_ERR_HOST_UNKNOWN', condition: 'host-unknown' });
    // The proxy closes the refused connection; give both sessions' last lines time to be written.
    await new Promise<void>((resolveClose) => (refused.destroyed ? resolveClose() : refused.once('close', () => resolveClose())));
    await new Promise((resolveWait) => setTimeout(resolveWait, 200));
    expect(cli.logLines.filter((l) => l.msg === 'session ended' && (l.level as number) >= 30)).toEqual([]);
  });
});

describe('the sessions and kick commands', () => {
  let prosody: ProsodyServer;

  beforeAll(async () => {
    prosody = await startProsody({ users: Object.values(USERS) });
  }, 30_000);

  afterAll(async () => {
    await prosody?.stop();
  });

  it("list the running proxy's sessions, end an account's and drain it, through its admin listener, with the token from the config", async () => {
    await writeFile(join(scratch(), 'admin.token'), 'cli-token\n');
    const adminPort = await unusedPort();
    const config = {
      listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
      tls: { selfSigned: true },
      domains: { [prosody.domain]: { upstream: { host: prosody.host, port: prosody.c2sPort } } },
      admin: { host: '127.0.0.1', port: adminPort, tokenFile: join(scratch(), 'admin.token') },
    };
    const { ports } = await startCli(config);
    const path = await configFile(config);
    const client = await RawClient.connect({ host: '127.0.0.1', port: ports.directtls!, transport: 'directtls', domain: prosody.domain });
    const jid = await client.login(USERS.alice.username, USERS.alice.password, { resource: 'cli' });

    const listed = await runCli(['sessions', path], 'the session list');
    expect(listed.exit, listed.describe()).toEqual({ code: EXIT.ok, signal: null });
    const [header, ...rows] = listed.stdout.trimEnd().split('\n');
    expect(header!.split(/\s+/)).toEqual(['SID', 'JID', 'STATE', 'TRANSPORT', 'REMOTE', 'SINCE', 'QUEUED']);
    expect(rows.map((row) => row.split(/\s+/).slice(1, 4))).toEqual([[jid, 'active', 'directtls']]);
    const json = await runCli(['sessions', '--json', '--jid', `bob@${prosody.domain}`, path], 'the JSON list of bob');
    expect(JSON.parse(json.stdout)).toEqual({ sessions: [] });

    const kicked = await runCli(['kick', `alice@${prosody.domain}`, '--condition', 'reset', path], 'the kick');
    expect(kicked.exit, kicked.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(kicked.stdout).toContain('kicked 1 session');
    await client.expectStreamError('reset');
    const again = await runCli(['kick', `alice@${prosody.domain}`, path], 'a kick of nobody');
    expect(again.exit, again.describe()).toEqual({ code: EXIT.noneMatched, signal: null });
    expect(again.stderr).toContain(`no session of alice@${prosody.domain}`);

    const other = await RawClient.connect({ host: '127.0.0.1', port: ports.directtls!, transport: 'directtls', domain: prosody.domain });
    await other.login(USERS.bob.username, USERS.bob.password, { resource: 'cli' });
    const drained = await runCli(['drain', '--rate', '5', path], 'the drain');
    expect(drained.exit, drained.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(drained.stdout).toMatch(/^draining: 1 sessions left, ending 5 per second/);
    await other.expectClosed();
    const badRate = await runCli(['drain', '--rate', 'fast', path], 'a drain at no rate');
    expect(badRate.exit, badRate.describe()).toEqual({ code: EXIT.unavailable, signal: null });

    const noAdmin = await configFile({ ...config, admin: undefined });
    const unavailable = await runCli(['sessions', noAdmin], 'sessions without an admin section');
    expect(unavailable.exit, unavailable.describe()).toEqual({ code: EXIT.unavailable, signal: null });
    expect(unavailable.stderr).toContain('admin');
    for (const args of [['kick'], ['kick', `alice@${prosody.domain}`, '--condition', 'bogus', path], ['sessions', '--jid', '', path]]) {
      const usage = await runCli(args, `usage error: ${args.join(' ')}`);
      expect(usage.exit, usage.describe()).toEqual({ code: EXIT.usage, signal: null });
    }
  });
});

describe('--check dns', () => {
  /** Where a proxy serves web.example's host-meta: XEP-0156 clients ask port 443, so an address of its own for it. */
  const HOST_META_ADDRESS = '127.1.56.1';
  let dns: Dnsmasq;

  beforeAll(async () => {
    dns = await startDnsmasq({
      localDomains: ['good.example', 'bad.example', 'web.example', 'down.example', 'nohost.example'],
      srv: [
        { name: '_xmpp-client._tcp.good.example', target: 'xmpp.good.example', port: 5222 },
        { name: '_xmpps-client._tcp.good.example', target: 'xmpp.good.example', port: 5223 },
        { name: '_xmpp-client._tcp.bad.example', target: 'xmpp.bad.example', port: 5269 },
        { name: '_xmpps-client._tcp.bad.example', target: 'nowhere.bad.example', port: 5223 },
      ],
      addresses: {
        'xmpp.good.example': '127.0.0.1',
        'xmpp.bad.example': '192.0.2.1',
        'web.example': HOST_META_ADDRESS,
        'down.example': '127.1.56.2',
      },
    });
  }, 30_000);

  afterAll(async () => {
    await dns?.stop();
  });

  const config = (domains: string[]) => ({
    listeners: [
      { type: 'starttls', host: '127.0.0.1', port: 5222 },
      { type: 'directtls', host: '127.0.0.1', port: 5223 },
    ],
    tls: { selfSigned: true },
    domains: Object.fromEntries(domains.map((domain) => [domain, { upstream: { host: '127.0.0.1' } }])),
  });

  it('exits 0 when every SRV record points at a listener of its kind on this host', async () => {
    const run = await runCli(['--check', 'dns', '--dns-server', dns.server, await configFile(config(['good.example']))], '--check dns');
    expect(run.exit, run.describe()).toEqual({ code: EXIT.ok, signal: null });
    expect(run.stdout.trimEnd().split('\n')).toEqual([
      'ok: _xmpp-client._tcp.good.example → xmpp.good.example:5222: a starttls listener, on this host (127.0.0.1)',
      'ok: _xmpps-client._tcp.good.example → xmpp.good.example:5223: a directtls listener, on this host (127.0.0.1)',
    ]);
  });

  it('exits 6 for a record pointing at no listener or at a name without an address; warns about a missing one', async () => {
    const run = await runCli(
      ['--check', 'dns', '--dns-server', dns.server, await configFile(config(['bad.example', 'none.good.example']))],
      '--check dns',
    );
    expect(run.exit, run.describe()).toEqual({ code: EXIT.dns, signal: null });
    expect(run.stdout.trimEnd().split('\n')).toEqual([
      'error: _xmpp-client._tcp.bad.example → xmpp.bad.example:5269: the starttls listeners are on 5222',
      'error: _xmpps-client._tcp.bad.example → nowhere.bad.example:5223: nowhere.bad.example has no A or AAAA record',
      'ok: _xmpp-client._tcp.none.good.example: no SRV record; clients fall back to none.good.example:5222, where a STARTTLS listener is',
      'warning: _xmpps-client._tcp.none.good.example: no SRV record; clients will not find the direct TLS port',
    ]);
  });

  it("fetches each domain's host-meta over HTTPS, as a WebSocket client does, and checks its links against the listeners", async () => {
    const dir = join(scratch(), 'host-meta');
    await mkdir(dir, { recursive: true });
    const pems = await certificate('web.example');
    const files = { cert: join(dir, 'fullchain.pem'), key: join(dir, 'privkey.pem') };
    await writeFile(files.cert, pems.cert);
    await writeFile(files.key, pems.key);
    const upstream = { host: '127.0.0.1', port: await unusedPort(), connectTimeoutSeconds: 1 };
    const listeners = [{ type: 'websocket', host: HOST_META_ADDRESS, port: 443, path: '/ws' }];
    await startCli({ listeners, tls: { certificates: [files] }, domains: { 'web.example': { upstream } } });

    const domains = Object.fromEntries(['web.example', 'down.example', 'nohost.example'].map((domain) => [domain, { upstream }]));
    const run = await runCli(
      ['--check', 'dns', '--dns-server', dns.server, await configFile({ listeners, tls: { certificates: [files] }, domains })],
      '--check dns with host-meta',
      { NODE_EXTRA_CA_CERTS: files.cert },
    );
    expect(run.exit, run.describe()).toEqual({ code: EXIT.ok, signal: null });
    const unreachable = 'WebSocket clients that discover by XEP-0156 will not find the proxy';
    expect(run.stdout.trimEnd().split('\n')).toEqual([
      `ok: https://web.example/.well-known/host-meta → wss://web.example/ws: the path of a websocket listener (web.example is ${HOST_META_ADDRESS})`,
      `warning: https://down.example/.well-known/host-meta: connect ECONNREFUSED 127.1.56.2:443; ${unreachable}`,
      `warning: https://nohost.example/.well-known/host-meta: nohost.example has no A or AAAA record; ${unreachable}`,
    ]);
  }, 30_000);
});
