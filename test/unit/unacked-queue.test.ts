import { describe, expect, it } from 'vitest';
import { InvariantError } from '../../src/errors.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { type AckResult, type QueueLimits, UnackedQueue } from '../../src/sm/unacked-queue.js';

const T0 = 1_700_000_000_000;
const UNLIMITED: QueueLimits = { maxStanzas: Infinity, maxBytes: Infinity };

/** `<message id='m{i}'/>`: 18 bytes for i < 10, 19 for i < 100. */
function stanza(i: number): Buffer {
  return Buffer.from(`<message id='m${i}'/>`);
}

/** A queue with `count` stanzas m0…m{count-1} pushed at T0, T0+1, … */
function queueWith(count: number, options: { initialSent?: number; limits?: QueueLimits; budget?: MemoryBudget } = {}) {
  const budget = options.budget ?? new MemoryBudget(Infinity);
  const queue = new UnackedQueue(options.limits ?? UNLIMITED, budget, options.initialSent);
  for (let i = 0; i < count; i++) expect(queue.push(stanza(i), T0 + i)).toEqual({ ok: true });
  return { queue, budget };
}

/** The ids of the queued stanzas, oldest first. */
function ids(entries: Iterable<{ bytes: Buffer }>): string[] {
  return [...entries].map((entry) => /id='([^']*)'/.exec(entry.bytes.toString())?.[1] ?? '?');
}

function range(from: number, to: number): string[] {
  const out: string[] = [];
  for (let i = from; i < to; i++) out.push(`m${i}`);
  return out;
}

