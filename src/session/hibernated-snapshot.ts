import { InvariantError } from '../errors.js';
import { isSeq } from '../sm/sequence.js';
import { isSmNamespace } from '../xml/namespaces.js';
import type { StreamManagementSnapshot } from '../sm/stream-management.js';

/**
 * A hibernated session written out for another process of the proxy (an upgrade hands its
 * hibernated sessions over with their upstream sockets, README "Upgrading"): versioned, plain JSON
 * data. Times are wall-clock milliseconds (`Date.now()`), so that the next process counts the
 * hibernation on.
 *
 * Version 1 holds what resumption needs: the session's log id and client address key, the
 * account's bound JID and domain, when the hibernation began and when it expires, whether the
 * client's presence is out there, the legacy server's stream features, what the features (session
 * hooks) keep for it by hook name, and the XEP-0198 state
 * (SM-ID, namespace, `h`, the unacked queue with each stanza's original bytes, base64, and
 * first-sent time for the `<delay/>` on replay).
 */
export interface HibernatedSessionV1 {
  readonly version: 1;
  readonly sid: string;
  readonly addressKey: string;
  readonly domain: string;
  /** The full JID the legacy server bound for the session. */
  readonly jid: string;
  readonly sinceMs: number;
  readonly expiresAtMs: number;
  readonly presenceShown: boolean;
  readonly serverFeatures: string | null;
  readonly features: Readonly<Record<string, unknown>>;
  readonly sm: {
    readonly ns: string;
    readonly id: string;
    readonly hibernationMs: number;
    readonly h: number;
    readonly queue: {
      readonly sent: number;
      readonly acked: number;
      readonly ackedTotal: number;
      readonly entries: readonly { readonly bytes: string; readonly sentAtMs: number }[];
    };
  };
}

/** What a hibernating session is made of, for {@link writeSnapshot}. */
export interface HibernatedSession {
  /** The session's id in log lines; it keeps it in the next process. */
  readonly sid: string;
  /** What the per-address limits count its client as (ip-range.ts `addressKey`). */
  readonly addressKey: string;
  readonly domain: string;
  readonly jid: string;
  readonly sinceMs: number;
  readonly expiresAtMs: number;
  /** The client's available presence is out there: the session's end tells the legacy server it is gone (client-presence.ts). */
  readonly presenceShown: boolean;
  /** The legacy server's `<stream:features/>` after authentication, as XML (`SessionHandle.serverOffers`). */
  readonly serverFeatures: string | undefined;
  /** What each session hook keeps for the session, by hook name (hooks.ts `handedOff`): plain JSON data. */
  readonly features: Readonly<Record<string, unknown>>;
  readonly sm: StreamManagementSnapshot;
}

export function writeSnapshot(session: HibernatedSession): HibernatedSessionV1 {
  const { sm } = session;
  if (!sm.resumable) throw new InvariantError('only a resumable session hibernates');
  return {
    version: 1,
    sid: session.sid,
    addressKey: session.addressKey,
    domain: session.domain,
    jid: session.jid,
    sinceMs: session.sinceMs,
    expiresAtMs: session.expiresAtMs,
    presenceShown: session.presenceShown,
    serverFeatures: session.serverFeatures ?? null,
    features: session.features,
    sm: {
      ns: sm.ns,
      id: sm.id,
      hibernationMs: sm.hibernationMs,
      h: sm.h,
      queue: {
        sent: sm.queue.sent,
        acked: sm.queue.acked,
        ackedTotal: sm.queue.ackedTotal,
        entries: sm.queue.entries.map((entry) => ({ bytes: entry.bytes.toString('base64'), sentAtMs: entry.sentAtMs })),
      },
    },
  };
}

/**
 * Reads a snapshot back (e.g. after `JSON.parse`), checking every field: a snapshot from another
 * version, or one that does not hold together, is refused with an InvariantError naming what is
 * wrong; nothing half-read comes back.
 */
export function readSnapshot(value: unknown): HibernatedSession {
  const v = value as Partial<HibernatedSessionV1> | null;
  if (typeof v !== 'object' || v === null) throw bad('not an object');
  if (v.version !== 1) throw bad(`version ${String(v.version)}, this proxy reads version 1`);
  const { sid, addressKey, domain, jid, sinceMs, expiresAtMs, presenceShown, serverFeatures, features, sm } = v;
  if (typeof sid !== 'string' || sid === '') throw bad('sid');
  if (typeof addressKey !== 'string' || addressKey === '') throw bad('addressKey');
  if (typeof domain !== 'string' || domain === '') throw bad('domain');
  if (typeof jid !== 'string' || !jid.includes('@')) throw bad('jid');
  if (!isTime(sinceMs) || !isTime(expiresAtMs) || expiresAtMs < sinceMs) throw bad('sinceMs/expiresAtMs');
  if (typeof presenceShown !== 'boolean') throw bad('presenceShown');
  if (serverFeatures !== null && typeof serverFeatures !== 'string') throw bad('serverFeatures');
  if (typeof features !== 'object' || features === null || Array.isArray(features)) throw bad('features');
  if (typeof sm !== 'object' || sm === null) throw bad('sm');
  if (!isSmNamespace(sm.ns)) throw bad('sm.ns');
  if (typeof sm.id !== 'string' || sm.id === '') throw bad('sm.id');
  if (!isTime(sm.hibernationMs)) throw bad('sm.hibernationMs');
  if (!isSeq(sm.h)) throw bad('sm.h');
  const { queue } = sm;
  if (
    typeof queue !== 'object' ||
    queue === null ||
    !isSeq(queue.sent) ||
    !isSeq(queue.acked) ||
    !isTime(queue.ackedTotal) ||
    !Array.isArray(queue.entries)
  )
    throw bad('sm.queue');
  const entries = queue.entries.map((entry, i) => {
    if (typeof entry?.bytes !== 'string' || !isTime(entry.sentAtMs)) throw bad(`sm.queue.entries[${i}]`);
    const bytes = Buffer.from(entry.bytes, 'base64');
    if (bytes.toString('base64') !== entry.bytes) throw bad(`sm.queue.entries[${i}].bytes is not base64`);
    return { bytes, sentAtMs: entry.sentAtMs };
  });
  return {
    sid,
    addressKey,
    domain,
    jid,
    sinceMs,
    expiresAtMs,
    presenceShown,
    serverFeatures: serverFeatures ?? undefined,
    features,
    sm: {
      ns: sm.ns,
      id: sm.id,
      resumable: true,
      hibernationMs: sm.hibernationMs,
      h: sm.h,
      queue: { sent: queue.sent, acked: queue.acked, ackedTotal: queue.ackedTotal, entries },
    },
  };
}

function isTime(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function bad(what: string): InvariantError {
  return new InvariantError(`hibernated session snapshot refused: ${what}`);
}
