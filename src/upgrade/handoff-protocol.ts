import { InvariantError } from '../errors.js';
import type { EndedSession } from '../session/session-registry.js';
import { isEndedReason } from '../sm/failures.js';
import { isSeq } from '../sm/sequence.js';

/**
 * The messages of an upgrade's hand-off (README "Upgrading"), over the IPC channel between the
 * running process and the one it started. The version travels in the environment before anything
 * else: a new process that cannot read its predecessor's version refuses at once, and the old one
 * keeps serving.
 */
export const HANDOFF_PROTOCOL = 1;

/** Set in the new process's environment by the old one: the hand-off version it speaks. */
export const HANDOFF_ENV = 'SMACKS_PROXY_HANDOFF';

/** From the running process to the one it started. A `listener` carries the listening socket, a `session` the upstream socket. */
export type ToNext =
  /** One listening socket, named by its listener's config (`listenerKey`). */
  | { readonly kind: 'listener'; readonly key: string }
  /** Every listening socket was sent: the new process starts serving. */
  | { readonly kind: 'listeners-sent'; readonly count: number }
  /** The SM-IDs of the sessions that will come: a `<resume/>` of one that has not arrived yet is told to connect again. */
  | { readonly kind: 'coming'; readonly smIds: readonly string[] }
  /** A hibernated session (hibernated-snapshot.ts), and the legacy server's stream header of its upstream stream, base64. */
  | { readonly kind: 'session'; readonly session: unknown; readonly serverHeader: string }
  /** Sessions that ended here, remembered for a late `<resume/>` (XEP-0198 §5 `<failed h/>`), oldest first: up to {@link ENTRIES_PER_MESSAGE}. */
  | { readonly kind: 'ended'; readonly sessions: readonly RememberedEnd[] }
  /** No more sessions come: the new process is on its own. */
  | { readonly kind: 'done'; readonly handedOver: number };

/** How many entries one `ended` or `coming` message carries at most. */
export const ENTRIES_PER_MESSAGE = 1000;

/** One ended session remembered for `<failed h/>` (session-registry.ts `EndedSession`, with its SM-ID). */
export interface RememberedEnd extends EndedSession {
  readonly smId: string;
}

/** From the new process to the one that started it. */
export type ToPrevious =
  /** The config is valid and the hand-off version readable: the listening sockets can come. */
  | { readonly kind: 'ready' }
  /** The new process cannot take over (it names why) and exits. */
  | { readonly kind: 'refused'; readonly reason: string }
  /** The new process accepts connections on every listener: the old one stops accepting. */
  | { readonly kind: 'listening' }
  /** The new process holds the session just sent (or dropped it, logged there): the old one may cut its client. */
  | { readonly kind: 'adopted' }
  /** The new process runs on alone (it wrote the PID file when it took the listeners): the old one may exit. */
  | { readonly kind: 'running' };

/** The name a listener's listening socket travels under: the same entry of `listeners` in both processes' config. */
export function listenerKey(listener: { readonly type: string; readonly host: string; readonly port: number }): string {
  const host = listener.host.includes(':') ? `[${listener.host}]` : listener.host;
  return `${listener.type} ${host}:${listener.port}`;
}

export function readToNext(value: unknown): ToNext {
  const message = record(value);
  switch (message.kind) {
    case 'listener':
      return { kind: 'listener', key: text(message, 'key') };
    case 'listeners-sent':
      return { kind: 'listeners-sent', count: count(message, 'count') };
    case 'coming':
      if (!Array.isArray(message.smIds) || !message.smIds.every((id) => typeof id === 'string' && id !== '')) throw bad('coming.smIds');
      return { kind: 'coming', smIds: message.smIds as string[] };
    case 'session':
      return { kind: 'session', session: message.session, serverHeader: text(message, 'serverHeader') };
    case 'ended':
      if (!Array.isArray(message.sessions)) throw bad('ended.sessions');
      return { kind: 'ended', sessions: message.sessions.map(readRememberedEnd) };
    case 'done':
      return { kind: 'done', handedOver: count(message, 'handedOver') };
    default:
      throw bad(`unknown message kind ${JSON.stringify(message.kind)}`);
  }
}

export function readToPrevious(value: unknown): ToPrevious {
  const message = record(value);
  switch (message.kind) {
    case 'ready':
    case 'listening':
    case 'adopted':
    case 'running':
      return { kind: message.kind };
    case 'refused':
      return { kind: 'refused', reason: text(message, 'reason') };
    default:
      throw bad(`unknown message kind ${JSON.stringify(message.kind)}`);
  }
}

function readRememberedEnd(value: unknown): RememberedEnd {
  const entry = record(value);
  if (!isEndedReason(entry.reason)) throw bad('ended.sessions[].reason');
  return {
    smId: text(entry, 'smId'),
    h: seq(entry, 'h'),
    bareJid: text(entry, 'bareJid'),
    domain: text(entry, 'domain'),
    reason: entry.reason,
    endedAtMs: count(entry, 'endedAtMs'),
  };
}

function seq(message: Record<string, unknown>, key: string): number {
  const value = message[key];
  if (typeof value !== 'number' || !isSeq(value)) throw bad(`ended.sessions[].${key}`);
  return value;
}

function record(value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not an object');
  return value as Record<string, unknown>;
}

function text(message: Record<string, unknown>, key: string): string {
  const value = message[key];
  if (typeof value !== 'string' || value === '') throw bad(`${String(message.kind)}.${key}`);
  return value;
}

function count(message: Record<string, unknown>, key: string): number {
  const value = message[key];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw bad(`${String(message.kind)}.${key}`);
  return value;
}

function bad(what: string): InvariantError {
  return new InvariantError(`hand-off message refused: ${what}`);
}