describe('UnackedQueue push', () => {
  it('counts, stores in order with the send time, and sums bytes', () => {
    const { queue } = queueWith(3);
    expect(queue.sent).toBe(3);
    expect(queue.acked).toBe(0);
    expect(queue.length).toBe(3);
    expect(queue.bytes).toBe(3 * 18);
    expect(queue.overflowed).toBe(false);
    expect(queue.peekOldestSentAt()).toBe(T0);
    expect([...queue.entries()].map((e) => [e.bytes.toString(), e.sentAtMs])).toEqual([
      ["<message id='m0'/>", T0],
      ["<message id='m1'/>", T0 + 1],
      ["<message id='m2'/>", T0 + 2],
    ]);
  });

  it('starts empty', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    expect([queue.sent, queue.acked, queue.length, queue.bytes]).toEqual([0, 0, 0, 0]);
    expect(queue.peekOldestSentAt()).toBeUndefined();
    expect([...queue.entries()]).toEqual([]);
  });

  it('keeps a private copy: changing the caller’s buffer afterwards changes nothing', () => {
    const chunk = Buffer.from("<message id='a1'/><message id='a2'/>");
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    queue.push(chunk.subarray(0, 17), T0);
    chunk.fill(0x78);
    const [entry] = [...queue.entries()];
    expect(entry?.bytes.toString()).toBe("<message id='a1'/>".slice(0, 17));
    expect(entry?.bytes.buffer).not.toBe(chunk.buffer);
  });

  it('copies small stanzas into memory of its own, not a slice of Node’s shared pool', () => {
    const a = queueWith(2).queue;
    const b = queueWith(2).queue;
    const pooled = Buffer.from('x'); // a slice of the current process-wide pool slab
    const buffers = [...a.entries(), ...b.entries()].map((entry) => entry.bytes.buffer);
    for (const buffer of buffers) {
      expect(buffer).not.toBe(pooled.buffer);
      expect(buffer.byteLength).toBeLessThanOrEqual(1024);
    }
    expect(buffers[0]).toBe(buffers[1]); // neighbours share a slab of the queue
    expect(buffers[2]).not.toBe(buffers[0]); // queues never share one
  });

  it('gives a stanza above a quarter of the slab an exact-size buffer while the queue holds little', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    queue.push(Buffer.alloc(600, 0x61), T0);
    const [entry] = [...queue.entries()];
    expect(entry?.bytes.buffer.byteLength).toBe(600);
  });

  it('grows its slabs with the bytes queued, up to 16 KiB, so a busy queue shares allocations', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    for (let i = 0; i < 400; i++) queue.push(Buffer.alloc(600, 0x61), T0); // 240 000 bytes unacked
    const buffers = [...queue.entries()].map((entry) => entry.bytes.buffer);
    const distinct = new Set(buffers);
    expect(Math.max(...[...distinct].map((buffer) => buffer.byteLength))).toBe(16 * 1024);
    expect(distinct.size).toBeLessThan(40); // 27 stanzas to a full slab
    queue.ack(400);
    queue.push(Buffer.alloc(200, 0x62), T0); // emptied: small slabs again
    const [entry] = [...queue.entries()];
    expect(entry?.bytes.buffer.byteLength).toBe(1024);
  });

  it('compacts what is queued into one buffer of exactly its size, and goes on counting', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    for (let i = 0; i < 200; i++) queue.push(Buffer.from(`<message id='m${i}'>${'x'.repeat(500)}</message>`), T0 + i);
    queue.ack(197); // three left, in a 16 KiB slab
    const before = [...queue.entries()].map((entry) => [entry.bytes.toString(), entry.sentAtMs]);
    queue.compact();
    const after = [...queue.entries()];
    expect(after.map((entry) => [entry.bytes.toString(), entry.sentAtMs])).toEqual(before);
    expect(new Set(after.map((entry) => entry.bytes.buffer)).size).toBe(1);
    expect(after[0]!.bytes.buffer.byteLength).toBe(queue.bytes);
    queue.push(Buffer.from("<message id='late'/>"), T0 + 500);
    expect(queue.sent).toBe(201);
    expect(queue.resume(198).replay.map((entry) => entry.bytes.toString().slice(0, 22))).toEqual([
      "<message id='m198'>xxx",
      "<message id='m199'>xxx",
      "<message id='late'/>",
    ]);
  });

  it('keeps every stanza intact across slab boundaries and sizes', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity));
    const source = Buffer.alloc(2000);
    const expected: string[] = [];
    for (let i = 0; i < 300; i++) {
      const size = (i * 37) % 700; // 0 … 699 bytes: in slabs and on their own, empty ones too
      source.fill(String.fromCharCode(97 + (i % 26)), 0, size);
      queue.push(source.subarray(0, size), T0 + i);
      expected.push(source.toString('latin1', 0, size));
      source.fill(0); // the caller reuses its buffer
    }
    queue.ack(100);
    expect([...queue.entries()].map((entry) => entry.bytes.toString('latin1'))).toEqual(expected.slice(100));
    expect(queue.bytes).toBe(expected.slice(100).reduce((sum, text) => sum + text.length, 0));
  });

  it('never overwrites bytes it has handed out (they may still sit in a socket’s write queue)', () => {
    const { queue } = queueWith(3);
    const { replay } = queue.resume(0);
    const drained = queueWith(3).queue.drain();
    const before = [...replay, ...drained].map((entry) => entry.bytes.toString());
    queue.ack(3);
    for (let i = 10; i < 200; i++) queue.push(stanza(i), T0);
    expect([...replay, ...drained].map((entry) => entry.bytes.toString())).toEqual(before);
  });
});

