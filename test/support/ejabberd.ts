/**
 * A throwaway ejabberd 23.01 (Debian's `ejabberd` package) for end-to-end tests and benchmarks: the
 * *legacy* server the proxy fronts, so mod_stream_mgmt is not loaded and post-auth features carry
 * no `<sm/>`.
 *
 * Everything lives in a fresh temp dir owned by the `ejabberd` user: ejabberd.yml, ejabberdctl.cfg,
 * inetrc, the Erlang cookie (.erlang.cookie, found through HOME), the Mnesia spool and the logs. The
 * distro's /etc/ejabberd, /var/lib/ejabberd and its node ejabberd@localhost are never read or written:
 * our node is `smacks<random>@localhost` and has its own cookie. epmd is shared with any other Erlang
 * node on the machine; if none runs, the first node starts one (listening on loopback) that outlives it.
 *
 * Commands it runs, as the ejabberd user: through `setpriv --reuid=ejabberd --regid=ejabberd
 * --init-groups --` when we are root (as root, ejabberdctl would `su`, which resets HOME and the
 * open-file limit), as they are when we are that user; ejabberdctl refuses anyone else.
 *   chown -R ejabberd:ejabberd <dir>                                                      (as root)
 *   erl -sname <node> -kernel inet_dist_use_interface {127,0,0,1} -shutdown_time 500
 *       -mnesia dir '"<dir>/spool"' -s ejabberd -noinput                       (foreground child)
 *   ejabberdctl --config-dir <dir> --config <dir>/ejabberd.yml --ctl-config <dir>/ejabberdctl.cfg
 *       --logs <dir>/logs --spool <dir>/spool register <user> <domain> <password>  (once it answers)
 * The erl line is what `ejabberdctl foreground` runs, with ejabberdctl's environment (ERL_LIBS read
 * from the script, EJABBERD_CONFIG_PATH, EJABBERD_LOG_PATH, ERL_INETRC, ERL_CRASH_DUMP), minus the `su`
 * and the bash that would stay its parents: so the child's pid is the VM's (erl execs erlexec, which
 * execs beam.smp), SIGTERM stops it, and the watchdog's SIGKILL cannot leave an orphan VM behind. The
 * VM keeps the test process's open-file limit (Node raises it to the hard limit; `su` would give 1024).
 * Registration needs the node running (unlike prosodyctl's), so accounts are created once it answers.
 *
 * Non-default configuration, and why:
 *   listen: only ejabberd_c2s on 127.0.0.1:<free port>; no s2s, HTTP, STUN or MQTT listeners.
 *     starttls/starttls_required false and certfiles [] : the proxy's hop is plain TCP on loopback;
 *     ejabberd offers PLAIN without TLS. shaper none: Debian's c2s_shaper (3000 B/s for non-admins)
 *     would throttle tests that send many stanzas. backlog 1024: bursts of parallel connects.
 *     max_stanza_size is left at ejabberd's default (infinity), not Debian's 262144.
 *   auth_password_format plain (internal Mnesia auth): PLAIN, DIGEST-MD5 and SCRAM-SHA-1/256/512 all
 *     work (Debian's `scram` would rule out DIGEST-MD5).
 *   disable_sasl_mechanisms X-OAUTH2: tokens come from an OAuth endpoint this server does not serve.
 *   s2s_access none: a sandbox must not dial out; stanzas to other domains bounce at once.
 *   acme auto false: never ask Let's Encrypt for a certificate for the test domain.
 *   modules: a small legacy deployment. Left out on purpose: mod_stream_mgmt (it is what the proxy
 *     adds), mod_carboncopy, mod_client_state, mod_mam and mod_push (they change delivery),
 *     mod_fail2ban (in Debian's default config; every client reaches this server from the proxy's
 *     address, so failed logins in one test would ban the next), mod_register (accounts come from
 *     ejabberdctl). mod_vcard search false: no vjud.<domain> service. mod_private logs a warning that
 *     mod_pubsub is recommended; PEP is left out like the rest.
 *   loglevel warning, into <dir>/logs/ejabberd.log (logFile); error.log beside it.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { LegacyServer, LegacyServerOptions, LegacyUser } from './legacy-server.js';
import { HOST, describeExecError, findFreePort, readIfExists, spawnSupervised, tail, waitForFeatures } from './server-process.js';

const execFileAsync = promisify(execFile);

export interface EjabberdServer extends LegacyServer {
  readonly kind: 'ejabberd';
  /** `ejabberdctl connected_users_info`: one line per session, tab-separated (JID, connection, IP, port, …). */
  connectedUsersInfo(): Promise<string>;
}

