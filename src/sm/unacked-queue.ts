import { InvariantError } from '../errors.js';
import type { QueueBudget } from './queue-budget.js';
import { MAX_SEQ, isSeq, nextSeq, seqDistance } from './sequence.js';

/** Per-session bounds of an {@link UnackedQueue}. */
export interface QueueLimits {
  /** Most stanzas held unacked at once. A non-negative integer. */
  maxStanzas: number;
  /** Most stanza bytes held unacked at once (sum of the stanzas' lengths). A non-negative integer. */
  maxBytes: number;
}

/**
 * Outcome of {@link UnackedQueue.push}. On failure `reason` names the limit that refused the
 * stanza and `limit` its value: `'stanzas'` → `maxStanzas`, `'bytes'` → `maxBytes`, `'account'`,
 * `'address'` and `'global'` → the shares of the {@link QueueBudget} (queue-budget.ts).
 */
export type PushResult = { ok: true } | { ok: false; reason: PushRefusalReason; limit: number };

type PushRefusalReason = 'stanzas' | 'bytes' | 'account' | 'address' | 'global';

/**
 * Outcome of {@link UnackedQueue.ack}.
 * - `acked`: `h` was in [acked, sent]; `count` entries were removed (0 when `h` repeats the last ack).
 * - `too-high`: `h` acks more than was sent; nothing changed. XEP-0198 §6: "the local entity SHOULD
 *   generate an undefined-condition stream error that includes a <handled-count-too-high/> element"
 *   (with `h` and `send-count` = `sendCount`). The caller ends the stream with `undefined-condition`.
 * - `backwards`: `h` is below the last accepted ack; nothing changed. XEP-0198 does not say what to
 *   do; like ejabberd and Openfire we tolerate it.
 */
export type AckResult = { kind: 'acked'; count: number } | AckRefusal;

/** An `h` the queue does not take (see {@link AckResult}). */
export type AckRefusal = { kind: 'too-high'; h: number; sendCount: number } | { kind: 'backwards'; h: number; previous: number };

/** What {@link UnackedQueue.checkAck} finds: `in-range` (an ack would be accepted), or why not. */
export type AckCheck = { kind: 'in-range' } | AckRefusal;

/** {@link UnackedQueue.snapshot}: plain data. */
export interface UnackedQueueSnapshot {
  readonly sent: number;
  readonly acked: number;
  /** How far `acked` advanced since the queue began (the window in which an ack may go backwards). */
  readonly ackedTotal: number;
  readonly entries: readonly UnackedEntry[];
}

/** One queued stanza: its bytes (the queue's own copy; do not modify) and when it was first sent. */
export interface UnackedEntry {
  bytes: Buffer;
  sentAtMs: number;
}

/** Placeholder for released slots, so the chunks array keeps a single element type. */
const RELEASED: Buffer = Buffer.alloc(0);

/**
 * Sizes of the slabs stanzas are copied into (see `UnackedQueue` `#store`): a new slab is a quarter
 * of the bytes already queued, rounded up to a power of two, between these bounds. A queue that
 * holds little (an idle or hibernating session) gets small slabs, so little memory is held beyond
 * its stanzas; a busy one gets large slabs, so a native allocation is shared by many stanzas.
 */
const MIN_SLAB_BYTES = 1024;
const MAX_SLAB_BYTES = 16 * 1024;
/**
 * Stanzas above a quarter of the slab size get a buffer of their own. A slab is abandoned when the
 * next stanza does not fit, so its unused tail is below a quarter: small stanzas take at most 1.33
 * times their bytes.
 */
const SLAB_STANZA_FRACTION = 4;

/** The arrays are compacted once the released slots at their head are at least this many (and half). */
const COMPACT_MIN_HEAD = 1024;

