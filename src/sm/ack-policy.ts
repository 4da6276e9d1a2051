import { InvariantError } from '../errors.js';
import { seqDistance } from './sequence.js';

/** Options of an {@link AckPolicy}. */
export interface AckPolicyOptions {
  /**
   * Request an ack once more than this many stanzas sent to the client are unacked (mod_smacks's
   * `smacks_max_unacked_stanzas`, default 0 there, meaning "after any stanza"). A non-negative
   * integer.
   */
  maxUnackedStanzas: number;
}

/**
 * When the proxy sends `<r/>` to the client (README, Configuration: `streamManagement`), as one pure decision object per
 * session. Modelled on Prosody's `should_ack` in `mod_smacks.lua`.
 *
 * XEP-0198 §4 (https://xmpp.org/extensions/xep-0198.html#acking) leaves the timing open: "the
 * client or server can send ack elements at any time". The rules here:
 * - at most one `<r/>` outstanding;
 * - only when unacked (`seqDistance(acked, sent)`) exceeds `maxUnackedStanzas`;
 * - never twice for the same `sent` value: a client that answers every `<a/>` with an `<r/>`
 *   (or acks less than it was asked) would otherwise make the two sides loop (Prosody's
 *   `last_requested_h`, prosody-modules `a21aa8b6`);
 * - re-checked when an `<a/>` arrives, not only after a write burst, so stanzas sent while a
 *   request was outstanding are asked about without waiting for the next burst (as mod_smacks
 *   re-checks `#queue > max_unacked_stanzas` upon receiving an ack).
 *
 * Usage: after each write burst, and after each `<a/>` (call {@link answered} first), ask
 * {@link shouldRequest}; if true, send `<r/>` and call {@link requested}. A timer calls
 * {@link isOverdue}. Whether the session is hibernating is the caller's business.
 */
export class AckPolicy {
  readonly #maxUnackedStanzas: number;
  #outstandingSinceMs: number | undefined;
  /** The outbound count when the last `<r/>` was sent: the loop guard. */
  #lastRequestedSent: number | undefined;

  /**
   * @throws InvariantError if `maxUnackedStanzas` is not a non-negative integer.
   */
  constructor(options: AckPolicyOptions) {
    const max = options.maxUnackedStanzas;
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new InvariantError(`ack policy maxUnackedStanzas ${max} is not a non-negative integer`);
    }
    this.#maxUnackedStanzas = max;
  }

  /**
   * Whether an `<r/>` must be sent now.
   * @param state the unacked queue's counters: `sent` (outbound count) and `acked` (last `h`).
   * @returns true iff no request is outstanding, more than `maxUnackedStanzas` are unacked, and no
   *   `<r/>` was already sent for this same `sent` value.
   */
  shouldRequest(state: { sent: number; acked: number }): boolean {
    if (this.#outstandingSinceMs !== undefined) return false;
    if (seqDistance(state.acked, state.sent) <= this.#maxUnackedStanzas) return false;
    return this.#lastRequestedSent !== state.sent;
  }

  /**
   * Records that `<r/>` was sent.
   * @param sent the outbound count at that moment.
   * @param nowMs when (epoch ms, from the injected clock).
   * @throws InvariantError if a request is already outstanding (at most one may be).
   */
  requested(sent: number, nowMs: number): void {
    if (this.#outstandingSinceMs !== undefined) {
      const since = this.#outstandingSinceMs;
      throw new InvariantError(`<r/> requested at sent ${sent} while one is outstanding since ${since}`);
    }
    this.#outstandingSinceMs = nowMs;
    this.#lastRequestedSent = sent;
  }

  /**
   * An `<a/>` arrived: the outstanding request, if any, is answered. An unsolicited `<a/>` answers
   * it too (any `<a/>` shows the client is alive and carries its current `h`).
   */
  answered(): void {
    this.#outstandingSinceMs = undefined;
  }

  /**
   * For the ack timer: true if a request has been outstanding for at least `maxAckDelayMs`
   * (README, Stream management events: `ackDelayed`).
   * Inclusive, so that a timer armed for exactly `maxAckDelayMs` finds it overdue when it fires.
   */
  isOverdue(nowMs: number, maxAckDelayMs: number): boolean {
    return this.#outstandingSinceMs !== undefined && nowMs - this.#outstandingSinceMs >= maxAckDelayMs;
  }

  /** When the outstanding `<r/>` was sent, or undefined if none is outstanding. */
  get outstandingSinceMs(): number | undefined {
    return this.#outstandingSinceMs;
  }
}
