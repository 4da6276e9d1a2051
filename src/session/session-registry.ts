import { InvariantError } from '../errors.js';
import type { EndedReason } from '../sm/failures.js';
import type { ResumeCandidate } from '../sm/resumption.js';
import type { ClientLink } from '../transport/client-link.js';
import type { SmNamespace } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { Session } from './session.js';

/** What a resuming connection hands the session it resumes (XEP-0198 §5): its link, the namespace of its `<resume/>` and its `h`. */
export interface ResumeHandOver {
  readonly link: ClientLink;
  readonly ns: SmNamespace;
  readonly h: number;
}

export interface EndedSession {
  readonly h: number;
  readonly bareJid: string;
  /** The domain the session's stream was opened to. */
  readonly domain: string;
  readonly reason: EndedReason;
  readonly endedAtMs: number;
}

export interface RegistryLimits {
  /** How long an ended session's h is remembered for `<failed h/>` (XEP-0198 §5). */
  readonly rememberEndedMs: number;
  /** At most this many ended sessions are remembered; the oldest are forgotten first. */
  readonly maxRememberedEnded: number;
}

/**
 * Every live session of a proxy (for limits and shutdown) with the client address that opened it,
 * the resumable ones by SM-ID, and the final h of sessions that ended, so that a late `<resume/>`
 * gets `<failed h='…'/>`.
 */
export class SessionRegistry {
  /** Live sessions and the client address each was opened from. */
  private readonly live = new Map<Session, string>();
  /** Live sessions per client address (entries at 0 are removed). */
  private readonly perAddress = new Map<string, number>();
  private readonly resumable = new Map<string, Session>();
  /** Insertion-ordered: the first entry is the oldest. */
  private readonly ended = new Map<string, EndedSession>();

  constructor(private readonly limits: RegistryLimits) {}

  get size(): number {
    return this.live.size;
  }

  get resumableCount(): number {
    return this.resumable.size;
  }

  sessions(): IterableIterator<Session> {
    return this.live.keys();
  }

  /** Live sessions opened from `address` (connected or hibernating), for `maxSessionsPerAddress`. */
  countFrom(address: string): number {
    return this.perAddress.get(address) ?? 0;
  }

  add(session: Session, address: string): void {
    if (this.live.has(session)) return;
    this.live.set(session, address);
    this.perAddress.set(address, this.countFrom(address) + 1);
  }

  delete(session: Session): void {
    const address = this.live.get(session);
    if (address === undefined) return;
    this.live.delete(session);
    const left = this.countFrom(address) - 1;
    if (left > 0) this.perAddress.set(address, left);
    else this.perAddress.delete(address);
  }

  registerResumable(smId: string, session: Session): void {
    this.resumable.set(smId, session);
  }

  findResumable(smId: string): Session | undefined {
    return this.resumable.get(smId);
  }

  /** What a `<resume previd h/>` finds: a live session's facts, how a remembered one ended, or nothing (sm/resumption.ts decides). */
  lookup(smId: string, h: number, nowMs: number): ResumeCandidate {
    const live = this.resumable.get(smId);
    if (live !== undefined) return live.resumeCandidate(h);
    const ended = this.recallEnded(smId, nowMs);
    return ended === undefined
      ? { kind: 'unknown' }
      : { kind: 'ended', reason: ended.reason, bareJid: ended.bareJid, domain: ended.domain, h: ended.h };
  }

  /**
   * The broker of a resumption decideResume accepted: the session `smId` names takes the resuming
   * connection's link (`<resumed/>`, the replay). The resuming connection's own session never holds
   * the other; it gets back what delivers the elements its client pipelined behind `<resume/>`,
   * to call once it has closed its temporary stream.
   */
  resume(smId: string, handOver: ResumeHandOver): (held: readonly ScannedElement[]) => void {
    const target = this.resumable.get(smId);
    if (target === undefined) throw new InvariantError(`resume accepted for ${smId.slice(0, 6)}, which is not resumable`);
    target.takeOver(handOver);
    return (held) => target.acceptHeld(held);
  }

  /** Forgets a resumable session and remembers how it ended. */
  endResumable(smId: string, ended: EndedSession): void {
    this.resumable.delete(smId);
    if (this.limits.rememberEndedMs <= 0 || this.limits.maxRememberedEnded <= 0) return;
    this.ended.delete(smId);
    this.ended.set(smId, ended);
    this.prune(ended.endedAtMs);
  }

  /** The remembered end of a session, if it is not too old. */
  recallEnded(smId: string, nowMs: number): EndedSession | undefined {
    this.prune(nowMs);
    return this.ended.get(smId);
  }

  private prune(nowMs: number): void {
    for (const [smId, entry] of this.ended) {
      const tooMany = this.ended.size > this.limits.maxRememberedEnded;
      if (!tooMany && nowMs - entry.endedAtMs <= this.limits.rememberEndedMs) break;
      this.ended.delete(smId);
    }
  }
}