export interface EjabberdOptions extends LegacyServerOptions {
  /**
   * ejabberd's `max_user_sessions` shaper rule: resources one account may bind at once (ejabberd's
   * default 10 when unset). At 1, a new bind replaces the account's other session with `<conflict/>`.
   */
  maxUserSessions?: number;
  /** The c2s listener's `use_proxy_protocol`: every connection must start with a PROXY protocol header (v1 or v2). */
  useProxyProtocol?: boolean;
}

const EJABBERDCTL = '/usr/sbin/ejabberdctl';
/** The user ejabberdctl insists on (its INSTALLUSER); Debian's package creates it. */
const INSTALL_USER = 'ejabberd';
const MISSING_HINT = `${EJABBERDCTL} is missing: install Debian's ejabberd package (apt-get install ejabberd)`;
const START_TIMEOUT_MS = 15_000;
const CTL_TIMEOUT_MS = 10_000;
/** Ports picked from port 0 can be taken by someone else before ejabberd binds them: retry this often. */
const PORT_ATTEMPTS = 3;
/** Erlang distribution (the node's own listener, and ejabberdctl's) on loopback only. */
const DIST_ON_LOOPBACK = ['-kernel', 'inet_dist_use_interface', '{127,0,0,1}'];
/**
 * Upper bound on the node's shutdown after SIGTERM. ejabberd's own stop (c2s streams get
 * <system-shutdown/>, Mnesia closes) takes ~20 ms, but Erlang/OTP 25's init:stop() then waits a second
 * for the kernel's `user` I/O server (`erl -noinput -eval 'init:stop()'` takes 1.2 s, `halt()` 0.15 s).
 */
const SHUTDOWN_TIME_MS = 500;

