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
import { execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { LegacyServer, LegacyUser } from './legacy-server.js';
import {
  HOST,
  describeExecError,
  findFreePort,
  readIfExists,
  spawnSupervised,
  tail,
  waitForFeatures,
  type SupervisedProcess,
} from './server-process.js';

const execFileAsync = promisify(execFile);

export type ProsodyUser = LegacyUser;

export interface ProsodyOptions {
  /** Load mod_smacks (native XEP-0198). Default false: the legacy server, no `<sm/>` feature. */
  smacks?: boolean;
  /** Load mod_csi_simple (native XEP-0352, which buffers what can wait). Default false. */
  csi?: boolean;
  /** Accounts registered before start. Default none. */
  users?: ProsodyUser[];
  /** The VirtualHost. Default 'localhost'. */
  domain?: string;
  /** c2s port on 127.0.0.1. Default: a free port, found by listening on port 0. */
  c2sPort?: number;
  /** Milliseconds to wait for the c2s port to answer a stream header. Default 15000. */
  startTimeoutMs?: number;
}

export interface ProsodyServer extends LegacyServer {
  readonly kind: 'prosody';
  /** Prosody's data_path (accounts, rosters, offline messages). Removed by stop(). */
  readonly dataDir: string;
}

const DEFAULT_START_TIMEOUT_MS = 15_000;
/** Ports picked from port 0 can be taken by someone else before Prosody binds them: retry this often. */
const PORT_ATTEMPTS = 3;

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
  writeFileSync(
    configFile,
    prosodyConfig({ dir, dataDir, logFile, domain, c2sPort, smacks: options.smacks ?? false, csi: options.csi ?? false }),
  );

  const registerUser = async ({ username, password }: ProsodyUser): Promise<void> => {
    try {
      await execFileAsync('prosodyctl', ['--config', configFile, 'register', username, domain, password], {
        cwd: dir,
        timeout: 10_000,
      });
    } catch (err) {
      const hint = "prosodyctl is not on PATH: install Debian's prosody package (apt-get install prosody)";
      throw new Error(`prosodyctl register ${username} ${domain} failed: ${describeExecError(err, hint)}`, { cause: err });
    }
  };

  try {
    for (const user of options.users ?? []) await registerUser(user);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const describe = (): string =>
    `prosody --config ${configFile} -F` +
    `\n--- console (${consoleFile}) ---\n${tail(consoleFile)}` +
    `\n--- log tail (${logFile}) ---\n${tail(logFile)}`;
  const timeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  /** Starts Prosody on the directory (again, for a restart) and waits until it answers. */
  const launch = async (): Promise<SupervisedProcess> => {
    const server = spawnSupervised('prosody', ['--config', configFile, '-F'], { dir, consoleFile });
    await waitForFeatures(c2sPort, domain, {
      name: 'Prosody',
      timeoutMs,
      describe,
      failed: () => {
        const spawnError = server.spawnError();
        if (spawnError !== undefined) return new Error(`could not run prosody (is the Debian package installed?): ${spawnError.message}`);
        if (server.hasExited()) {
          return new Error(
            `Prosody exited during start-up (code ${server.child.exitCode}, signal ${server.child.signalCode}): ${describe()}`,
          );
        }
        // Prosody 0.12 does not exit when its port is taken: it logs this and runs without listening.
        if (readIfExists(logFile).includes('Failed to open server port'))
          return new PortInUseError(`Prosody could not listen on ${HOST}:${c2sPort}: ${describe()}`);
        return undefined;
      },
    }).catch(async (err: unknown) => {
      await server.stop();
      throw err;
    });
    return server;
  };
  let server = await launch();

  return {
    kind: 'prosody',
    domain,
    host: HOST,
    c2sPort,
    dataDir,
    logFile,
    addUser: registerUser,
    restart: async () => {
      await server.halt();
      server = await launch();
    },
    stop: () => server.stop(),
  };
}

interface ConfigValues {
  dir: string;
  dataDir: string;
  logFile: string;
  domain: string;
  c2sPort: number;
  smacks: boolean;
  csi: boolean;
}

/** Modules of a realistic small legacy deployment. No carbons/csi/mam: they change delivery. */
const BASE_MODULES = ['roster', 'saslauth', 'disco', 'presence', 'ping', 'private', 'vcard', 'version', 'time', 'uptime'];

function prosodyConfig(v: ConfigValues): string {
  const modulesEnabled = [...BASE_MODULES, ...(v.smacks ? ['smacks'] : []), ...(v.csi ? ['csi_simple'] : [])];
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
