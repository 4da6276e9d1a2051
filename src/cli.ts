#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { Resolver } from 'node:dns/promises';
import { runAdminCommand, type AdminCommand } from './admin/admin-commands.js';
import { isKickCondition } from './admin/session-admin.js';
import { checkDns } from './admin/dns-check.js';
import { checkHostMeta } from './admin/host-meta-check.js';
import { readAdminToken } from './admin/admin-server.js';
import { describeConfig, loadConfig } from './config/config.js';
import { readSecretFile } from './config/secret-file.js';
import { ConfigError, ErrorCode, ProxyError } from './errors.js';
import { createLogger } from './logger.js';
import { Proxy } from './proxy.js';
import { createTlsCredentials } from './transport/tls-credentials.js';
import { pino, type Logger } from 'pino';
import { fork, type ChildProcess } from 'node:child_process';
import { HANDOFF_ENV, HANDOFF_PROTOCOL } from './upgrade/handoff-protocol.js';
import type { IpcEnd } from './upgrade/ipc-channel.js';
import { removePidFile, writePidFile } from './upgrade/pid-file.js';
import { TakeOver } from './upgrade/takeover.js';

/** Each DNS query of `--check dns` waits this long (twice at most). */
const DNS_TIMEOUT_MS = 3000;

/** Exit codes (README "Running"): stable, for service managers. */
const EXIT = {
  ok: 0,
  /** The config file is unreadable or invalid. */
  config: 2,
  /** A listener could not bind, or TLS credentials could not be loaded. */
  startup: 3,
  /** Shutdown did not finish within the grace period plus a margin; the process was forced out. */
  forced: 4,
  /** `kick`: no live session matched the JID. */
  noneMatched: 5,
  /** `sessions`, `kick`: the admin listener is not configured, cannot be reached, or refused the request. */
  unavailable: 69,
  /** `--check dns`: a DNS record would send clients where no listener of the proxy is. */
  dns: 6,
  /** Wrong command-line usage. */
  usage: 64,
} as const;