/**
 * The outbound (proxy → client) unacked stanza queue of one session: XEP-0198 §4's outbound count
 * and, in order, each stanza counted by it that the client has not yet acknowledged, with the time
 * it was first sent (for the XEP-0203 `<delay/>` on replay and expiry).
 *
 * Pure: no I/O, no timers; time comes in as `nowMs`. Modelled on Prosody's `util/smqueue.lua`, but
 * bounded by refusal instead of a ring that silently drops the oldest stanza (which would lose an
 * acknowledged stanza without a trace): a stanza that does not fit is not stored, `sent` does not advance, and the queue stays
 * {@link overflowed} for good, because from then on it could not replay everything.
 *
 * Storage is parallel arrays with a head index: push is amortised O(1), acking k entries is O(k),
 * and the arrays are compacted once the released head is both at least 1024 slots and half of the
 * array, so no per-entry `Array.shift()`. Small stanzas share queue-owned slabs (see `#store`).
 *
 * Invariant: `length + (entries removed by drain() and not yet acked) === seqDistance(acked, sent)`.
 */
export class UnackedQueue {
  readonly #limits: Readonly<QueueLimits>;
  readonly #budget: QueueBudget;
  // One entry per index in four parallel arrays, so an entry costs a few array slots rather than a
  // Buffer view object (about 100 bytes of heap each): the buffer holding its bytes (a slab shared
  // with its neighbours, or its own), where in it, how long, and when it was first sent.
  #chunks: Buffer[] = [];
  #offsets: number[] = [];
  #lengths: number[] = [];
  #sentAt: number[] = [];
  /** Index of the oldest unacked entry; the slots before it are released. */
  #head = 0;
  #bytes = 0;
  #sent: number;
  #acked: number;
  /** Entries right after `acked` that drain() removed; a later ack over them removes nothing. */
  #drainedAhead = 0;
  /** How far `acked` has advanced since construction: the window in which an ack may go backwards. */
  #ackedTotal = 0;
  #overflow: Extract<PushResult, { ok: false }> | undefined;
  /** Where small stanzas are copied to, append-only; `#slabUsed` bytes of it are taken. */
  #slab: Buffer | undefined;
  #slabUsed = 0;

  /**
   * @param limits this session's bounds.
   * @param budget the byte budget shared by all sessions' queues; reserved on push, released on
   *   ack and drain.
   * @param initialSent starting value of the outbound count, default 0 (XEP-0198 §4: it starts at 0
   *   when `<enabled/>` is sent). Also the starting `acked`.
   * @throws InvariantError if a limit is not a non-negative integer or `initialSent` not in
   *   [0, 2^32 - 1].
   */
  constructor(limits: QueueLimits, budget: QueueBudget, initialSent = 0) {
    for (const key of ['maxStanzas', 'maxBytes'] as const) {
      const value = limits[key];
      if (!(value === Infinity || (Number.isSafeInteger(value) && value >= 0))) {
        throw new InvariantError(`unacked queue ${key} ${value} is not a non-negative integer`);
      }
    }
    if (!isSeq(initialSent)) {
      throw new InvariantError(`unacked queue initialSent ${initialSent} is not in [0, ${MAX_SEQ}]`);
    }
    this.#limits = { maxStanzas: limits.maxStanzas, maxBytes: limits.maxBytes };
    this.#budget = budget;
    this.#sent = initialSent;
    this.#acked = initialSent;
  }

  /** The outbound count (XEP-0198 §4), modulo 2^32: stanzas pushed since `<enabled/>`. */
  get sent(): number {
    return this.#sent;
  }

  /** The last `h` accepted from the client (starts at `initialSent`). */
  get acked(): number {
    return this.#acked;
  }

