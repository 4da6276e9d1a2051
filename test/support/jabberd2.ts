/**
 * A throwaway jabberd2 2.7 (Debian's `jabberd2` package) for end-to-end tests and benchmarks: the
 * *legacy* server the proxy fronts. It has no XEP-0198 of today (urn:xmpp:sm:3); its sx layer always
 * declares `xmlns:ack` (an early XEP-0198 draft) on the stream header and offers `<ack:ack/>` after
 * auth, which the proxy must not take for stream management.
 *
 * jabberd2 behaviour tests meet (2.7.0, seen here): c2s closes the stream with not-authorized
 * ("stanza sent before session start") if a stanza follows the bind before its result arrives; and
 * c2s keys sessions by fd number, so a connection opened right after a bound session closed can get
 * that fd and, with it, the sm's late answer for the old session: the new stream then ends with
 * <internal-server-error/> "internal server error". jabberd2 never sets TCP_NODELAY.
 *
 * jabberd2 is three processes here (s2s is not started): the router, and the session manager (sm)
 * and client connector (c2s) that log in to it as components. Everything lives in a fresh temp dir:
 * router.xml, router-users.xml, router-filter.xml, sm.xml, c2s.xml, the sqlite database jabberd2.db
 * (accounts, rosters, offline messages), and each process's log (router.log, sm.log, c2s.log; c2s.log is
 * `logFile`) and console (<name>.console.log). The distro's /etc/jabberd2 and /var/lib/jabberd2 are
 * never read or written: every path jabberd2 would default to there is set. No pid files (we hold the
 * children's pids). jabberd2 never forks nor changes user, so it runs in the foreground as whoever
 * runs the tests (root in CI) and needs nothing of the `jabber` user.
 *
 * Commands it runs:
 *   sqlite3 -batch -bail -cmd '.timeout 5000' <dir>/jabberd2.db  < the package's schema
 *       (/usr/share/doc/jabberd2/db-setup.sqlite.gz) and INSERT INTO authreg ... (before start)
 *   /usr/sbin/jabberd2-router -c <dir>/router.xml   (foreground child; started first, then we wait until
 *                                                     its port accepts connections)
 *   /usr/sbin/jabberd2-sm -c <dir>/sm.xml            (foreground child)
 *   /usr/sbin/jabberd2-c2s -c <dir>/c2s.xml          (foreground child; ready once it answers a stream
 *       header with <stream:features>: c2s listens only once it is logged in to the router, and answers
 *       host-gone instead of features until the sm has bound the domain there)
 *   sqlite3 ... < INSERT INTO authreg ...             (addUser, into the running server's database)
 * stop() stops c2s, then sm, then the router (each SIGTERM, SIGKILL after 5 s) and removes the dir.
 *
 * Configuration that differs from jabberd2's defaults or from Debian's /etc/jabberd2, and why:
 *   all:    log type file into the dir. <router><retry> init 0, lost 0: sm and c2s exit at once instead
 *           of sleeping 2 s between reconnects, so a start-up failure shows immediately and nothing
 *           lingers if the router goes. The router login is `jabberd` with a random secret.
 *   router: <local> on 127.0.0.1 at a free port, users from our router-users.xml, no <secret> (no
 *           XEP-0114 components). <aci> acl all for `jabberd`: sm and c2s both log in as that user and
 *           bind other names (`sm`, `c2s`, the domain); without it the router refuses (403) and c2s
 *           never listens. <filter> our empty router-filter.xml, or it would read /etc/jabberd2's.
 *   sm:     <local><id> the domain. <storage> sqlite in the dir, busy-timeout 5000 ms (addUser writes
 *           to the same database while the server runs) and PRAGMA synchronous = OFF (a throwaway
 *           database; fewer fsyncs, shorter session start and end). <user><auto-create/>: accounts are
 *           rows in authreg that c2s checks; the sm creates its own user record at the first session
 *           (without it the sm refuses sessions of users it did not create, and a bind gets no answer).
 *           Module chains and <discovery><agents/> are Debian's.
 *   c2s:    <local> the domain at 127.0.0.1:<free port>; no pemfile, so no STARTTLS and no SSL port; no
 *           register-enable (Debian enables in-band registration: accounts come from us here).
 *           <io><limits>: bytes, stanzas and connects 0 (off; Debian allows 1000 stanzas/s) so tests
 *           sending many stanzas or connecting often are not throttled; stanzasize 262144 (Debian 65535).
 *           <authreg> sqlite, same database and busy-timeout; plaintext passwords (the default). SASL
 *           PLAIN, DIGEST-MD5, CRAM-MD5, SCRAM-SHA-1 and SCRAM-SHA-256 without TLS (Debian: PLAIN and
 *           DIGEST-MD5); iq-auth (XEP-0078) plain and digest as in Debian.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import type { LegacyServer, LegacyServerOptions, LegacyUser } from './legacy-server.js';
import {
  HOST,
  describeExecError,
  findFreePort,
  readIfExists,
  spawnSupervised,
  tail,
  waitForFeatures,
  waitForListening,
  xmlAttr,
  type SupervisedProcess,
} from './server-process.js';

const execFileAsync = promisify(execFile);

export interface Jabberd2Server extends LegacyServer {
  readonly kind: 'jabberd2';
}

const SCHEMA_FILE = '/usr/share/doc/jabberd2/db-setup.sqlite.gz';
const PACKAGE_HINT = "install Debian's jabberd2 and sqlite3 packages (apt-get install jabberd2 sqlite3)";
const START_TIMEOUT_MS = 15_000;
/** Ports picked from port 0 can be taken by someone else before jabberd2 binds them: retry this often. */
const PORT_ATTEMPTS = 3;
/** The user sm and c2s log in to the router as. */
const ROUTER_USER = 'jabberd';