describe('UnackedQueue ack', () => {
  type Step = [h: number, expected: AckResult, remaining: string[]];
  const cases: [name: string, pushed: number, steps: Step[]][] = [
    ['ack of 0 entries on a fresh queue', 0, [[0, { kind: 'acked', count: 0 }, []]]],
    [
      'repeated h acks 0 entries',
      3,
      [
        [2, { kind: 'acked', count: 2 }, ['m2']],
        [2, { kind: 'acked', count: 0 }, ['m2']],
      ],
    ],
    [
      'partial acks, then all',
      5,
      [
        [1, { kind: 'acked', count: 1 }, range(1, 5)],
        [3, { kind: 'acked', count: 2 }, range(3, 5)],
        [5, { kind: 'acked', count: 2 }, []],
        [5, { kind: 'acked', count: 0 }, []],
      ],
    ],
    ['all at once', 5, [[5, { kind: 'acked', count: 5 }, []]]],
    ['too-high on a fresh queue', 0, [[1, { kind: 'too-high', h: 1, sendCount: 0 }, []]]],
    ['too-high by one', 5, [[6, { kind: 'too-high', h: 6, sendCount: 5 }, range(0, 5)]]],
    // A fresh stream has acked nothing, so nothing can go backwards: 2^32-1 is "too high".
    ['h = 2^32-1 on a fresh stream is too high', 5, [[4294967295, { kind: 'too-high', h: 4294967295, sendCount: 5 }, range(0, 5)]]],
    [
      'backwards is tolerated and changes nothing',
      5,
      [
        [3, { kind: 'acked', count: 3 }, range(3, 5)],
        [1, { kind: 'backwards', h: 1, previous: 3 }, range(3, 5)],
        [0, { kind: 'backwards', h: 0, previous: 3 }, range(3, 5)],
        [4, { kind: 'acked', count: 1 }, ['m4']],
      ],
    ],
    [
      'below everything ever acked is too high, not backwards',
      5,
      [
        [3, { kind: 'acked', count: 3 }, range(3, 5)],
        [4294967295, { kind: 'too-high', h: 4294967295, sendCount: 5 }, range(3, 5)],
      ],
    ],
  ];

  it.each(cases)('%s', (_name, pushed, steps) => {
    const { queue, budget } = queueWith(pushed);
    for (const [h, expected, remaining] of steps) {
      expect(queue.ack(h)).toEqual(expected);
      expect(ids(queue.entries())).toEqual(remaining);
      expect(queue.length).toBe(remaining.length);
      expect(queue.bytes).toBe(remaining.length * 18);
      expect(budget.usedBytes).toBe(queue.bytes);
      expect(queue.sent).toBe(pushed);
    }
  });

  it('moves `acked` only on an accepted ack', () => {
    const { queue } = queueWith(5);
    queue.ack(3);
    queue.ack(9);
    queue.ack(1);
    expect(queue.acked).toBe(3);
  });

  it('peekOldestSentAt follows the oldest unacked entry', () => {
    const { queue } = queueWith(3);
    queue.ack(2);
    expect(queue.peekOldestSentAt()).toBe(T0 + 2);
    queue.ack(3);
    expect(queue.peekOldestSentAt()).toBeUndefined();
  });
});

describe('UnackedQueue across the 2^32 wrap', () => {
  // initialSent 4294967290 and 10 pushes: stanza m{i} is number 4294967291 + i (mod 2^32), so the
  // queue covers 4294967291 … 4294967295, 0 … 4 and `sent` ends at 4.
  const initialSent = 4294967290;

  it('counts through 4294967295 to 0', () => {
    const queue = new UnackedQueue(UNLIMITED, new MemoryBudget(Infinity), initialSent);
    const seen: number[] = [];
    for (let i = 0; i < 10; i++) {
      queue.push(stanza(i), T0);
      seen.push(queue.sent);
    }
    expect(seen).toEqual([4294967291, 4294967292, 4294967293, 4294967294, 4294967295, 0, 1, 2, 3, 4]);
    expect(queue.acked).toBe(initialSent);
    expect(queue.length).toBe(10);
  });

  type Step = [h: number, expected: AckResult, remaining: string[]];
  const cases: [name: string, steps: Step[]][] = [
    ['one ack across the wrap', [[3, { kind: 'acked', count: 9 }, ['m9']]]],
    ['ack of 0 entries at initialSent', [[initialSent, { kind: 'acked', count: 0 }, range(0, 10)]]],
    [
      'acks up to, over and past the wrap',
      [
        [4294967293, { kind: 'acked', count: 3 }, range(3, 10)],
        [4294967295, { kind: 'acked', count: 2 }, range(5, 10)],
        [0, { kind: 'acked', count: 1 }, range(6, 10)],
        [2, { kind: 'acked', count: 2 }, range(8, 10)],
        [4, { kind: 'acked', count: 2 }, []],
      ],
    ],
    [
      'too-high across the wrap',
      [
        [4294967295, { kind: 'acked', count: 5 }, range(5, 10)],
        [5, { kind: 'too-high', h: 5, sendCount: 4 }, range(5, 10)],
        [1000, { kind: 'too-high', h: 1000, sendCount: 4 }, range(5, 10)],
      ],
    ],
    ['too-high before any ack', [[5, { kind: 'too-high', h: 5, sendCount: 4 }, range(0, 10)]]],
    [
      'backwards across the wrap',
      [
        [2, { kind: 'acked', count: 8 }, range(8, 10)],
        [4294967293, { kind: 'backwards', h: 4294967293, previous: 2 }, range(8, 10)],
        [4294967295, { kind: 'backwards', h: 4294967295, previous: 2 }, range(8, 10)],
        [1, { kind: 'backwards', h: 1, previous: 2 }, range(8, 10)],
        [initialSent, { kind: 'backwards', h: initialSent, previous: 2 }, range(8, 10)],
        // one below the first value this queue ever held: never acked, so too high
        [initialSent - 1, { kind: 'too-high', h: initialSent - 1, sendCount: 4 }, range(8, 10)],
        [3, { kind: 'acked', count: 1 }, ['m9']],
      ],
    ],
  ];

  it.each(cases)('%s', (_name, steps) => {
    const { queue, budget } = queueWith(10, { initialSent });
    for (const [h, expected, remaining] of steps) {
      expect(queue.ack(h)).toEqual(expected);
      expect(ids(queue.entries())).toEqual(remaining);
      expect(budget.usedBytes).toBe(queue.bytes);
      expect(queue.sent).toBe(4);
    }
  });
});

