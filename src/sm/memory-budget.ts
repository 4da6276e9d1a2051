import { InvariantError } from '../errors.js';
import type { BudgetRefusal, QueueBudget } from './queue-budget.js';

/**
 * One byte budget shared by the unacked queues of all sessions, so that many hibernating sessions
 * cannot together exhaust the process's memory even when each stays under its own queue limit.
 *
 * Pure bookkeeping: it counts the bytes its users say they hold; it allocates nothing.
 */
export class MemoryBudget implements QueueBudget {
  #limitBytes: number;
  #usedBytes = 0;

  /**
   * @param limitBytes the most bytes that may be reserved at once: a non-negative integer
   *   (`Infinity` is accepted and means no global limit).
   * @throws InvariantError if `limitBytes` is negative, fractional or NaN.
   */
  constructor(limitBytes: number) {
    this.#limitBytes = checkedLimit(limitBytes);
  }

  /** The most bytes that may be reserved at once. */
  get limitBytes(): number {
    return this.#limitBytes;
  }

  /**
   * A new limit (a config reload): every later reservation is held to it. Bytes reserved beyond a
   * lowered limit stay reserved; reservations fail until releases bring the total under it.
   */
  setLimit(limitBytes: number): void {
    this.#limitBytes = checkedLimit(limitBytes);
  }

  /** {@link tryReserve} as a {@link QueueBudget} (queue-budget.ts): the whole budget is the one limit. */
  reserve(bytes: number): BudgetRefusal | undefined {
    return this.tryReserve(bytes) ? undefined : { reason: 'global', limit: this.#limitBytes };
  }

  /** Bytes reserved now. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /**
   * Reserves `bytes` if that keeps the total at or under {@link limitBytes}.
   * @returns true if reserved; false (and nothing reserved) if it would exceed the limit.
   * @throws InvariantError if `bytes` is not a non-negative integer.
   */
  tryReserve(bytes: number): boolean {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvariantError(`memory budget reservation of ${bytes} bytes is not a non-negative integer`);
    }
    if (this.#usedBytes + bytes > this.#limitBytes) return false;
    this.#usedBytes += bytes;
    return true;
  }

  /**
   * Gives back `bytes` reserved earlier.
   * @throws InvariantError if `bytes` is not a non-negative integer or more than is reserved
   *   (a double release: the accounting would drift for every other session).
   */
  release(bytes: number): void {
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > this.#usedBytes) {
      throw new InvariantError(`memory budget release of ${bytes} bytes with only ${this.#usedBytes} reserved`);
    }
    this.#usedBytes -= bytes;
  }
}

function checkedLimit(limitBytes: number): number {
  if (!(limitBytes === Infinity || (Number.isSafeInteger(limitBytes) && limitBytes >= 0))) {
    throw new InvariantError(`memory budget limitBytes ${limitBytes} is not a non-negative integer`);
  }
  return limitBytes;
}
