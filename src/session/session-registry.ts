import { InvariantError } from '../errors.js';
import type { EndedReason } from '../sm/failures.js';
import { fullJidKey, type ResumeCandidate } from '../sm/resumption.js';
import { bare, resourceOf } from '../xml/jid.js';
import type { ClientLink } from '../transport/client-link.js';
import type { SmNamespace } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { Session } from './session.js';
import type { UpstreamStream } from '../upstream/upstream-link.js';

/** What a resuming connection hands the session it resumes (XEP-0198 §5): its link, the namespace of its `<resume/>` and its `h`. */
export interface ResumeHandOver {
  readonly link: ClientLink;
  readonly ns: SmNamespace;
  readonly h: number;
  /**
   * The resuming connection's upstream stream, bound to the session's full JID, for a session whose
   * own stream is gone (resumption.ts `renewUpstream`): it becomes the session's.
   */
  readonly upstream?: UpstreamStream;
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
  /** Live sessions and the client address key each was opened from. */
  private readonly live = new Map<Session, string>();
  /** Live sessions per client address key (entries at 0 are removed). */
  private readonly perAddress = new Map<string, number>();
  /** Live sessions not yet bound or resumed; insertion-ordered: the first entry is the oldest. */
  private readonly pending = new Map<Session, string>();
  private readonly pendingPerAddress = new Map<string, number>();
  private readonly resumable = new Map<string, Session>();
  /** The SM-IDs of resumable sessions by full JID (`fullJidKey`), for a new login of the same resource. */
  private readonly resumableByJid = new Map<string, Set<string>>();
  /** The other way: the `fullJidKey` of each resumable session by SM-ID. */
  private readonly jidKeyOf = new Map<string, string>();
  /**
   * SM-IDs of sessions in the other process of an upgrade (README, Upgrading): handed over from
   * here, or announced by the previous process and not arrived yet. A `<resume/>` of one is told to
   * connect again (resumption.ts `elsewhere`).
   */
  private readonly elsewhere = new Set<string>();
  /** Insertion-ordered: the first entry is the oldest. */
  private readonly ended = new Map<string, EndedSession>();

  constructor(private limits: RegistryLimits) {}

  /** New limits (a config reload); ended sessions beyond them are forgotten at the next lookup or end. */
  setLimits(limits: RegistryLimits): void {
    this.limits = limits;
  }

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
  /** Sessions opened from `addressKey` (ip-range.ts `addressKey`), bound or not. */
  countFrom(addressKey: string): number {
    return this.perAddress.get(addressKey) ?? 0;
  }

  /** Sessions not yet bound or resumed (authenticating, or a resume's temporary stream). */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Sessions bound to an account, connected or hibernating: what `maxSessions` limits. */
  get boundCount(): number {
    return this.live.size - this.pending.size;
  }

  /** Sessions not yet bound or resumed, opened from `addressKey`. */
  pendingFrom(addressKey: string): number {
    return this.pendingPerAddress.get(addressKey) ?? 0;
  }

  /** The session that has waited longest to be bound or resumed. */
  oldestPending(): Session | undefined {
    return this.pending.keys().next().value;
  }

  /** A new session, not yet bound, from `addressKey`. */
  add(session: Session, addressKey: string): void {
    if (this.live.has(session)) return;
    this.live.set(session, addressKey);
    this.pending.set(session, addressKey);
    increment(this.perAddress, addressKey);
    increment(this.pendingPerAddress, addressKey);
  }

  /** `session` is bound: it leaves the pending ones. */
  bound(session: Session): void {
    const addressKey = this.pending.get(session);
    if (addressKey === undefined) return;
    this.pending.delete(session);
    decrement(this.pendingPerAddress, addressKey);
  }

  delete(session: Session): void {
    this.bound(session);
    const addressKey = this.live.get(session);
    if (addressKey === undefined) return;
    this.live.delete(session);
    decrement(this.perAddress, addressKey);
  }

  /** `session`, bound to the full JID `jid`, can be resumed by `smId` from now on. */
  registerResumable(smId: string, session: Session, jid: string): void {
    this.resumable.set(smId, session);
    this.elsewhere.delete(smId);
    const key = fullJidKey(bare(jid), resourceOf(jid));
    const smIds = this.resumableByJid.get(key) ?? new Set();
    smIds.add(smId);
    this.resumableByJid.set(key, smIds);
    this.jidKeyOf.set(smId, key);
  }