const USAGE = `usage: smacks-proxy [--check] [config-file]
       smacks-proxy --check dns [--dns-server ADDRESS[:PORT]] [config-file]
       smacks-proxy sessions [--jid JID] [--json] [config-file]
       smacks-proxy kick JID [--condition CONDITION] [--json] [config-file]
       smacks-proxy drain [--rate SESSIONS-PER-SECOND] [--json] [config-file]

  config-file   path of proxy.config.json (default: ./proxy.config.json)
  --check       validate the config, print the effective config (secrets elided), exit
  --check dns   look up each served domain's client SRV records (and, with a websocket listener, its
                XEP-0156 host-meta) and check them against the listeners
  --dns-server  ask this DNS server instead of the system's
  sessions      list the running proxy's sessions (all, or those of a full or bare JID)
  kick          end the sessions of a full or bare JID (condition: policy-violation by default)
  drain         stop accepting, say not ready, and end every session at a rate (10 per second by default)
  --json        print the admin listener's JSON answer
  --help        this text`;

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        check: { type: 'boolean' },
        help: { type: 'boolean' },
        jid: { type: 'string' },
        condition: { type: 'string' },
        json: { type: 'boolean' },
        'dns-server': { type: 'string' },
        rate: { type: 'string' },
      },
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return EXIT.usage;
  }
  if (parsed.values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  const { positionals, values } = parsed;
  const commandName = positionals[0] === 'sessions' || positionals[0] === 'kick' || positionals[0] === 'drain' ? positionals[0] : undefined;
  const dnsCheck = values.check === true && positionals[0] === 'dns';
  // A command's own operands: the JID for kick, `dns` after --check; then the config file, as without a command.
  const operands = commandName === 'kick' ? 2 : commandName !== undefined || dnsCheck ? 1 : 0;
  const misused =
    positionals.length > operands + 1 ||
    (commandName === 'kick' && positionals[1] === undefined) ||
    (commandName === undefined && values.json === true) ||
    (commandName !== undefined && values.check === true) ||
    (commandName !== 'sessions' && values.jid !== undefined) ||
    (commandName !== 'kick' && values.condition !== undefined) ||
    (commandName !== 'drain' && values.rate !== undefined) ||
    (!dnsCheck && values['dns-server'] !== undefined) ||
    (commandName === 'kick' && (positionals[1] === '' || (values.condition !== undefined && !isKickCondition(values.condition)))) ||
    values.jid === '';
  if (misused) {
    process.stderr.write(`${USAGE}\n`);
    return EXIT.usage;
  }
  const path = positionals[operands] ?? 'proxy.config.json';

  let config;
  try {
    config = await loadConfig(path);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    // The message lists every problem already (one per line, with its JSON path).
    process.stderr.write(`${err.code}: ${err.message}\n`);
    return EXIT.config;
  }
  if (commandName !== undefined) {
    const json = values.json === true;
    const command: AdminCommand =
      commandName === 'kick'
        ? { name: 'kick', jid: positionals[1]!, condition: values.condition, json }
        : commandName === 'drain'
          ? { name: 'drain', rate: values.rate, json }
          : { name: 'sessions', jid: values.jid, json };
    const result = await runAdminCommand(command, config.admin);
    process.stdout.write(result.stdout);
    process.stderr.write(result.stderr);
    return result.outcome === 'ok' ? EXIT.ok : result.outcome === 'none-matched' ? EXIT.noneMatched : EXIT.unavailable;
  }
  if (dnsCheck) {
    const resolver = new Resolver({ timeout: DNS_TIMEOUT_MS, tries: 2 });
    if (values['dns-server'] !== undefined) resolver.setServers([values['dns-server']]);
    const findings = [...(await checkDns(config, resolver)), ...(await checkHostMeta(config, resolver))];
    for (const { level, text } of findings) process.stdout.write(`${level}: ${text}\n`);
    return findings.some((finding) => finding.level === 'error') ? EXIT.dns : EXIT.ok;
  }
  if (values.check === true) {
    // Like `nginx -t`: every certificate is loaded and its key matched, and the admin token read, as at start-up; warnings
    // (a domain no certificate covers) go to stderr.
    try {
      await createTlsCredentials(config.tls, Object.keys(config.domains), pino({ level: 'warn' }, process.stderr));
      if (config.admin?.tokenFile !== undefined) await readAdminToken(config.admin.tokenFile);
      if (config.webhook !== undefined) await readSecretFile(config.webhook.secretFile, '/webhook/secretFile', ErrorCode.WEBHOOK_SECRET);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`${err.code}: ${err.message}\n`);
      return EXIT.startup;
    }
    process.stdout.write(`${describeConfig(config)}\n`);
    process.stderr.write(`${path}: valid\n`);
    return EXIT.ok;
  }

  const log = createLogger(config.log);
  const proxy = new Proxy(config, log);
  // Started by a running proxy's upgrade (README, Upgrading): its listeners and sessions come over IPC.
  const handoff = process.env[HANDOFF_ENV];
  const takeOver =
    handoff !== undefined && process.send !== undefined ? new TakeOver(process as IpcEnd, log.child({ component: 'upgrade' })) : undefined;
  const pidFile = config.pidFile;
  // Handlers first: a signal that arrives while the proxy is still starting (it logs 'listening'
  // before its start-up probe of the legacy servers is done) stops it cleanly once started, instead
  // of ending the process by the signal's default action. README, Signals: every signal an operator
  // or a tool may send has a meaning, and none ends the process without ending its sessions.
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  let markStarted = (): void => undefined;
  const started = new Promise<void>((resolve) => (markStarted = resolve));
  let upgradedAway = (): void => undefined;
  const handedOver = new Promise<'upgraded'>((resolve) => (upgradedAway = () => resolve('upgraded')));
  process.on('SIGHUP', () => {
    log.info({ signal: 'SIGHUP' }, 'signal received; reloading');
    started
      .then(() => reload(path, proxy, log))
      .catch((err: unknown) => log.error({ err: (err as Error).message }, 'reload failed; nothing changed'));
  });
  // A listener of its own keeps Node from opening its inspector on 127.0.0.1:9229 (its default for SIGUSR1).
  process.on('SIGUSR1', () => log.info({ signal: 'SIGUSR1' }, 'signal received; it has no meaning here (logs go to stdout)'));
  // One upgrade at a time; a process that is still taking over from its predecessor waits until it runs alone.
  let upgrading = takeOver !== undefined;
  process.on('SIGUSR2', () => {
    if (upgrading) {
      log.warn({ signal: 'SIGUSR2' }, 'signal received; an upgrade is in progress already: nothing done');
      return;
    }
    upgrading = true;
    log.info({ signal: 'SIGUSR2' }, 'signal received; upgrading: starting the new process');
    void started
      .then(() => proxy.upgrade(startNext()))
      .then((outcome) => {
        if (outcome.ok) {
          const { handedOver: sessions, left, durationMs } = outcome;
          log.info({ handedOver: sessions, left, durationMs }, 'upgrade done; the new process serves; this one ends what could not move');
          upgradedAway();
          return;
        }
        log.error(
          { code: outcome.error.code, err: outcome.error.message, handedOver: outcome.handedOver, newProcessExit: outcome.exit },
          'upgrade failed; this process serves on',
        );
        upgrading = false;
        // The new process may have named itself there already.
        if (pidFile !== undefined) void writePidFile(pidFile).catch((err: unknown) => pidFileFailed(log, err));
      })
      .catch((err: unknown) => {
        log.error(
          { code: ErrorCode.UPGRADE, err: (err as Error).message },
          'upgrade failed: the new process could not be started; this process serves on',
        );
        upgrading = false;
      });
  });
  try {
    if (takeOver !== undefined) {
      const refusal = TakeOver.refusal(handoff!);
      if (refusal !== undefined) {
        log.fatal({ code: ErrorCode.UPGRADE, err: refusal }, 'upgrade refused');
        await takeOver.refuse(refusal);
        return EXIT.startup;
      }
      await takeOver.start(proxy);
      // At once: should the predecessor die from here on, systemd finds this process in the PID file.
      if (pidFile !== undefined) await writePidFile(pidFile).catch((err: unknown) => pidFileFailed(log, err));
    } else {
      await proxy.start();
      if (pidFile !== undefined) await writePidFile(pidFile);
    }
    markStarted();
  } catch (err) {
    const code = err instanceof ProxyError ? err.code : undefined;
    log.fatal({ code, err: (err as Error).message }, 'start-up failed');
    await proxy.stop();
    // The file was valid; what failed is the machine's side (a port, a certificate file).
    return EXIT.startup;
  }
  if (takeOver !== undefined) {
    void takeOver.receiveSessions(proxy).then((adopted) => {
      upgrading = false;
      if (process.connected) process.disconnect();
      log.info({ adopted }, 'upgrade: taken over; this process runs on alone');
    });
  }

  const ending = await Promise.race([signalled, handedOver]);
  log.info(
    { signal: ending === 'upgraded' ? undefined : ending },
    ending === 'upgraded' ? 'stopping after the upgrade' : 'signal received',
  );
  return new Promise((resolve) => {
    const force = setTimeout(() => resolve(EXIT.forced), (config.shutdownGraceSeconds + 5) * 1000);
    force.unref();
    void proxy
      .stop()
      .then(() => (pidFile === undefined ? undefined : removePidFile(pidFile)))
      .then(() => {
        clearTimeout(force);
        resolve(EXIT.ok);
      });
  });
}

function pidFileFailed(log: Logger, err: unknown): void {
  log.error({ err: (err as Error).message }, 'the PID file cannot be written; a service manager that reads it will not find this process');
}

/** The next process of an upgrade: this one's code as it is on disk now, its arguments, and an IPC channel for the hand-off. */
function startNext(): ChildProcess {
  return fork(process.argv[1]!, process.argv.slice(2), {
    env: { ...process.env, [HANDOFF_ENV]: String(HANDOFF_PROTOCOL) },
    execArgv: process.execArgv,
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
  });
}

/** SIGHUP: the config file is read again; an invalid one changes nothing (README, Reloading). */
async function reload(path: string, proxy: Proxy, log: Logger): Promise<void> {
  let config;
  try {
    config = await loadConfig(path);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    log.error(
      { code: err.code, problems: err.problems.length > 0 ? err.problems : [err.message] },
      'reload refused: the config file is not valid; nothing changed',
    );
    return;
  }
  await proxy.reload(config);
}

main().then(
  (code) => {
    process.exitCode = code;
    // Sockets still unref'd or timers from dependencies must not keep a stopped proxy alive.
    setTimeout(() => process.exit(code), 100).unref();
  },
  (err: unknown) => {
    process.stderr.write(`smacks-proxy: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
