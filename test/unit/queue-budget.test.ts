import { describe, expect, it } from 'vitest';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { QueueShares } from '../../src/sm/queue-budget.js';
import { UnackedQueue } from '../../src/sm/unacked-queue.js';

const stanza = (bytes: number): Buffer => Buffer.alloc(bytes, 0x61);
const QUEUE = { maxStanzas: 1000, maxBytes: 1000 };

describe('QueueShares: each account and client address gets a share of the queue memory (README, Limits and abuse)', () => {
  it('refuses an account over its share without touching the global budget or another account', () => {
    const global = new MemoryBudget(10_000);
    const shares = new QueueShares(global, { perAccountBytes: 300, perAddressBytes: 0 });
    const mallory1 = shares.forSession('mallory@example.org', '192.0.2.1');
    const mallory2 = shares.forSession('mallory@example.org', '192.0.2.2');
    const alice = shares.forSession('alice@example.org', '192.0.2.3');
    expect(mallory1.reserve(200)).toBeUndefined();
    expect(mallory2.reserve(101)).toEqual({ reason: 'account', limit: 300 });
    expect(global.usedBytes).toBe(200);
    expect(alice.reserve(300)).toBeUndefined();
    mallory1.release(200);
    expect(mallory2.reserve(300)).toBeUndefined();
  });

  it('refuses an address over its share, and reports the global budget last', () => {
    const global = new MemoryBudget(450);
    const shares = new QueueShares(global, { perAccountBytes: 400, perAddressBytes: 300 });
    const a = shares.forSession('a@example.org', 'nat');
    const b = shares.forSession('b@example.org', 'nat');
    const c = shares.forSession('c@example.org', 'elsewhere');
    expect(a.reserve(200)).toBeUndefined();
    expect(b.reserve(200)).toEqual({ reason: 'address', limit: 300 });
    expect(c.reserve(300)).toEqual({ reason: 'global', limit: 450 });
    expect(global.usedBytes).toBe(200);
  });

  it('lets go of a share once it holds nothing, and a session that held it finds the next one', () => {
    const shares = new QueueShares(new MemoryBudget(Infinity), { perAccountBytes: 100, perAddressBytes: 100 });
    const one = shares.forSession('u@example.org', 'x');
    const two = shares.forSession('u@example.org', 'x');
    expect(one.reserve(60)).toBeUndefined();
    one.release(60);
    expect(shares.sharesInUse).toBe(0);
    expect(two.reserve(60)).toBeUndefined();
    expect(one.reserve(60)).toEqual({ reason: 'account', limit: 100 });
    expect(shares.sharesInUse).toBe(2);
  });

  it('keeps no share for a session that holds nothing, nor for a refused first reservation', () => {
    const shares = new QueueShares(new MemoryBudget(100), { perAccountBytes: 1000, perAddressBytes: 0 });
    shares.forSession('idle@example.org', 'x');
    expect(shares.sharesInUse).toBe(0);
    const refused = shares.forSession('u@example.org', 'y');
    expect(refused.reserve(101)).toEqual({ reason: 'global', limit: 100 });
    expect(shares.sharesInUse).toBe(0);
  });

  it('applies new limits (a reload) to the shares in use', () => {
    const shares = new QueueShares(new MemoryBudget(Infinity), { perAccountBytes: 100, perAddressBytes: 0 });
    const session = shares.forSession('u@example.org', 'x');
    expect(session.reserve(80)).toBeUndefined();
    shares.setLimits({ perAccountBytes: 50, perAddressBytes: 0 });
    expect(session.reserve(1)).toEqual({ reason: 'account', limit: 50 });
  });
});

describe('UnackedQueue with shares: a share refuses like the queue’s own limits', () => {
  it('offer: an account share refusal changes nothing, so the stanza can be offered again after acks', () => {
    const shares = new QueueShares(new MemoryBudget(Infinity), { perAccountBytes: 150, perAddressBytes: 0 });
    const queue = new UnackedQueue(QUEUE, shares.forSession('u@example.org', 'x'));
    expect(queue.offer(stanza(100), 0).ok).toBe(true);
    expect(queue.offer(stanza(100), 0)).toEqual({ ok: false, reason: 'account', limit: 150 });
    expect(queue.overflowed).toBe(false);
    queue.ack(1);
    expect(queue.offer(stanza(100), 0).ok).toBe(true);
  });

  it('push (hibernating): the refusal is final', () => {
    const shares = new QueueShares(new MemoryBudget(Infinity), { perAccountBytes: 150, perAddressBytes: 0 });
    const queue = new UnackedQueue(QUEUE, shares.forSession('u@example.org', 'x'));
    expect(queue.push(stanza(100), 0).ok).toBe(true);
    expect(queue.push(stanza(100), 0)).toEqual({ ok: false, reason: 'account', limit: 150 });
    expect(queue.overflowed).toBe(true);
  });
});