describe('UnackedQueue resume (XEP-0198 §5)', () => {
  it('acks h, then replays exactly the rest in order, which stays queued', () => {
    const { queue } = queueWith(6);
    queue.ack(1);
    const { ack, replay } = queue.resume(3);
    expect(ack).toEqual({ kind: 'acked', count: 2 });
    expect(ids(replay)).toEqual(['m3', 'm4', 'm5']);
    expect(replay.map((e) => e.sentAtMs)).toEqual([T0 + 3, T0 + 4, T0 + 5]);
    expect(ids(queue.entries())).toEqual(['m3', 'm4', 'm5']);
    expect(queue.sent).toBe(6);
    expect(queue.acked).toBe(3);
    // counters carry over: the stream goes on from there
    queue.push(stanza(6), T0 + 6);
    expect(queue.ack(7)).toEqual({ kind: 'acked', count: 4 });
  });

  it.each<[name: string, h: number, ack: AckResult, replayed: string[]]>([
    ['h = 0: everything is replayed', 0, { kind: 'acked', count: 0 }, range(0, 4)],
    ['h = sent: nothing to replay', 4, { kind: 'acked', count: 4 }, []],
    ['too-high: no replay, nothing changes', 5, { kind: 'too-high', h: 5, sendCount: 4 }, []],
  ])('%s', (_name, h, expectedAck, replayed) => {
    const { queue } = queueWith(4);
    const before = ids(queue.entries());
    const { ack, replay } = queue.resume(h);
    expect(ack).toEqual(expectedAck);
    expect(ids(replay)).toEqual(replayed);
    if (expectedAck.kind === 'too-high') expect(ids(queue.entries())).toEqual(before);
  });

  it('backwards: no replay, nothing changes (the caller refuses the resume)', () => {
    const { queue } = queueWith(4);
    queue.ack(2);
    const { ack, replay } = queue.resume(1);
    expect(ack).toEqual({ kind: 'backwards', h: 1, previous: 2 });
    expect(replay).toEqual([]);
    expect(ids(queue.entries())).toEqual(['m2', 'm3']);
    expect(queue.acked).toBe(2);
  });

  it('replays across the wrap', () => {
    const { queue } = queueWith(10, { initialSent: 4294967290 });
    const { ack, replay } = queue.resume(4294967295);
    expect(ack).toEqual({ kind: 'acked', count: 5 });
    expect(ids(replay)).toEqual(range(5, 10));
  });
});