export async function startJabberd2(options: LegacyServerOptions = {}): Promise<Jabberd2Server> {
  const schema = readSchema();
  for (let attempt = 1; ; attempt++) {
    const routerPort = await findFreePort();
    let c2sPort = await findFreePort();
    while (c2sPort === routerPort) c2sPort = await findFreePort();
    try {
      return await startOnce(options, schema, routerPort, c2sPort);
    } catch (err) {
      if (!(err instanceof PortInUseError) || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

class PortInUseError extends Error {}

type ComponentName = 'router' | 'sm' | 'c2s';

interface Component {
  readonly name: ComponentName;
  readonly command: string;
  readonly configFile: string;
  readonly logFile: string;
  readonly consoleFile: string;
  /** What the component logs when its port is taken (it exits then). */
  readonly portInUse: string | undefined;
}

async function startOnce(options: LegacyServerOptions, schema: string, routerPort: number, c2sPort: number): Promise<Jabberd2Server> {
  const domain = options.domain ?? 'localhost';
  const dir = mkdtempSync(join(tmpdir(), 'smacks-proxy-jabberd2-'));
  const dbFile = join(dir, 'jabberd2.db');
  const component = (name: ComponentName, portInUse?: string): Component => ({
    name,
    command: `/usr/sbin/jabberd2-${name}`,
    configFile: join(dir, `${name}.xml`),
    logFile: join(dir, `${name}.log`),
    consoleFile: join(dir, `${name}.console.log`),
    portInUse,
  });
  const router = component('router', 'unable to listen');
  const sm = component('sm');
  const c2s = component('c2s', 'failed to listen');
  const secret = randomBytes(16).toString('hex');
  const values: ConfigValues = { dir, dbFile, domain, routerPort, c2sPort, secret };
  writeFileSync(join(dir, 'router-users.xml'), routerUsers(secret));
  writeFileSync(join(dir, 'router-filter.xml'), '<filter/>\n');
  writeFileSync(router.configFile, routerConfig(values, router.logFile));
  writeFileSync(sm.configFile, smConfig(values, sm.logFile));
  writeFileSync(c2s.configFile, c2sConfig(values, c2s.logFile));

  const sql = async (statements: string, what: string): Promise<void> => {
    try {
      const sqlite3 = execFileAsync('sqlite3', ['-batch', '-bail', '-cmd', '.timeout 5000', dbFile], { cwd: dir, timeout: 10_000 });
      sqlite3.child.stdin?.end(statements);
      await sqlite3;
    } catch (err) {
      throw new Error(`sqlite3 ${dbFile} (${what}) failed: ${describeExecError(err, `sqlite3 is not on PATH: ${PACKAGE_HINT}`)}`, {
        cause: err,
      });
    }
  };
  const addUser = (user: LegacyUser): Promise<void> => sql(insertUser(user, domain), `add ${user.username}@${domain}`);

  try {
    await sql(schema + (options.users ?? []).map((user) => insertUser(user, domain)).join(''), 'schema and accounts');
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const started: { component: Component; supervised: SupervisedProcess }[] = [];
  const start = (c: Component): void => {
    started.push({ component: c, supervised: spawnSupervised(c.command, ['-c', c.configFile], { dir, consoleFile: c.consoleFile }) });
  };
  const describe = (): string =>
    started
      .map(
        ({ component: c }) =>
          `\n${c.command} -c ${c.configFile}` +
          `\n--- console (${c.consoleFile}) ---\n${tail(c.consoleFile)}` +
          `\n--- log tail (${c.logFile}) ---\n${tail(c.logFile)}`,
      )
      .join('');
  const failed = (): Error | undefined => {
    for (const { component: c, supervised } of started) {
      const spawnError = supervised.spawnError();
      if (spawnError !== undefined) return new Error(`could not run ${c.command} (${PACKAGE_HINT}): ${spawnError.message}`);
      if (!supervised.hasExited()) continue;
      if (c.portInUse !== undefined && readIfExists(c.logFile).includes(c.portInUse)) {
        return new PortInUseError(`jabberd2 ${c.name} could not listen on its port: ${describe()}`);
      }
      return new Error(
        `jabberd2 ${c.name} exited during start-up (code ${supervised.child.exitCode}, signal ${supervised.child.signalCode}): ${describe()}`,
      );
    }
    return undefined;
  };
  const stop = async (): Promise<void> => {
    for (const { supervised } of [...started].reverse()) await supervised.stop();
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  try {
    start(router);
    await waitForListening(routerPort, { name: 'jabberd2 router', timeoutMs: START_TIMEOUT_MS, failed, describe });
    start(sm);
    start(c2s);
    // Polled every 10 ms first: waitForFeatures alone polls every 100 ms, and c2s takes about that long to start.
    await waitForListening(c2sPort, { name: 'jabberd2 c2s', timeoutMs: deadline - Date.now(), failed, describe });
    await waitForFeatures(c2sPort, domain, { name: 'jabberd2 c2s', timeoutMs: deadline - Date.now(), failed, describe });
  } catch (err) {
    await stop();
    throw err;
  }

  // No restart: five processes with their own start order; restarts are tested on Prosody and ejabberd.
  return { kind: 'jabberd2', domain, host: HOST, c2sPort, logFile: c2s.logFile, addUser, restart: undefined, stop };
}

function readSchema(): string {
  if (!existsSync(SCHEMA_FILE)) {
    throw new Error(
      `${SCHEMA_FILE} (jabberd2's sqlite schema) is missing: ${PACKAGE_HINT}, ` +
        'and do not exclude /usr/share/doc/jabberd2 with a dpkg path-exclude',
    );
  }
  return gunzipSync(readFileSync(SCHEMA_FILE)).toString('utf8');
}

/** authreg is what c2s checks passwords against (plaintext); realm is the domain (c2s's default). */
function insertUser({ username, password }: LegacyUser, domain: string): string {
  return `\nINSERT INTO authreg (username, realm, password) VALUES (${sqlText(username)}, ${sqlText(domain)}, ${sqlText(password)});`;
}

function sqlText(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

interface ConfigValues {
  dir: string;
  dbFile: string;
  domain: string;
  routerPort: number;
  c2sPort: number;
  secret: string;
}

function routerUsers(secret: string): string {
  return `<users><user><name>${ROUTER_USER}</name><secret>${secret}</secret></user></users>\n`;
}

function routerConfig(v: ConfigValues, logFile: string): string {
  return `<!-- Generated by test/support/jabberd2.ts for one test run. Do not edit. -->
<router>
  <log type='file'><file>${xmlAttr(logFile)}</file></log>
  <local>
    <ip>${HOST}</ip>
    <port>${v.routerPort}</port>
    <users>${xmlAttr(join(v.dir, 'router-users.xml'))}</users>
  </local>
  <aci>
    <acl type='all'><user>${ROUTER_USER}</user></acl>
    <filter>${xmlAttr(join(v.dir, 'router-filter.xml'))}</filter>
  </aci>
</router>
`;
}

/** How sm and c2s log in to the router. */
function routerLogin(v: ConfigValues): string {
  return `  <router>
    <ip>${HOST}</ip>
    <port>${v.routerPort}</port>
    <user>${ROUTER_USER}</user>
    <pass>${v.secret}</pass>
    <retry><init>0</init><lost>0</lost></retry>
  </router>`;
}

function sqliteDatabase(v: ConfigValues): string {
  return `<sqlite>
      <dbname>${xmlAttr(v.dbFile)}</dbname>
      <sql>PRAGMA synchronous = OFF;</sql>
      <busy-timeout>5000</busy-timeout>
    </sqlite>`;
}

/** Debian's sm.xml module chains (empty ones left out). */
const SM_CHAINS: Readonly<Record<string, readonly string[]>> = {
  'sess-start': ['status'],
  'sess-end': ['status', 'iq-last'],
  'in-sess': [
    'validate',
    'status',
    'privacy',
    'roster',
    'vacation',
    'iq-vcard',
    'iq-ping',
    'iq-private',
    'disco',
    'amp',
    'offline',
    'announce',
    'presence',
    'deliver',
  ],
  'in-router': ['session', 'validate', 'presence', 'privacy'],
  'out-router': ['privacy'],
  'pkt-sm': ['iq-last', 'iq-ping', 'iq-time', 'iq-version', 'amp', 'disco', 'announce', 'help', 'echo', 'status', 'presence'],
  'pkt-user': ['roster', 'presence', 'disco', 'iq-vcard', 'amp', 'deliver', 'vacation', 'offline', 'iq-last'],
  'pkt-router': ['session', 'disco'],
  'user-load': ['active', 'roster', 'roster-publish', 'privacy', 'vacation'],
  'user-create': ['active', 'template-roster'],
  'user-delete': ['active', 'announce', 'offline', 'privacy', 'roster', 'vacation', 'status', 'iq-last', 'iq-private', 'iq-vcard'],
  'disco-extend': ['iq-version', 'help'],
};

function smConfig(v: ConfigValues, logFile: string): string {
  const chains = Object.entries(SM_CHAINS)
    .map(([id, modules]) => `    <chain id='${id}'>${modules.map((m) => `<module>${m}</module>`).join('')}</chain>`)
    .join('\n');
  return `<!-- Generated by test/support/jabberd2.ts for one test run. Do not edit. -->
<sm>
${routerLogin(v)}
  <log type='file'><file>${xmlAttr(logFile)}</file></log>
  <local><id>${xmlAttr(v.domain)}</id></local>
  <storage>
    <driver>sqlite</driver>
    ${sqliteDatabase(v)}
  </storage>
  <modules>
${chains}
  </modules>
  <discovery><agents/></discovery>
  <user><auto-create/></user>
</sm>
`;
}

function c2sConfig(v: ConfigValues, logFile: string): string {
  return `<!-- Generated by test/support/jabberd2.ts for one test run. Do not edit. -->
<c2s>
${routerLogin(v)}
  <log type='file'><file>${xmlAttr(logFile)}</file></log>
  <local>
    <id>${xmlAttr(v.domain)}</id>
    <ip>${HOST}</ip>
    <port>${v.c2sPort}</port>
  </local>
  <io>
    <limits>
      <bytes>0</bytes>
      <stanzas>0</stanzas>
      <connects>0</connects>
      <stanzasize>262144</stanzasize>
    </limits>
  </io>
  <authreg>
    <module>sqlite</module>
    <mechanisms>
      <traditional><plain/><digest/></traditional>
      <sasl><plain/><digest-md5/><cram-md5/><scram-sha-1/><scram-sha-256/></sasl>
    </mechanisms>
    ${sqliteDatabase(v)}
  </authreg>
</c2s>
`;
}