  private forgetResumable(smId: string): void {
    this.resumable.delete(smId);
    const key = this.jidKeyOf.get(smId);
    if (key === undefined) return;
    this.jidKeyOf.delete(smId);
    const smIds = this.resumableByJid.get(key);
    smIds?.delete(smId);
    if (smIds?.size === 0) this.resumableByJid.delete(key);
  }

  findResumable(smId: string): Session | undefined {
    return this.resumable.get(smId);
  }

  /** What a `<resume previd h/>` finds: a live session's facts, how a remembered one ended, or nothing (sm/resumption.ts decides). */
  lookup(smId: string, h: number, nowMs: number): ResumeCandidate {
    const live = this.resumable.get(smId);
    if (live !== undefined) return live.resumeCandidate(h);
    if (this.elsewhere.has(smId)) return { kind: 'elsewhere' };
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

  /**
   * A round trip on the upstream stream of the hibernating session `smId` names (upstream-probe.ts),
   * before a resume whose account a bind confirmed is decided; `undefined` when there is none to wait for.
   */
  probe(smId: string): Promise<void> | undefined {
    return this.resumable.get(smId)?.probeUpstream();
  }

  /** The queue of the stranded session `smId` names, for the stream its client came back on (decideResume's `takeQueue`). */
  takeQueue(smId: string, h: number): Buffer[] {
    const target = this.resumable.get(smId);
    if (target === undefined) throw new InvariantError(`queue taken from ${smId.slice(0, 6)}, which is not resumable`);
    return target.handOverQueue(h);
  }

  /**
   * A new login binds `resource` of the account `bareJid` (as its SASL exchange named it): the
   * resumable sessions of that full JID end, and their queues, in order, go to the login
   * (`Session.yieldToLogin`).
   */
  replaceByLogin(bareJid: string, resource: string): Buffer[] {
    const key = fullJidKey(bareJid, resource);
    const smIds = [...(this.resumableByJid.get(key) ?? [])];
    // The index holds resumable sessions only: an entry left behind by one that ended is a leak.
    // It is removed (later logins of the resource go on) and reported before any session yields.
    const stale = smIds.filter((smId) => !this.resumable.has(smId));
    if (stale.length > 0) {
      for (const smId of stale) {
        this.resumableByJid.get(key)?.delete(smId);
        this.jidKeyOf.delete(smId);
      }
      if (this.resumableByJid.get(key)?.size === 0) this.resumableByJid.delete(key);
      throw new InvariantError(`the login index named ${stale.length} session(s) no longer resumable`);
    }
    return smIds.flatMap((smId) => this.resumable.get(smId)!.yieldToLogin());
  }

  /** A resumable session went on to the next process of an upgrade: a `<resume/>` of it here is told to connect again. */
  handedOff(smId: string): void {
    this.forgetResumable(smId);
    this.elsewhere.add(smId);
  }

  /** The previous process of an upgrade will hand these sessions over: until they arrive, a `<resume/>` of one is told to connect again. */
  expectArrivals(smIds: readonly string[]): void {
    for (const smId of smIds) if (!this.resumable.has(smId)) this.elsewhere.add(smId);
  }

  /**
   * The hand-off is over: what was announced and did not arrive, or was handed to a process that
   * died, is unknown from now on.
   */
  forgetElsewhere(): void {
    this.elsewhere.clear();
  }

  /** The ended sessions remembered now, oldest first, by SM-ID (an upgrade hands them to the next process). */
  rememberedEnded(nowMs: number): [string, EndedSession][] {
    this.prune(nowMs);
    return [...this.ended];
  }

  /** Forgets a resumable session and remembers how it ended (one announced by an upgrade, too: it will not come). */
  endResumable(smId: string, ended: EndedSession): void {
    this.forgetResumable(smId);
    this.elsewhere.delete(smId);
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

function increment(counts: Map<string, number>, key: string): void {
  counts.set(key, (counts.get(key) ?? 0) + 1);
}

function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 0) - 1;
  if (left > 0) counts.set(key, left);
  else counts.delete(key);
}