describe('UnackedQueue overflow', () => {
  it.each<[name: string, limits: QueueLimits, budgetBytes: number, accepted: number, refusal: object]>([
    ['by stanza count', { maxStanzas: 3, maxBytes: Infinity }, Infinity, 3, { reason: 'stanzas', limit: 3 }],
    ['by bytes', { maxStanzas: Infinity, maxBytes: 40 }, Infinity, 2, { reason: 'bytes', limit: 40 }],
    ['by the global budget', UNLIMITED, 60, 3, { reason: 'global', limit: 60 }],
    ['count is checked before bytes', { maxStanzas: 2, maxBytes: 36 }, Infinity, 2, { reason: 'stanzas', limit: 2 }],
    ['a single stanza over maxBytes', { maxStanzas: 10, maxBytes: 17 }, Infinity, 0, { reason: 'bytes', limit: 17 }],
  ])('%s', (_name, limits, budgetBytes, accepted, refusal) => {
    const budget = new MemoryBudget(budgetBytes);
    const queue = new UnackedQueue(limits, budget);
    for (let i = 0; i < accepted; i++) expect(queue.push(stanza(i), T0)).toEqual({ ok: true });
    expect(queue.overflowed).toBe(false);

    expect(queue.push(stanza(accepted), T0)).toEqual({ ok: false, ...refusal });
    // nothing stored, not counted, nothing reserved
    expect(queue.overflowed).toBe(true);
    expect(queue.sent).toBe(accepted);
    expect(queue.length).toBe(accepted);
    expect(ids(queue.entries())).toEqual(range(0, accepted));
    expect(budget.usedBytes).toBe(accepted * 18);

    // sticky: even with room again, the queue refuses (it could no longer replay without a gap)
    expect(queue.ack(accepted)).toEqual({ kind: 'acked', count: accepted });
    expect(budget.usedBytes).toBe(0);
    expect(queue.push(stanza(99), T0)).toEqual({ ok: false, ...refusal });
    expect(queue.overflowed).toBe(true);
    expect(queue.sent).toBe(accepted);
    expect(queue.length).toBe(0);
  });

  it('offer: a refusal by its own limits leaves the queue as it was, and the stanza fits once acks made room', () => {
    const budget = new MemoryBudget(Infinity);
    const queue = new UnackedQueue({ maxStanzas: 2, maxBytes: Infinity }, budget);
    expect(queue.offer(stanza(0), T0)).toEqual({ ok: true });
    expect(queue.offer(stanza(1), T0)).toEqual({ ok: true });
    expect(queue.offer(stanza(2), T0)).toEqual({ ok: false, reason: 'stanzas', limit: 2 });
    expect(queue.overflowed).toBe(false);
    expect(queue.sent).toBe(2);
    expect(queue.ack(1)).toEqual({ kind: 'acked', count: 1 });
    expect(queue.offer(stanza(2), T0)).toEqual({ ok: true });
    expect(ids(queue.entries())).toEqual(['m1', 'm2']);
    expect(queue.sent).toBe(3);
  });

  it('offer: a refusal by the global budget leaves the queue as it was, and the stanza fits once another queue released room', () => {
    const budget = new MemoryBudget(20);
    const queue = new UnackedQueue(UNLIMITED, budget);
    const other = new UnackedQueue(UNLIMITED, budget);
    expect(other.offer(stanza(0), T0)).toEqual({ ok: true });
    expect(queue.offer(stanza(1), T0)).toEqual({ ok: false, reason: 'global', limit: 20 });
    expect(queue.overflowed).toBe(false);
    expect(queue.sent).toBe(0);
    expect(other.ack(1)).toEqual({ kind: 'acked', count: 1 });
    expect(queue.offer(stanza(1), T0)).toEqual({ ok: true });
    expect(ids(queue.entries())).toEqual(['m1']);
  });

  it('shares the global budget between queues and releases it on ack and drain', () => {
    const budget = new MemoryBudget(100);
    const a = new UnackedQueue(UNLIMITED, budget);
    const b = new UnackedQueue(UNLIMITED, budget);
    for (let i = 0; i < 3; i++) a.push(stanza(i), T0);
    for (let i = 0; i < 2; i++) b.push(stanza(i), T0);
    expect(budget.usedBytes).toBe(90);
    expect(b.push(stanza(2), T0)).toEqual({ ok: false, reason: 'global', limit: 100 });
    expect(b.overflowed).toBe(true);
    expect(a.overflowed).toBe(false);

    a.ack(2);
    expect(budget.usedBytes).toBe(54);
    expect(a.push(stanza(3), T0)).toEqual({ ok: true });
    expect(budget.usedBytes).toBe(72);

    expect(ids(b.drain())).toEqual(['m0', 'm1']);
    expect(budget.usedBytes).toBe(36);
    a.drain();
    expect(budget.usedBytes).toBe(0);
  });
});