describe('QueueShares.whenRoom: waiting for room in the global budget', () => {
  const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

  it('calls the waiters after a release, from the event loop, in the order they began to wait, when their bytes are free', async () => {
    const shares = new QueueShares(new MemoryBudget(300), { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(300)).toBeUndefined();
    const a = shares.forSession('a@example.org', 'x');
    const b = shares.forSession('b@example.org', 'x');
    const order: string[] = [];
    // Each waiter takes its 100 bytes when called, as a session whose stanza now fits.
    shares.whenRoom(a, 100, () => {
      order.push('a');
      expect(a.reserve(100)).toBeUndefined();
    });
    shares.whenRoom(b, 100, () => {
      order.push('b');
      expect(b.reserve(100)).toBeUndefined();
    });
    await nextTurn();
    expect(order, 'no room yet: nobody is called').toEqual([]);
    expect(shares.waitingForRoom).toBe(2);

    hoarder.release(100);
    expect(order, 'not from inside the release').toEqual([]);
    await nextTurn();
    expect(order, 'room for one: the first to wait').toEqual(['a']);
    expect(shares.waitingForRoom).toBe(1);

    hoarder.release(200);
    await nextTurn();
    expect(order).toEqual(['a', 'b']);
    expect(shares.waitingForRoom).toBe(0);
  });

  it('calls no one while the first waiter’s bytes are not free: no retry loop, and no one overtakes it', async () => {
    const shares = new QueueShares(new MemoryBudget(1000), { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(1000)).toBeUndefined();
    const calls: string[] = [];
    shares.whenRoom('big', 500, () => calls.push('big'));
    shares.whenRoom('small', 50, () => calls.push('small'));
    hoarder.release(100);
    for (let turn = 0; turn < 5; turn++) await nextTurn();
    expect(calls).toEqual([]);
    hoarder.release(400);
    await nextTurn();
    expect(calls).toEqual(['big', 'small']);
  });

  it('a retry that still does not fit asks again and keeps its place in front', async () => {
    const shares = new QueueShares(new MemoryBudget(300), { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(300)).toBeUndefined();
    const calls: string[] = [];
    let firstNeed = 100;
    const first = (): void => {
      calls.push(`first ${firstNeed}`);
      // Its stanza grew (another one went first in its backlog): it asks again, for more.
      if (firstNeed === 100) shares.whenRoom('first', (firstNeed = 250), first);
    };
    shares.whenRoom('first', firstNeed, first);
    shares.whenRoom('second', 100, () => calls.push('second'));
    hoarder.release(100);
    await nextTurn();
    expect(calls, 'the second does not overtake the first').toEqual(['first 100']);
    hoarder.release(150);
    await nextTurn();
    expect(calls).toEqual(['first 100', 'first 250', 'second']);
  });

  it('a waiter that stops waiting lets the one behind it move up at once', async () => {
    const shares = new QueueShares(new MemoryBudget(1000), { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(900)).toBeUndefined();
    const calls: string[] = [];
    const stopBig = shares.whenRoom('big', 800, () => calls.push('big'));
    shares.whenRoom('small', 10, () => calls.push('small'));
    await nextTurn();
    expect(calls).toEqual([]);
    stopBig();
    await nextTurn();
    expect(calls).toEqual(['small']);
  });

  it('a waiter that can never fit (a reload lowered the limit) is called, so that its session ends and the others move up', async () => {
    const global = new MemoryBudget(1000);
    const shares = new QueueShares(global, { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(1000)).toBeUndefined();
    const calls: string[] = [];
    shares.whenRoom('big', 800, () => calls.push('big'));
    shares.whenRoom('small', 10, () => calls.push('small'));
    global.setLimit(500);
    shares.setLimits({ perAccountBytes: 1000, perAddressBytes: 0 });
    hoarder.release(1000);
    await nextTurn();
    expect(calls).toEqual(['big', 'small']);
  });

  it('a waiter that stops waiting is not called', async () => {
    const shares = new QueueShares(new MemoryBudget(100), { perAccountBytes: 1000, perAddressBytes: 0 });
    const hoarder = shares.forSession('h@example.org', 'x');
    expect(hoarder.reserve(100)).toBeUndefined();
    let called = false;
    const stop = shares.whenRoom('w', 10, () => {
      called = true;
    });
    stop();
    hoarder.release(100);
    await nextTurn();
    expect(called).toBe(false);
    expect(shares.waitingForRoom).toBe(0);
  });

  it('a raised limit (a reload) wakes the waiters', async () => {
    const global = new MemoryBudget(100);
    const shares = new QueueShares(global, { perAccountBytes: 1000, perAddressBytes: 0 });
    expect(shares.forSession('h@example.org', 'x').reserve(100)).toBeUndefined();
    let called = 0;
    shares.whenRoom('w', 50, () => called++);
    global.setLimit(200);
    shares.setLimits({ perAccountBytes: 1000, perAddressBytes: 0 });
    await nextTurn();
    expect(called).toBe(1);
  });
});
