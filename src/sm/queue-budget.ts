import { InvariantError } from '../errors.js';
import { MemoryBudget } from './memory-budget.js';

/** Which limit refused a reservation, and its value (README, Limits and abuse). */
export interface BudgetRefusal {
  readonly reason: 'global' | 'account' | 'address';
  readonly limit: number;
}

/** Where an unacked queue reserves the bytes it holds: all or nothing, released on ack and drain. */
export interface QueueBudget {
  /** Reserves `bytes`; returns undefined, or the limit that refused them (then nothing is reserved). */
  reserve(bytes: number): BudgetRefusal | undefined;
  release(bytes: number): void;
}

/** The shares of one account or one client address, while they hold bytes. */
interface Share {
  readonly budget: MemoryBudget;
  /** In its map: a share is removed once it holds nothing, and a new one made at the next reservation. */
  attached: boolean;
}

export interface ShareLimits {
  /** Most unacked bytes all sessions of one account may hold together. */
  readonly perAccountBytes: number;
  /** Most unacked bytes all sessions from one client address may hold together; 0: no limit. */
  readonly perAddressBytes: number;
}

/**
 * The memory of all unacked queues, shared out (README, Limits and abuse): the global budget
 * (`globalQueueBytes`), and within it a share per account and per client address, so that one
 * account (or one address) that never acks fills its own share and not everyone's. Whoever
 * reaches a share pays: its session waits for its client's acks, or, hibernating, ends. A session
 * within its shares that finds the global budget used up waits for room ({@link whenRoom}): it is
 * never ended for what others hold.
 */
export class QueueShares {
  readonly #accounts = new Map<string, Share>();
  readonly #addresses = new Map<string, Share>();
  /** Who waits for room in the global budget, in the order they began to wait, with the bytes each needs. */
  readonly #waiters = new Map<unknown, { readonly need: number; readonly retry: () => void }>();
  #waking = false;

  constructor(
    readonly global: MemoryBudget,
    private limits: ShareLimits,
  ) {}

  /** New limits (a config reload, after any change to the global limit): later reservations are held to them. */
  setLimits(limits: ShareLimits): void {
    this.limits = limits;
    for (const share of this.#accounts.values()) share.budget.setLimit(this.limits.perAccountBytes);
    for (const share of this.#addresses.values()) share.budget.setLimit(this.#addressLimit());
    this.#wake();
  }

  /**
   * Calls `retry` once, soon after bytes of the global budget are released, when `need` bytes are
   * free. Waiters (one per `key`) are called in the order they began to wait, and none is called
   * while the one before it does not fit: a retry that still finds no room asks again under the
   * same key, which keeps its place. Returns the way to stop waiting (the session ended).
   */
  whenRoom(key: unknown, need: number, retry: () => void): () => void {
    const waiter = { need, retry };
    this.#waiters.set(key, waiter);
    this.#wake();
    return () => {
      if (this.#waiters.get(key) !== waiter) return;
      this.#waiters.delete(key);
      // The one behind it may fit now.
      this.#wake();
    };
  }

  /** Sessions waiting for room in the global budget (for tests and metrics). */
  get waitingForRoom(): number {
    return this.#waiters.size;
  }

  /** Accounts and addresses holding bytes now (for tests and metrics). */
  get sharesInUse(): number {
    return this.#accounts.size + this.#addresses.size;
  }

  /**
   * The budget of one session's queue: `account` is its bare JID, `addressKey` its client address
   * (ip-range.ts). Shares exist only while they hold bytes: found or made at a reservation, let go
   * when their last byte is released, so that accounts and addresses that come and go leave nothing.
   */
  forSession(account: string, addressKey: string): QueueBudget {
    let accountShare: Share | undefined;
    let addressShare: Share | undefined;
    return {
      reserve: (bytes) => {
        if (accountShare?.attached !== true) accountShare = this.#share(this.#accounts, account, this.limits.perAccountBytes);
        if (addressShare?.attached !== true) addressShare = this.#share(this.#addresses, addressKey, this.#addressLimit());
        const ofAccount = accountShare.budget;
        const ofAddress = addressShare.budget;
        let refusal: BudgetRefusal | undefined;
        if (!ofAccount.tryReserve(bytes)) refusal = { reason: 'account', limit: ofAccount.limitBytes };
        else if (!ofAddress.tryReserve(bytes)) {
          ofAccount.release(bytes);
          refusal = { reason: 'address', limit: ofAddress.limitBytes };
        } else if (!this.global.tryReserve(bytes)) {
          ofAccount.release(bytes);
          ofAddress.release(bytes);
          refusal = { reason: 'global', limit: this.global.limitBytes };
        }
        if (refusal !== undefined) {
          // Shares this call made, or emptied, hold nothing: they go.
          this.#letGoIfEmpty(this.#accounts, account, accountShare);
          this.#letGoIfEmpty(this.#addresses, addressKey, addressShare);
        }
        return refusal;
      },
      release: (bytes) => {
        if (accountShare === undefined || addressShare === undefined) {
          throw new InvariantError(`queue budget release of ${bytes} bytes before any reservation`);
        }
        this.global.release(bytes);
        this.#release(this.#accounts, account, accountShare, bytes);
        this.#release(this.#addresses, addressKey, addressShare, bytes);
        this.#wake();
      },
    };
  }

  /**
   * Whether the longest-waiting waiter's bytes are free now, or can never be (a reload lowered the
   * limit below them: its retry is refused for good and ends its session, and the others move up).
   */
  #firstFits(): boolean {
    const first = this.#waiters.values().next();
    if (first.done) return false;
    const { limitBytes, usedBytes } = this.global;
    return limitBytes - usedBytes >= first.value.need || first.value.need > limitBytes;
  }

  /**
   * Releases come in the middle of another session's work (an ack, an ending): the waiters are
   * called after it, from the event loop, never from inside it, and only when the first of them
   * fits (no retry loop while too little is free).
   */
  #wake(): void {
    if (this.#waking || !this.#firstFits()) return;
    this.#waking = true;
    setImmediate(() => {
      this.#waking = false;
      while (this.#firstFits()) {
        const [key, waiter] = this.#waiters.entries().next().value!;
        waiter.retry();
        // Served, or (asked again under its key) still waiting in front: the others wait behind it.
        if (this.#waiters.get(key) !== waiter) {
          if (this.#waiters.has(key)) return;
        } else this.#waiters.delete(key);
      }
    });
  }

  #addressLimit(): number {
    return this.limits.perAddressBytes === 0 ? Infinity : this.limits.perAddressBytes;
  }

  #share(map: Map<string, Share>, key: string, limit: number): Share {
    let share = map.get(key);
    if (share === undefined) {
      share = { budget: new MemoryBudget(limit), attached: true };
      map.set(key, share);
    }
    return share;
  }

  #release(map: Map<string, Share>, key: string, share: Share, bytes: number): void {
    share.budget.release(bytes);
    this.#letGoIfEmpty(map, key, share);
  }

  #letGoIfEmpty(map: Map<string, Share>, key: string, share: Share): void {
    if (share.budget.usedBytes === 0 && map.get(key) === share) {
      map.delete(key);
      share.attached = false;
    }
  }
}