describe('UnackedQueue drain', () => {
  it('removes and returns everything oldest first; counters stay', () => {
    const { queue, budget } = queueWith(5);
    queue.ack(2);
    const drained = queue.drain();
    expect(ids(drained)).toEqual(['m2', 'm3', 'm4']);
    expect(drained.map((e) => e.sentAtMs)).toEqual([T0 + 2, T0 + 3, T0 + 4]);
    expect([queue.length, queue.bytes, budget.usedBytes]).toEqual([0, 0, 0]);
    expect([queue.sent, queue.acked]).toEqual([5, 2]);
    expect(queue.peekOldestSentAt()).toBeUndefined();
    expect(queue.drain()).toEqual([]);
  });

  it('a later ack over the drained range is accepted and removes nothing', () => {
    const { queue, budget } = queueWith(5);
    queue.drain();
    queue.push(stanza(5), T0 + 5);
    expect(queue.ack(3)).toEqual({ kind: 'acked', count: 0 });
    expect(queue.ack(6)).toEqual({ kind: 'acked', count: 1 });
    expect(queue.ack(7)).toEqual({ kind: 'too-high', h: 7, sendCount: 6 });
    expect(budget.usedBytes).toBe(0);
  });

  it('refuses to resume with drained stanzas unacked', () => {
    const { queue } = queueWith(5);
    queue.drain();
    expect(() => queue.resume(2)).toThrow(InvariantError);
    expect(queue.resume(9).replay).toEqual([]); // too-high is reported, not thrown
  });
});

describe('UnackedQueue storage', () => {
  // Exercises the head index and compaction (at ≥ 1024 released slots) with interleaved traffic.
  it.each([
    [1, 1],
    [3, 1],
    [2000, 1500],
    [5000, 1],
    [5000, 4999],
  ])('push bursts of %d, ack %d at a time: order, counts and bytes stay right', (burst, ackStep) => {
    const { queue, budget } = queueWith(0);
    let next = 0;
    let oldest = 0;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < burst; i++, next++) queue.push(stanza(next), T0 + next);
      while (queue.length > burst / 2) {
        const step = Math.min(ackStep, queue.length);
        expect(queue.ack(queue.acked + step)).toEqual({ kind: 'acked', count: step });
        oldest += step;
        expect(queue.peekOldestSentAt()).toBe(oldest < next ? T0 + oldest : undefined);
      }
      expect(ids(queue.entries())).toEqual(range(oldest, next));
      expect(queue.bytes).toBe(budget.usedBytes);
    }
    expect(queue.sent).toBe(next);
  });
});

describe('UnackedQueue and MemoryBudget arguments', () => {
  it.each([
    [{ maxStanzas: -1, maxBytes: 10 }, 0],
    [{ maxStanzas: 10, maxBytes: 1.5 }, 0],
    [{ maxStanzas: Number.NaN, maxBytes: 10 }, 0],
    [{ maxStanzas: 10, maxBytes: 10 }, -1],
    [{ maxStanzas: 10, maxBytes: 10 }, 2 ** 32],
  ])('rejects limits %j with initialSent %d', (limits, initialSent) => {
    expect(() => new UnackedQueue(limits, new MemoryBudget(10), initialSent)).toThrow(InvariantError);
  });

  it('MemoryBudget reserves up to the limit inclusive and refuses beyond', () => {
    const budget = new MemoryBudget(10);
    expect(budget.tryReserve(6)).toBe(true);
    expect(budget.tryReserve(5)).toBe(false);
    expect(budget.tryReserve(4)).toBe(true);
    expect(budget.tryReserve(0)).toBe(true);
    expect(budget.tryReserve(1)).toBe(false);
    expect([budget.usedBytes, budget.limitBytes]).toEqual([10, 10]);
    budget.release(10);
    expect(budget.usedBytes).toBe(0);
  });

  it.each<[name: string, act: (budget: MemoryBudget) => unknown]>([
    ['negative limit', () => new MemoryBudget(-1)],
    ['NaN limit', () => new MemoryBudget(Number.NaN)],
    ['negative reservation', (budget) => budget.tryReserve(-1)],
    ['fractional reservation', (budget) => budget.tryReserve(0.5)],
    ['release of more than reserved', (budget) => budget.release(1)],
    ['negative release', (budget) => budget.release(-1)],
  ])('MemoryBudget throws on %s', (_name, act) => {
    expect(() => act(new MemoryBudget(10))).toThrow(InvariantError);
  });
});
