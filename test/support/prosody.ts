/**
 * A throwaway Prosody 0.12 (Debian's `prosody` package) for end-to-end tests and benchmarks.
 *
 * Everything lives in a fresh temp dir: config, data, pid file, logs, certificate dir. The
 * distro's /etc/prosody and /var/lib/prosody are never read or written: `--config` points at our
 * file, `data_path` and `installer_plugin_path` point into the temp dir.
 *
 * By default it is the *legacy* server the proxy fronts: mod_smacks (in core since 0.12) is not in
 * `modules_enabled` and is also listed in `modules_disabled`, so post-auth features carry no `<sm/>`.
 * Pass `smacks: true` for a server with native XEP-0198 (for comparisons).
 *
 * Commands it runs:
 *   prosodyctl --config <dir>/prosody.cfg.lua register <user> <domain> <password>   (before start)
 *   prosody --config <dir>/prosody.cfg.lua -F                                     (foreground child)
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, openSync, closeSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface ProsodyUser {
  username: string;
  password: string;
}

export interface ProsodyOptions {
  /** Load mod_smacks (native XEP-0198). Default false: the legacy server, no `<sm/>` feature. */
  smacks?: boolean;
  /** Accounts registered before start. Default none. */
  users?: ProsodyUser[];
  /** The VirtualHost. Default 'localhost'. */
  domain?: string;
  /** c2s port on 127.0.0.1. Default: a free port, found by listening on port 0. */
  c2sPort?: number;
  /** Milliseconds to wait for the c2s port to answer a stream header. Default 15000. */
  startTimeoutMs?: number;
}

export interface ProsodyServer {
  readonly domain: string;
  readonly host: '127.0.0.1';
  readonly c2sPort: number;
  /** Prosody's data_path (accounts, rosters, offline messages). Removed by stop(). */
  readonly dataDir: string;
  /** Prosody's own log (warn and above). Removed by stop(); read it before, when debugging. */
  readonly logFile: string;
  /** Registers one more account on the running server (prosodyctl, internal storage). */
  addUser(user: ProsodyUser): Promise<void>;
  /** SIGTERM, then SIGKILL after 5 s; then removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const HOST = '127.0.0.1' as const;
const DEFAULT_START_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 5_000;
const PROBE_INTERVAL_MS = 100;
/** Ports picked from port 0 can be taken by someone else before Prosody binds them: retry this often. */
const PORT_ATTEMPTS = 3;

/** Servers not stopped yet: killed synchronously if the test process exits without stopping them. */
const running = new Set<{ child: ChildProcess; dir: string }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const { child, dir } of running) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

export async function startProsody(options: ProsodyOptions = {}): Promise<ProsodyServer> {
  const attempts = options.c2sPort === undefined ? PORT_ATTEMPTS : 1;
  for (let attempt = 1; ; attempt++) {
    const c2sPort = options.c2sPort ?? (await findFreePort());
    try {
      return await startOnce({ ...options, c2sPort });
    } catch (err) {
      if (!(err instanceof PortInUseError) || attempt >= attempts) throw err;
    }
  }
}

class PortInUseError extends Error {}