  /**
   * The queue as plain data, for handing a hibernated session to another process: the counters and
   * every unacked entry (the bytes are the queue's own; copy before keeping them beyond the
   * queue). Only a queue that never overflowed and that drain() never emptied can be handed over:
   * its entries are then exactly the stanzas between `acked` and `sent`.
   */
  snapshot(): UnackedQueueSnapshot {
    if (this.#drainedAhead > 0)
      throw new InvariantError(`snapshot of a drained unacked queue: ${this.#drainedAhead} stanzas were disposed of`);
    if (this.#overflow !== undefined) throw new InvariantError('snapshot of an unacked queue that overflowed');
    return { sent: this.#sent, acked: this.#acked, ackedTotal: this.#ackedTotal, entries: [...this.entries()] };
  }

  /**
   * A queue with `snapshot`'s counters and entries, their bytes reserved in `budget`. Fails (with
   * the push refusal) when they do not fit this process's limits or budget.
   */
  static restore(
    limits: QueueLimits,
    budget: QueueBudget,
    snapshot: UnackedQueueSnapshot,
  ): UnackedQueue | Extract<PushResult, { ok: false }> {
    const queue = new UnackedQueue(limits, budget, snapshot.acked);
    for (const entry of snapshot.entries) {
      const pushed = queue.push(entry.bytes, entry.sentAtMs);
      if (!pushed.ok) {
        queue.drain();
        return pushed;
      }
    }
    if (queue.#sent !== snapshot.sent) {
      throw new InvariantError(
        `unacked queue snapshot holds ${snapshot.entries.length} entries, but acked ${snapshot.acked} and sent ${snapshot.sent} say otherwise`,
      );
    }
    queue.#ackedTotal = snapshot.ackedTotal;
    return queue;
  }

  /** Entries held unacked. */
  get length(): number {
    return this.#chunks.length - this.#head;
  }

  /** Total bytes of the entries held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** True once a push was refused; stays true. The session is then no longer resumable. */
  get overflowed(): boolean {
    return this.#overflow !== undefined;
  }

  /**
   * Appends a stanza just sent (or about to be sent) to the client and counts it.
   *
   * The queue keeps a private copy of `bytes` (see `#store`), so callers may pass a zero-copy
   * subarray of a large socket chunk and reuse it afterwards.
   *
   * @param bytes the stanza's original bytes.
   * @param nowMs when it is first sent (epoch ms).
   * @returns `{ ok: true }` with `sent` advanced by one; or the limit that refused it, with nothing
   *   stored, `sent` unchanged and {@link overflowed} set. Once overflowed, every later push is
   *   refused with the first failure, because the queue could no longer replay without a gap.
   */
  push(bytes: Buffer, nowMs: number): PushResult {
    return this.#push(bytes, nowMs, true);
  }

  #push(bytes: Buffer, nowMs: number, final: boolean): PushResult {
    if (this.#overflow !== undefined) return this.#overflow;
    const size = bytes.length;
    if (this.length >= this.#limits.maxStanzas) {
      return this.#refuse('stanzas', this.#limits.maxStanzas, final);
    }
    if (this.#bytes + size > this.#limits.maxBytes) {
      return this.#refuse('bytes', this.#limits.maxBytes, final);
    }
    const refusal = this.#budget.reserve(size);
    if (refusal !== undefined) return this.#refuse(refusal.reason, refusal.limit, final);
    this.#store(bytes);
    this.#sentAt.push(nowMs);
    this.#bytes += size;
    this.#sent = nextSeq(this.#sent);
    return { ok: true };
  }

  /**
   * Like {@link push}, for a stanza the caller can hold back instead of sending it: a refusal (by
   * the queue's own limits, its account's or address's share, or the global budget) changes
   * nothing, so the caller can offer it again once there is room, with no gap in what was sent.
   */
  offer(bytes: Buffer, nowMs: number): PushResult {
    return this.#push(bytes, nowMs, false);
  }

  /**
   * Applies an `h` from the client's `<a/>` (or `<resume/>`, through {@link resume}).
   *
   * XEP-0198 §4 (https://xmpp.org/extensions/xep-0198.html#acking): "When a party receives an <a/>
   * element, it SHOULD keep a record of the 'h' value returned as the sequence number of the last
   * handled outbound stanza". `h` counts modulo 2^32, so it is valid iff it lies in [acked, sent] on
   * the circle: `seqDistance(acked, h) <= seqDistance(acked, sent)`. The entries between the two are
   * removed and their bytes released.
   *
   * Outside that range `h` is either too high (XEP-0198 §6, handled-count-too-high) or going
   * backwards. On the circle both are the same set of values; we call it `backwards` when it lies
   * at most as far behind `acked` as `acked` has advanced since construction (so a fresh stream can
   * never go backwards), and at most half-way round the invalid arc; otherwise `too-high`.
   * Either way nothing changes.
   */
  ack(h: number): AckResult {
    const check = this.checkAck(h);
    if (check.kind !== 'in-range') return check;
    const advance = seqDistance(this.#acked, h);
    const overDrained = Math.min(advance, this.#drainedAhead);
    this.#drainedAhead -= overDrained;
    const count = advance - overDrained;
    this.#removeOldest(count);
    this.#acked = h;
    this.#ackedTotal += advance;
    return { kind: 'acked', count };
  }

  /** What {@link ack} would say of `h`, changing nothing (for a decision made before acting on it). */
  checkAck(h: number): AckCheck {
    const advance = seqDistance(this.#acked, h);
    const unacked = seqDistance(this.#acked, this.#sent);
    if (advance <= unacked) return { kind: 'in-range' };
    const behind = seqDistance(h, this.#acked);
    const invalidValues = MAX_SEQ - unacked; // 2^32 values minus the unacked + 1 valid ones
    const backwardsWindow = Math.min(this.#ackedTotal, Math.floor(invalidValues / 2));
    return behind <= backwardsWindow ? { kind: 'backwards', h, previous: this.#acked } : { kind: 'too-high', h, sendCount: this.#sent };
  }

  /** When the oldest unacked entry was first sent, or undefined if none is held. */
  peekOldestSentAt(): number | undefined {
    return this.#head < this.#sentAt.length ? this.#sentAt[this.#head] : undefined;
  }

  /**
   * The unacked entries, oldest first, without copying. Do not push, ack, resume or drain while
   * iterating, and do not modify the bytes.
   */
  *entries(): IterableIterator<UnackedEntry> {
    for (let i = this.#head; i < this.#chunks.length; i++) yield this.#entry(i);
  }

  /**
   * Resumption (XEP-0198 §5, https://xmpp.org/extensions/xep-0198.html#resumption): "it should
   * handle the element's 'h' attribute as it would handle it on an <a/> element ..., except that
   * after processing it MUST re-send to the peer any stanzas that are still marked as unhandled".
   * Applies `h` like {@link ack}, then returns everything still unacked, oldest first, for replay.
   * The entries stay queued: they are still unacked after replay, and `sent` does not change
   * (§5: "The sequence values are carried over from the previous session and are not reset for the
   * new stream").
   *
   * On `too-high` and on `backwards` the replay is empty and nothing changes: the caller answers
   * `<failed/>` and decides what becomes of the hibernated session. A backwards `h` cannot be
   * honoured: the stanzas between it and the last accepted ack are gone, and replaying from the
   * last ack would leave the client's counter behind the proxy's for good (the next replay would
   * then repeat stanzas).
   *
   * @throws InvariantError if {@link drain} removed entries the client has not acked: a resume
   *   after drain would replay with a gap.
   */
  resume(h: number): { ack: AckResult; replay: UnackedEntry[] } {
    const ack = this.ack(h);
    if (ack.kind !== 'acked') return { ack, replay: [] };
    if (this.#drainedAhead > 0) {
      throw new InvariantError(`resume of a drained unacked queue: ${this.#drainedAhead} stanzas were disposed of`);
    }
    return { ack, replay: [...this.entries()] };
  }

  /**
   * Removes every entry (hibernation expiry, session close) and releases its bytes from the
   * budget. The counters do not change: a later ack over the drained range is still accepted and
   * removes nothing.
   * @returns the removed entries, oldest first, for bouncing. XEP-0198 §4: "A server SHOULD treat
   *   unacknowledged stanzas in the same way that it would treat a stanza sent to an unavailable
   *   resource".
   */
  drain(): UnackedEntry[] {
    const removed = [...this.entries()];
    this.#drainedAhead += removed.length;
    this.#removeOldest(removed.length);
    return removed;
  }

  /**
   * Copies a stanza into memory this queue alone holds and appends its place to the arrays.
   *
   * Not `Buffer.from(bytes)`: below 4 KiB that copies into Node's process-wide 8 KiB pool slab,
   * shared with every other session, and a single small stanza left in a hibernating session pins
   * the whole slab (40 times its size for a 200-byte stanza), unseen by the budget. One
   * `allocUnsafeSlow` per stanza avoids that but costs a native allocation each (about 0.5 µs).
   * So stanzas are appended to a slab owned by this queue: the queue is FIFO, so a slab is
   * garbage as soon as the last entry in it is acked. A slab is never written twice (views handed
   * out by {@link entries}, {@link resume} and {@link drain} may still be in a socket's write
   * queue). A new slab is sized from the bytes queued (a quarter of them, 1-16 KiB): with 256 KiB
   * in flight one allocation holds about 27 stanzas of 600 bytes (a native allocation costs about
   * 0.8 µs, a copy into a slab 0.1 µs). Memory held beyond the queued bytes: the unused tails of
   * full slabs (under a third of what they hold), the rest of the current slab and the acked head
   * of the oldest, each at most 16 KiB; {@link compact} gives it back when the session hibernates.
   */
  #store(bytes: Buffer): void {
    const size = bytes.length;
    let slabBytes = MIN_SLAB_BYTES;
    while (slabBytes < MAX_SLAB_BYTES && slabBytes * SLAB_STANZA_FRACTION < this.#bytes) slabBytes *= 2;
    if (size * SLAB_STANZA_FRACTION > slabBytes) {
      const own = Buffer.allocUnsafeSlow(size);
      bytes.copy(own, 0, 0, size);
      this.#chunks.push(own);
      this.#offsets.push(0);
    } else {
      let slab = this.#slab;
      if (slab === undefined || this.#slabUsed + size > slab.length) {
        slab = this.#slab = Buffer.allocUnsafeSlow(slabBytes);
        this.#slabUsed = 0;
      }
      const start = this.#slabUsed;
      bytes.copy(slab, start, 0, size);
      this.#slabUsed = start + size;
      this.#chunks.push(slab);
      this.#offsets.push(start);
    }
    this.#lengths.push(size);
  }

  /**
   * Copies what is queued into one buffer of exactly its size and forgets the slabs, so the memory
   * held is the queued bytes and no more. For a session that goes idle for long (hibernation): its
   * slabs were sized for traffic, and a 16 KiB slab may hold a single unacked stanza. Views handed
   * out before stay valid (slabs are never written twice).
   */
  compact(): void {
    this.#slab = undefined;
    this.#slabUsed = 0;
    const count = this.length;
    if (count === 0) return;
    const all = Buffer.allocUnsafeSlow(this.#bytes);
    const chunks: Buffer[] = [];
    const offsets: number[] = [];
    let at = 0;
    for (let i = this.#head; i < this.#chunks.length; i++) {
      const offset = this.#offsets[i] as number;
      const length = this.#lengths[i] as number;
      (this.#chunks[i] as Buffer).copy(all, at, offset, offset + length);
      chunks.push(all);
      offsets.push(at);
      at += length;
    }
    this.#chunks = chunks;
    this.#offsets = offsets;
    this.#lengths = this.#lengths.slice(this.#head);
    this.#sentAt = this.#sentAt.slice(this.#head);
    this.#head = 0;
  }

  /** The entry at index `i` (at or after the head), as a view into its buffer. */
  #entry(i: number): UnackedEntry {
    const offset = this.#offsets[i] as number;
    const bytes = (this.#chunks[i] as Buffer).subarray(offset, offset + (this.#lengths[i] as number));
    return { bytes, sentAtMs: this.#sentAt[i] as number };
  }

  #refuse(reason: PushRefusalReason, limit: number, final: boolean): PushResult {
    const refusal = Object.freeze({ ok: false, reason, limit } as const);
    if (final) this.#overflow = refusal;
    return refusal;
  }

  /** Drops the `count` oldest entries and releases their bytes. */
  #removeOldest(count: number): void {
    if (count === 0) return;
    if (count > this.length) {
      throw new InvariantError(`unacked queue asked to remove ${count} entries but holds ${this.length}`);
    }
    const end = this.#head + count;
    let released = 0;
    for (let i = this.#head; i < end; i++) {
      released += this.#lengths[i] as number;
      this.#chunks[i] = RELEASED; // the last entry of a slab to go lets the slab be collected
    }
    this.#head = end;
    this.#bytes -= released;
    this.#budget.release(released);
    if (this.#head === this.#chunks.length) {
      // Empty: start over with fresh arrays and no slab, so an idle session keeps no capacity.
      this.#slab = undefined;
      this.#chunks = [];
      this.#offsets = [];
      this.#lengths = [];
      this.#sentAt = [];
      this.#head = 0;
    } else if (this.#head >= COMPACT_MIN_HEAD && this.#head * 2 >= this.#chunks.length) {
      const head = this.#head;
      this.#chunks = this.#chunks.slice(head);
      this.#offsets = this.#offsets.slice(head);
      this.#lengths = this.#lengths.slice(head);
      this.#sentAt = this.#sentAt.slice(head);
      this.#head = 0;
    }
  }
}
