/**
 * The legacy XMPP servers the end-to-end suites run against, behind one interface: Debian 12's
 * Prosody 0.12 (mod_smacks left out), ejabberd 23.01 (mod_stream_mgmt left out) and jabberd2 2.7.
 * Each is started by the tests on its own free port under a temporary directory, with its accounts
 * created before it starts, and stopped (only what was started) at the end.
 *
 * `SMACKS_TEST_SERVERS=prosody,jabberd2` limits the suites to some of them (default: all three).
 */
export type LegacyServerKind = 'prosody' | 'ejabberd' | 'jabberd2';

export interface LegacyUser {
  username: string;
  password: string;
}

export interface LegacyServer {
  readonly kind: LegacyServerKind;
  /** The served domain (virtual host). */
  readonly domain: string;
  readonly host: '127.0.0.1';
  /** Plain c2s port on 127.0.0.1: the proxy's hop (no TLS, PLAIN allowed). */
  readonly c2sPort: number;
  /** The server's own log. Removed by stop(); read it before, when debugging. */
  readonly logFile: string;
  /** Registers one more account on the running server. */
  addUser(user: LegacyUser): Promise<void>;
  /**
   * Stops the server as an operator's restart does (SIGTERM: it ends every client stream) and
   * starts it again on the same port with the same accounts; resolves once it answers again.
   * Undefined for a server the harness cannot restart (jabberd2: five processes).
   */
  readonly restart: (() => Promise<void>) | undefined;
  /** Stops the server (SIGTERM, then SIGKILL) and removes its temporary directory. Idempotent. */
  stop(): Promise<void>;
}

export interface LegacyServerOptions {
  /** Accounts registered before start. */
  users?: LegacyUser[];
  /** The served domain. Default 'localhost'. */
  domain?: string;
}

/** Where the servers behave differently, as the suites must expect it (found by running them). */
export interface LegacyServerBehaviour {
  /** RFC 6121 §4.2.2: initial presence is also sent to the resource that sent it (jabberd2 2.7, RFC 3921 era, does not). */
  readonly echoesOwnPresence: boolean;
  /** The `<text/>` of the `<conflict/>` stream error that ends an older stream binding the same resource (jabberd2 sends none). */
  readonly conflictText: string | undefined;
  /**
   * A login as `ALICE` for the account `alice`: authenticated and bound as `alice@…` (Prosody
   * applies nodeprep), authenticated and bound as typed, `ALICE@…` (ejabberd 23.01), or refused
   * (jabberd2 2.7 compares user names byte for byte).
   */
  readonly upperCaseLogin: 'binds-canonical' | 'binds-as-typed' | 'refused';
}

export const BEHAVIOUR: Readonly<Record<LegacyServerKind, LegacyServerBehaviour>> = {
  prosody: { echoesOwnPresence: true, conflictText: 'Replaced by new connection', upperCaseLogin: 'binds-canonical' },
  ejabberd: { echoesOwnPresence: true, conflictText: 'Replaced by new connection', upperCaseLogin: 'binds-as-typed' },
  jabberd2: { echoesOwnPresence: false, conflictText: undefined, upperCaseLogin: 'refused' },
};

const ALL_LEGACY_SERVERS: readonly LegacyServerKind[] = ['prosody', 'ejabberd', 'jabberd2'];

/** The servers this run covers: all three, or those named in SMACKS_TEST_SERVERS. */
export function legacyServersUnderTest(): LegacyServerKind[] {
  const wanted = process.env.SMACKS_TEST_SERVERS;
  if (wanted === undefined || wanted.trim() === '') return [...ALL_LEGACY_SERVERS];
  const kinds = wanted.split(',').map((name) => name.trim());
  for (const kind of kinds) {
    if (!(ALL_LEGACY_SERVERS as readonly string[]).includes(kind)) {
      throw new Error(`SMACKS_TEST_SERVERS names '${kind}'; known servers: ${ALL_LEGACY_SERVERS.join(', ')}`);
    }
  }
  return kinds as LegacyServerKind[];
}

export async function startLegacyServer(kind: LegacyServerKind, options: LegacyServerOptions = {}): Promise<LegacyServer> {
  switch (kind) {
    case 'prosody':
      return (await import('./prosody.js')).startProsody(options);
    case 'ejabberd':
      return (await import('./ejabberd.js')).startEjabberd(options);
    case 'jabberd2':
      return (await import('./jabberd2.js')).startJabberd2(options);
  }
}