async function startOnce(options: ProsodyOptions & { c2sPort: number }): Promise<ProsodyServer> {
  const domain = options.domain ?? 'localhost';
  const { c2sPort } = options;
  const dir = mkdtempSync(join(tmpdir(), 'smacks-proxy-prosody-'));
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'prosody.log');
  const consoleFile = join(dir, 'prosody.console.log');
  const configFile = join(dir, 'prosody.cfg.lua');
  mkdirSync(dataDir);
  // An empty certificate dir: Prosody indexes it at start and logs an error if it is missing.
  mkdirSync(join(dir, 'certs'));
  writeFileSync(configFile, prosodyConfig({ dir, dataDir, logFile, domain, c2sPort, smacks: options.smacks ?? false }));

  const registerUser = async ({ username, password }: ProsodyUser): Promise<void> => {
    try {
      await execFileAsync('prosodyctl', ['--config', configFile, 'register', username, domain, password], {
        cwd: dir,
        timeout: 10_000,
      });
    } catch (err) {
      throw new Error(`prosodyctl register ${username} ${domain} failed: ${describeExecError(err)}`, { cause: err });
    }
  };

  try {
    for (const user of options.users ?? []) await registerUser(user);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  installExitHook();
  // Console output (config errors are print()ed before logging is up) goes to a file, not a pipe:
  // a pipe would keep the test process's event loop alive.
  const consoleFd = openSync(consoleFile, 'a');
  const child = spawn('prosody', ['--config', configFile, '-F'], {
    cwd: dir,
    stdio: ['ignore', consoleFd, consoleFd],
  });
  closeSync(consoleFd);
  child.unref();
  const entry = { child, dir };
  running.add(entry);
  // Dead man's switch: a test worker killed by a signal runs no 'exit' hook. This shell reads its
  // stdin, which only ends when we die (or stop() kills it first), then kills Prosody and cleans up.
  const watchdog = spawn(
    'sh',
    ['-c', 'read _ignored; kill -KILL "$1" 2>/dev/null; rm -rf -- "$2"', 'prosody-watchdog', String(child.pid), dir],
    { stdio: ['pipe', 'ignore', 'ignore'] },
  );
  watchdog.unref();
  (watchdog.stdin as unknown as { unref(): void }).unref();

  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let spawnError: Error | undefined;
  child.once('error', (err) => {
    spawnError = err;
  });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null && spawnError === undefined) {
        child.kill('SIGTERM');
        const killTimer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
        await exited;
        clearTimeout(killTimer);
      }
      watchdog.kill('SIGKILL');
      running.delete(entry);
      rmSync(dir, { recursive: true, force: true });
    })());

  const describe = (): string =>
    `prosody --config ${configFile} -F` +
    `\n--- console (${consoleFile}) ---\n${tail(consoleFile)}` +
    `\n--- log tail (${logFile}) ---\n${tail(logFile)}`;

  const deadline = Date.now() + (options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  let lastProbeError = 'no probe yet';
  for (;;) {
    if (spawnError !== undefined) {
      await stop();
      throw new Error(`could not run prosody (is the Debian package installed?): ${spawnError.message}`);
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      const why = `Prosody exited during start-up (code ${child.exitCode}, signal ${child.signalCode}): ${describe()}`;
      await stop();
      throw new Error(why);
    }
    // Prosody 0.12 does not exit when its port is taken: it logs this and runs without listening.
    if (readIfExists(logFile).includes('Failed to open server port')) {
      const why = `Prosody could not listen on ${HOST}:${c2sPort}: ${describe()}`;
      await stop();
      throw new PortInUseError(why);
    }
    try {
      await probeStreamFeatures(HOST, c2sPort, domain, 1_000);
      break;
    } catch (err) {
      lastProbeError = (err as Error).message;
    }
    if (Date.now() > deadline) {
      const why =
        `Prosody did not answer a stream header with <stream:features> on ${HOST}:${c2sPort} within ` +
        `${options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS} ms (last probe: ${lastProbeError}): ${describe()}`;
      await stop();
      throw new Error(why);
    }
    await delay(PROBE_INTERVAL_MS);
  }

  return {
    domain,
    host: HOST,
    c2sPort,
    dataDir,
    logFile,
    addUser: registerUser,
    stop,
  };
}

interface ConfigValues {
  dir: string;
  dataDir: string;
  logFile: string;
  domain: string;
  c2sPort: number;
  smacks: boolean;
}

/** Modules of a realistic small legacy deployment. No carbons/csi/mam: they change delivery. */
const BASE_MODULES = ['roster', 'saslauth', 'disco', 'presence', 'ping', 'private', 'vcard', 'version', 'time', 'uptime'];