export async function startEjabberd(options: EjabberdOptions = {}): Promise<EjabberdServer> {
  const erl = readEjabberdctl();
  const runAs = installUserPrefix();
  for (let attempt = 1; ; attempt++) {
    const c2sPort = await findFreePort();
    try {
      return await startOnce(options, c2sPort, erl, runAs);
    } catch (err) {
      if (!(err instanceof PortInUseError) || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

class PortInUseError extends Error {}

/**
 * What `ejabberdctl foreground` runs: the package's erl, with the package's ERL_LIBS (the architecture's
 * lib dir, /usr/lib/x86_64-linux-gnu on amd64, where ejabberd-23.01/ lives), read from the script.
 */
interface Erl {
  path: string;
  libs: string;
}

function readEjabberdctl(): Erl {
  let script: string;
  try {
    script = readFileSync(EJABBERDCTL, 'utf8');
  } catch (err) {
    throw new Error(MISSING_HINT, { cause: err });
  }
  const variable = (name: string): string => {
    const value = new RegExp(`^${name}=(["'])(.+?)\\1$`, 'm').exec(script)?.[2];
    if (value === undefined) throw new Error(`${EJABBERDCTL} does not set ${name}: not the ejabberdctl of Debian's ejabberd 23.01`);
    return value;
  };
  return { path: variable('ERL'), libs: variable('ERL_LIBS') };
}

/** What runs a program as the ejabberd user: setpriv when we are root, nothing when we are that user. */
function installUserPrefix(): string[] {
  if (process.getuid?.() === 0) return ['setpriv', `--reuid=${INSTALL_USER}`, `--regid=${INSTALL_USER}`, '--init-groups', '--'];
  const { username } = userInfo();
  if (username === INSTALL_USER) return [];
  throw new Error(`ejabberd must be started as root or as the ${INSTALL_USER} user (ejabberdctl refuses others), not as ${username}`);
}

async function startOnce(options: EjabberdOptions, c2sPort: number, erl: Erl, runAs: readonly string[]): Promise<EjabberdServer> {
  const domain = options.domain ?? 'localhost';
  const node = `smacks${randomBytes(4).toString('hex')}@localhost`;
  const dir = mkdtempSync(join(tmpdir(), 'smacks-proxy-ejabberd-'));
  const spoolDir = join(dir, 'spool');
  const logsDir = join(dir, 'logs');
  const logFile = join(logsDir, 'ejabberd.log');
  const consoleFile = join(dir, 'ejabberd.console.log');
  const configFile = join(dir, 'ejabberd.yml');
  const ctlConfigFile = join(dir, 'ejabberdctl.cfg');
  const inetrcFile = join(dir, 'inetrc');
  mkdirSync(spoolDir);
  mkdirSync(logsDir);
  writeFileSync(configFile, ejabberdConfig(domain, c2sPort, options.maxUserSessions, options.useProxyProtocol === true));
  writeFileSync(ctlConfigFile, ejabberdctlConfig(node));
  // erl reports a missing ERL_INETRC on the console; the package's own is in /etc/ejabberd.
  writeFileSync(inetrcFile, '{lookup, ["file", "native"]}.\n');
  // Erlang refuses a cookie file that anyone but its owner can read.
  writeFileSync(join(dir, '.erlang.cookie'), randomBytes(20).toString('hex'), { mode: 0o400 });
  try {
    if (runAs.length > 0) await execFileAsync('chown', ['-R', `${INSTALL_USER}:${INSTALL_USER}`, dir]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const detail = describeExecError(err, 'chown is not on PATH');
    throw new Error(`chown -R ${INSTALL_USER} ${dir} failed (does the ${INSTALL_USER} user exist?): ${detail}`, { cause: err });
  }

  // ejabberdctl's environment, for the node and for ejabberdctl itself. HOME is where Erlang finds our cookie.
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOME: dir,
    ERL_LIBS: erl.libs,
    ERL_INETRC: inetrcFile,
    ERL_CRASH_DUMP: join(logsDir, 'erl_crash.dump'),
    ERL_EPMD_ADDRESS: HOST,
    EJABBERD_CONFIG_PATH: configFile,
    EJABBERD_LOG_PATH: logFile,
  };
  const vmArgs = ['-sname', node, ...DIST_ON_LOOPBACK, '-shutdown_time', String(SHUTDOWN_TIME_MS)];
  const [command, ...args] = [...runAs, erl.path, ...vmArgs, '-mnesia', 'dir', erlangString(spoolDir), '-s', 'ejabberd', '-noinput'];
  let server = spawnSupervised(command, args, { dir, consoleFile, env });
  const describe = (): string =>
    `${[command, ...args].join(' ')}` +
    `\n--- console (${consoleFile}) ---\n${tail(consoleFile)}` +
    `\n--- log tail (${logFile}) ---\n${tail(logFile)}`;

  const ctlOptions = ['--config-dir', dir, '--config', configFile, '--ctl-config', ctlConfigFile, '--logs', logsDir, '--spool', spoolDir];
  const registerUser = async ({ username, password }: LegacyUser): Promise<void> => {
    const [ctlCommand, ...ctlArgs] = [...runAs, EJABBERDCTL, ...ctlOptions, 'register', username, domain, password];
    try {
      await execFileAsync(ctlCommand, ctlArgs, { cwd: dir, env, timeout: CTL_TIMEOUT_MS });
    } catch (err) {
      throw new Error(`ejabberdctl register ${username} ${domain} on ${node} failed: ${describeExecError(err, MISSING_HINT)}`, {
        cause: err,
      });
    }
  };

  const ready = (): Promise<void> =>
    waitForFeatures(c2sPort, domain, {
      name: 'ejabberd',
      timeoutMs: START_TIMEOUT_MS,
      describe,
      // A PROXY protocol header naming the prober itself (ejabberd 23.01 drops a v1 `UNKNOWN` one).
      ...(options.useProxyProtocol === true ? { preamble: `PROXY TCP4 ${HOST} ${HOST} 1 ${c2sPort}\r\n` } : {}),
      failed: () => {
        const spawnError = server.spawnError();
        if (spawnError !== undefined) return new Error(`could not run ${command} (setpriv is in util-linux): ${spawnError.message}`);
        if (!server.hasExited()) return undefined;
        // ejabberd stops when a listener cannot bind: "Failed to open socket at ...: address already in use".
        if (readIfExists(logFile).includes('eaddrinuse'))
          return new PortInUseError(`ejabberd could not listen on ${HOST}:${c2sPort}: ${describe()}`);
        return new Error(
          `ejabberd exited during start-up (code ${server.child.exitCode}, signal ${server.child.signalCode}): ${describe()}`,
        );
      },
    });
  try {
    await ready();
    // One ejabberdctl (a short-lived Erlang node) per account, side by side: ~0.3 s each.
    await Promise.all((options.users ?? []).map(registerUser));
  } catch (err) {
    await server.stop();
    throw err;
  }

  return {
    kind: 'ejabberd',
    domain,
    host: HOST,
    c2sPort,
    logFile,
    addUser: registerUser,
    connectedUsersInfo: async () => {
      const [ctlCommand, ...ctlArgs] = [...runAs, EJABBERDCTL, ...ctlOptions, 'connected_users_info'];
      try {
        const { stdout } = await execFileAsync(ctlCommand, ctlArgs, { cwd: dir, env, timeout: CTL_TIMEOUT_MS });
        return stdout;
      } catch (err) {
        throw new Error(`ejabberdctl connected_users_info on ${node} failed: ${describeExecError(err, MISSING_HINT)}`, { cause: err });
      }
    },
    restart: async () => {
      // The same node name and Mnesia directory: the accounts are still there.
      await server.halt(SHUTDOWN_TIME_MS + 5_000);
      server = spawnSupervised(command, args, { dir, consoleFile, env });
      await ready();
    },
    stop: () => server.stop(),
  };
}

/** Modules of a realistic small legacy deployment (see the header for what is left out, and why). */
const MODULES: Record<string, Record<string, unknown>> = {
  // ejabberdctl commands only (connected_users_info); in Debian's default config too.
  mod_admin_extra: {},
  mod_disco: {},
  mod_last: {},
  mod_offline: {},
  mod_ping: {},
  mod_private: {},
  mod_roster: {},
  mod_time: {},
  mod_vcard: { search: false },
  mod_version: {},
};

/** ejabberd.yml, as JSON (a subset of YAML, so every string is quoted the same way). */
function ejabberdConfig(domain: string, c2sPort: number, maxUserSessions: number | undefined, useProxyProtocol: boolean): string {
  const config = {
    ...(maxUserSessions === undefined ? {} : { shaper_rules: { max_user_sessions: maxUserSessions } }),
    loglevel: 'warning',
    hosts: [domain],
    certfiles: [],
    acme: { auto: false },
    listen: [
      {
        port: c2sPort,
        ip: HOST,
        module: 'ejabberd_c2s',
        backlog: 1024,
        shaper: 'none',
        starttls: false,
        starttls_required: false,
        ...(useProxyProtocol ? { use_proxy_protocol: true } : {}),
      },
    ],
    auth_method: ['internal'],
    auth_password_format: 'plain',
    disable_sasl_mechanisms: ['X-OAUTH2'],
    s2s_access: 'none',
    modules: MODULES,
  };
  return `# Generated by test/support/ejabberd.ts for one test run. Do not edit.\n${JSON.stringify(config, null, 2)}\n`;
}

/** Sourced by ejabberdctl (bash): our node and the same loopback-only distribution as the node's. */
function ejabberdctlConfig(node: string): string {
  return [
    '# Generated by test/support/ejabberd.ts for one test run. Do not edit.',
    `ERLANG_NODE=${node}`,
    `ERL_OPTIONS='${DIST_ON_LOOPBACK.join(' ')}'`,
    '',
  ].join('\n');
}

/** An Erlang string literal, as `-mnesia dir` wants its value. */
function erlangString(value: string): string {
  return `"${value.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`;
}
