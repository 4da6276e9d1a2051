import { describe, expect, it } from 'vitest';
import { InvariantError } from '../../src/errors.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';

describe('MemoryBudget: the bytes all unacked queues may hold together (globalQueueBytes)', () => {
  it('reserves up to its limit and no further, and releases', () => {
    const budget = new MemoryBudget(100);
    expect(budget.tryReserve(60)).toBe(true);
    expect(budget.tryReserve(41)).toBe(false);
    expect(budget.tryReserve(40)).toBe(true);
    budget.release(50);
    expect(budget.usedBytes).toBe(50);
  });

  it('holds later reservations to a lowered limit (a reload) and keeps what is already reserved', () => {
    const budget = new MemoryBudget(100);
    expect(budget.tryReserve(80)).toBe(true);
    budget.setLimit(50);
    expect(budget.limitBytes).toBe(50);
    expect(budget.usedBytes).toBe(80);
    expect(budget.tryReserve(1)).toBe(false);
    budget.release(40);
    expect(budget.tryReserve(10)).toBe(true);
    expect(() => budget.setLimit(-1)).toThrow(InvariantError);
  });
});