function prosodyConfig(v: ConfigValues): string {
  const modulesEnabled = v.smacks ? [...BASE_MODULES, 'smacks'] : BASE_MODULES;
  // s2s and s2s_auth_certs are autoloaded in 0.12; a sandbox must not dial out, so unload them.
  const modulesDisabled = v.smacks ? ['s2s', 's2s_auth_certs'] : ['s2s', 's2s_auth_certs', 'smacks'];
  const lines = [
    '-- Generated by test/support/prosody.ts for one test run. Do not edit.',
    `run_as_root = ${process.getuid?.() === 0 ? 'true' : 'false'}`,
    'daemonize = false',
    `pidfile = ${lua(join(v.dir, 'prosody.pid'))}`,
    `data_path = ${lua(v.dataDir)}`,
    `installer_plugin_path = ${lua(join(v.dir, 'custom_plugins'))}`,
    `certificates = ${lua(join(v.dir, 'certs'))}`,
    `log = { { levels = { min = "warn" }, to = "file", filename = ${lua(v.logFile)} } }`,
    '',
    '-- Our own ports, loopback only. No s2s, HTTP, components or direct TLS.',
    `interfaces = { ${lua(HOST)} }`,
    `local_interfaces = { ${lua(HOST)} }`,
    `c2s_ports = { ${v.c2sPort} }`,
    `c2s_interfaces = { ${lua(HOST)} }`,
    'c2s_direct_tls_ports = {}',
    'legacy_ssl_ports = {}',
    's2s_ports = {}',
    's2s_direct_tls_ports = {}',
    'component_ports = {}',
    'http_ports = {}',
    'https_ports = {}',
    '',
    '-- The hop from the proxy is plain TCP on loopback: no TLS in Prosody at all (mod_tls not loaded).',
    '-- Nagle off (Prosody 0.12 defaults to on): loopback round trips are not held back by it.',
    'network_settings = { nagle = false }',
    'c2s_require_encryption = false',
    's2s_require_encryption = false',
    'allow_unencrypted_plain_auth = true',
    'storage = "internal"',
    'authentication = "internal_hashed" -- offers SCRAM-SHA-1 and PLAIN',
    '',
    `modules_enabled = { ${modulesEnabled.map(lua).join(', ')} }`,
    `modules_disabled = { ${modulesDisabled.map(lua).join(', ')} }`,
    '',
    `VirtualHost ${lua(v.domain)}`,
    '',
  ];
  return lines.join('\n');
}

/** A Lua string literal: decimal escapes for anything outside printable ASCII, quotes and backslash. */
function lua(value: string): string {
  let out = '"';
  for (const byte of Buffer.from(value, 'utf8')) {
    const printable = byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c;
    out += printable ? String.fromCharCode(byte) : `\\${String(byte).padStart(3, '0')}`;
  }
  return `${out}"`;
}

/** Connects, sends a stream header, resolves once `<stream:features` arrives. */
function probeStreamFeatures(host: string, port: number, domain: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = '';
    const socket = connect({ host, port });
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(
      () => finish(new Error(`no <stream:features> within ${timeoutMs} ms, got ${JSON.stringify(received.slice(0, 300))}`)),
      timeoutMs,
    );
    socket.on('connect', () => {
      socket.write(
        `<?xml version='1.0'?><stream:stream to='${xmlAttr(domain)}' version='1.0' ` +
          `xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`,
      );
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      if (received.includes('<stream:features')) finish();
    });
    socket.on('error', (err) => finish(err));
    socket.on('close', () => finish(new Error(`connection closed, got ${JSON.stringify(received.slice(0, 300))}`)));
  });
}

function xmlAttr(value: string): string {
  return value.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll("'", '&apos;').replaceAll('"', '&quot;');
}

function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error(`no port from ${String(address)}`))));
    });
  });
}

function readIfExists(file: string): string {
  return existsSync(file) ? readFileSync(file, 'utf8') : '';
}

function tail(file: string, lines = 30): string {
  const text = readIfExists(file).trimEnd();
  return text === '' ? '(empty)' : text.split('\n').slice(-lines).join('\n');
}

function describeExecError(err: unknown): string {
  const e = err as { code?: unknown; stdout?: string; stderr?: string; message?: string };
  if (e.code === 'ENOENT') return "prosodyctl is not on PATH: install Debian's prosody package (apt-get install prosody)";
  return `exit ${String(e.code)}: ${`${e.stdout ?? ''} ${e.stderr ?? ''}`.trim() || String(e.message)}`;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
