import type { AdminConfig } from '../config/config.js';
import { readAdminToken } from './admin-server.js';
import type { SessionListing } from './session-admin.js';

/** How long a command waits for the admin listener. */
const REQUEST_TIMEOUT_MS = 10_000;

/** What a command prints, and the exit code it asks for (cli.ts maps them). */
export interface CommandResult {
  readonly outcome: 'ok' | 'none-matched' | 'unavailable';
  readonly stdout: string;
  readonly stderr: string;
}

/** A request of `smacks-proxy sessions`, `kick` or `drain` (README, Metrics and health). */
export type AdminCommand =
  | { readonly name: 'sessions'; readonly jid: string | undefined; readonly json: boolean }
  | { readonly name: 'kick'; readonly jid: string; readonly condition: string | undefined; readonly json: boolean }
  | { readonly name: 'drain'; readonly rate: string | undefined; readonly json: boolean };

/**
 * Runs a command against the running proxy's admin listener, found through its config (like
 * `prosodyctl` and `ejabberdctl` reach their server): the listener's address (a wildcard address
 * means this host's loopback) and the token file, which the caller must be allowed to read.
 */
export async function runAdminCommand(command: AdminCommand, admin: AdminConfig | undefined): Promise<CommandResult> {
  if (admin === undefined) {
    return unavailable(
      'the config has no admin section: the sessions and kick commands need the admin listener (README, Metrics and health)',
    );
  }
  let token: string | undefined;
  try {
    token = admin.tokenFile === undefined ? undefined : await readAdminToken(admin.tokenFile);
  } catch (err) {
    return unavailable((err as Error).message);
  }
  const base = `http://${urlHost(admin.host)}:${admin.port}`;
  const path = requestPath(command);
  let response: Response;
  try {
    response = await fetch(base + path, {
      method: command.name === 'sessions' ? 'GET' : 'POST',
      headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
    return unavailable(`cannot reach the admin listener at ${base}: ${cause}`);
  }
  let body: string;
  try {
    body = await response.text();
  } catch (err) {
    return unavailable(`the admin listener at ${base} did not finish its answer: ${(err as Error).message}`);
  }
  if (command.name === 'kick' && response.status === 404) {
    return { outcome: 'none-matched', stdout: command.json ? body : '', stderr: `no session of ${command.jid}\n` };
  }
  if (response.status !== 200 && response.status !== 202)
    return unavailable(`the admin listener answered HTTP ${response.status}: ${body.trim()}`);
  if (command.json) return { outcome: 'ok', stdout: body, stderr: '' };
  let answer: { sessions?: SessionListing[] | number; kicked?: SessionListing[]; ratePerSecond?: number };
  try {
    answer = JSON.parse(body) as typeof answer;
  } catch {
    return unavailable(`${base} did not answer as the admin listener does (is admin.port another service's?)`);
  }
  if (command.name === 'drain') {
    const stdout = `draining: ${String(answer.sessions)} sessions left, ending ${String(answer.ratePerSecond)} per second; /readyz says 503\n`;
    return { outcome: 'ok', stdout, stderr: '' };
  }
  const listed = ((command.name === 'sessions' ? answer.sessions : answer.kicked) ?? []) as SessionListing[];
  const heading = command.name === 'kick' ? `kicked ${listed.length} ${listed.length === 1 ? 'session' : 'sessions'}\n` : '';
  return { outcome: 'ok', stdout: heading + table(listed), stderr: '' };
}

function requestPath(command: AdminCommand): string {
  switch (command.name) {
    case 'sessions':
      return `/sessions${command.jid === undefined ? '' : `?jid=${encodeURIComponent(command.jid)}`}`;
    case 'kick':
      return `/kick?jid=${encodeURIComponent(command.jid)}${command.condition === undefined ? '' : `&condition=${encodeURIComponent(command.condition)}`}`;
    case 'drain':
      return `/drain${command.rate === undefined ? '' : `?rate=${encodeURIComponent(command.rate)}`}`;
  }
}

function unavailable(message: string): CommandResult {
  return { outcome: 'unavailable', stdout: '', stderr: `${message}\n` };
}

/** The host to connect to for a listener bound to `host`: a wildcard address is reached on loopback; IPv6 in brackets. */
function urlHost(host: string): string {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  if (bare === '0.0.0.0') return '127.0.0.1';
  if (bare === '::') return '[::1]';
  return bare.includes(':') ? `[${bare}]` : bare;
}

/** The sessions as aligned columns, one line each, with a header line. */
function table(sessions: readonly SessionListing[]): string {
  const rows = [
    ['SID', 'JID', 'STATE', 'TRANSPORT', 'REMOTE', 'SINCE', 'QUEUED'],
    ...sessions.map((s) => [s.sid, s.jid ?? '-', s.state, s.transport ?? '-', s.remote ?? '-', s.since, String(s.queued)]),
  ];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return (
    rows
      .map((row) =>
        row
          .map((cell, column) => cell.padEnd(widths[column]!))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}
