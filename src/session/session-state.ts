import { InvariantError } from '../errors.js';
import type { ResumeCandidate } from '../sm/resumption.js';
import { bare } from '../xml/jid.js';
import type { StreamManagement } from '../sm/stream-management.js';
import type { ClientLink } from '../transport/client-link.js';
import type { UpstreamStream } from '../upstream/upstream-link.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { AckClock } from './ack-clock.js';
import type { StreamSetup } from './stream-setup.js';

/**
 * The lifecycle of a session. Each variant carries what is valid in it: the client link where
 * there is one (a hibernating session has none), the upstream stream once connected; timers
 * belong to a variant and are cleared by `checkedTransition`. A link that ended stays in its variant
 * until the session moves on: writes to an ended link are no-ops.
 */
export type State =
  /** TLS is done (or in progress); waiting for the client's stream header. */
  | { readonly name: 'opening'; readonly link: ClientLink; readonly authTimer: NodeJS.Timeout }
  /** Connecting to the legacy server; client elements are held in order. */
  | { readonly name: 'connecting'; readonly link: ClientLink; readonly authTimer: NodeJS.Timeout; readonly held: ScannedElement[] }
  /** Relaying SASL and bind, or checking the account of a `<resume/>` (stream-setup.ts). */
  | {
      readonly name: 'negotiating';
      readonly link: ClientLink;
      readonly authTimer: NodeJS.Timeout;
      readonly upstream: UpstreamStream;
      readonly setup: StreamSetup;
    }
  /** Bound: everything is relayed; stream management may be on. */
  | {
      readonly name: 'active';
      readonly link: ClientLink;
      readonly upstream: UpstreamStream;
      readonly jid: string;
      readonly sm: StreamManagement | undefined;
      /** Set with `sm`: when to ask the client for acks (ack-clock.ts). */
      readonly clock: AckClock | undefined;
    }
  /** The client is away; the upstream is kept alive and stanzas are queued (README, Hibernation). */
  | {
      readonly name: 'hibernating';
      readonly upstream: UpstreamStream;
      readonly jid: string;
      readonly sm: StreamManagement;
      readonly sinceMs: number;
      /** When `expiryTimer` fires (epoch ms): `sinceMs` plus the hibernation time, unless a hook changed it. */
      readonly expiresAtMs: number;
      readonly expiryTimer: NodeJS.Timeout;
    }
  /**
   * Hibernating, and the legacy server ended the user's stream (a restart): the queue is kept until
   * the client comes back (a resume, or its next bind of the resource) or `strandedMs` from the
   * end of the stream has passed (the hibernation's end, when later).
   */
  | {
      readonly name: 'stranded';
      readonly jid: string;
      readonly sm: StreamManagement;
      readonly sinceMs: number;
      readonly expiryTimer: NodeJS.Timeout;
      /**
       * The server ended the stream for a resource conflict: another session holds the full JID
       * now, so a resume may not bind it again (it would end that session).
       */
      readonly replaced: boolean;
    }
  | { readonly name: 'closed' };

export type StateName = State['name'];

/** One table of allowed transitions; anything else is a bug. */
const TRANSITIONS: Record<StateName, readonly StateName[]> = {
  opening: ['connecting', 'closed'],
  connecting: ['negotiating', 'closed'],
  negotiating: ['active', 'closed'],
  active: ['active', 'hibernating', 'closed'],
  hibernating: ['active', 'hibernating', 'stranded', 'closed'],
  stranded: ['active', 'closed'],
  closed: [],
};

/** On the hot path (every stanza to the client): a switch on the name, not a megamorphic `in`. */
export function linkOf(s: State): ClientLink | undefined {
  switch (s.name) {
    case 'hibernating':
    case 'stranded':
    case 'closed':
      return undefined;
    default:
      return s.link;
  }
}

/** Moves from `from` to `to` if the table allows it, and clears the timers `from` had that `to` does not keep. */
export function checkedTransition(from: State, to: State): void {
  if (!TRANSITIONS[from.name].includes(to.name)) {
    throw new InvariantError(`session transition ${from.name} → ${to.name} is not allowed`);
  }
  clearStateTimers(from, to);
}

/** The states of a bound session: its full JID and (maybe) stream management live there. */
export type BoundState = Extract<State, { name: 'active' | 'hibernating' | 'stranded' }>;

export function isBound(s: State): s is BoundState {
  return s.name === 'active' || s.name === 'hibernating' || s.name === 'stranded';
}

/** Stream management of a bound session, once enabled. */
export function smOf(s: State): StreamManagement | undefined {
  return isBound(s) ? s.sm : undefined;
}

export function upstreamOf(s: State): UpstreamStream | undefined {
  return 'upstream' in s ? s.upstream : undefined;
}

function clearStateTimers(from: State, to: State): void {
  const timers: (NodeJS.Timeout | undefined)[] = [];
  if ('authTimer' in from && !('authTimer' in to && to.authTimer === from.authTimer)) timers.push(from.authTimer);
  if (from.name === 'active' && (to.name !== 'active' || to.clock !== from.clock)) from.clock?.stop();
  // A session stranded from hibernation keeps its expiry timer, unless strand() armed a later one.
  if ((from.name === 'hibernating' || from.name === 'stranded') && !('expiryTimer' in to && to.expiryTimer === from.expiryTimer)) {
    timers.push(from.expiryTimer);
  }
  for (const timer of timers) if (timer !== undefined) clearTimeout(timer);
}

/** What a `<resume/>` of a session in state `s` with `h` would find (the registry asks, for decideResume). */
export function resumeCandidateOf(s: State, domain: string | undefined, h: number): ResumeCandidate {
  const none = { kind: 'live', domain, resumable: false, upstreamGone: false, renewable: false, h: 0, ack: { kind: 'in-range' } } as const;
  if (!isBound(s)) return { ...none, bareJid: undefined, jid: undefined };
  const sm = s.sm;
  if (sm === undefined) return { ...none, bareJid: bare(s.jid), jid: s.jid };
  return {
    kind: 'live',
    bareJid: bare(s.jid),
    jid: s.jid,
    domain,
    resumable: sm.resumable,
    upstreamGone: s.name === 'stranded',
    renewable: s.name === 'stranded' && !s.replaced,
    h: sm.inbound.h,
    ack: sm.queue.checkAck(h),
  };
}
