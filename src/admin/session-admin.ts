import type { StreamErrorCondition } from '../errors.js';
import { bare } from '../xml/jid.js';
import type { SessionSummary } from '../session/session-summary.js';
import { sameBareJid } from '../sm/resumption.js';

/** The stream errors an operator may end a session with (RFC 6120 §4.9.3); `policy-violation` by default. */
export const KICK_CONDITIONS = [
  'policy-violation',
  'conflict',
  'not-authorized',
  'reset',
  'system-shutdown',
  'undefined-condition',
] as const satisfies readonly StreamErrorCondition[];

export type KickCondition = (typeof KICK_CONDITIONS)[number];

export function isKickCondition(value: string): value is KickCondition {
  return (KICK_CONDITIONS as readonly string[]).includes(value);
}

/** What the admin listener may do to a live session. */
export interface AdministeredSession {
  summary(): SessionSummary;
  kick(condition: KickCondition): void;
}

/** A session as the admin listener shows it (JSON): times as ISO 8601, the queue as a count. */
export interface SessionListing {
  readonly sid: string;
  readonly jid: string | null;
  readonly state: string;
  readonly transport: string | null;
  readonly remote: string | null;
  readonly since: string;
  readonly hibernatingSince: string | null;
  readonly sm: boolean;
  readonly resumable: boolean;
  readonly queued: number;
}

/**
 * Which sessions a `jid` names: a full JID names its session, a bare JID every session of the
 * account. Bare JIDs compare as resumption compares them (`sameBareJid`: ASCII case folded, README,
 * Resumption and the legacy server); the resource exactly (RFC 7622 §3.4).
 */
export function namedBy(jid: string, sessionJid: string | undefined): boolean {
  if (sessionJid === undefined) return false;
  const wantedBare = bare(jid);
  const sessionBare = bare(sessionJid);
  return (
    sameBareJid(wantedBare, sessionBare) && (wantedBare === jid || jid.slice(wantedBare.length) === sessionJid.slice(sessionBare.length))
  );
}

/** The session list and the kick of the admin listener (README, Metrics and health), over the live sessions. */
export class SessionAdmin {
  constructor(private readonly sessions: () => Iterable<AdministeredSession>) {}

  /** Every live session, or those `jid` names (a full or bare JID), oldest first. */
  list(jid?: string): SessionListing[] {
    const listed: SessionListing[] = [];
    for (const session of this.sessions()) {
      const summary = session.summary();
      if (jid === undefined || namedBy(jid, summary.jid)) listed.push(listing(summary));
    }
    return listed.sort((a, b) => a.since.localeCompare(b.since));
  }

  /** Ends the sessions `jid` names, or the one with `sid`, with `condition`; returns what they were. */
  kick(selector: { readonly jid: string } | { readonly sid: string }, condition: KickCondition): SessionListing[] {
    const chosen = [...this.sessions()].filter((session) => {
      const summary = session.summary();
      return 'sid' in selector ? summary.sid === selector.sid : namedBy(selector.jid, summary.jid);
    });
    const kicked = chosen.map((session) => listing(session.summary()));
    for (const session of chosen) session.kick(condition);
    return kicked;
  }
}

function listing(summary: SessionSummary): SessionListing {
  return {
    sid: summary.sid,
    jid: summary.jid ?? null,
    state: summary.state,
    transport: summary.transport ?? null,
    remote: summary.remote ?? null,
    since: new Date(summary.sinceMs).toISOString(),
    hibernatingSince: summary.hibernatingSinceMs === undefined ? null : new Date(summary.hibernatingSinceMs).toISOString(),
    sm: summary.smEnabled,
    resumable: summary.resumable,
    queued: summary.queued,
  };
}
