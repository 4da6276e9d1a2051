import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AckClock } from '../../src/session/ack-clock.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { StreamManagement } from '../../src/sm/stream-management.js';

const TIMINGS = { maxAckDelayMs: 1_000, ackRequestIntervalMs: 5_000 };

function setUp() {
  const result = StreamManagement.enable({
    ns: 'urn:xmpp:sm:3',
    resumeAttr: 'true',
    maxAttr: undefined,
    settings: {
      hibernationMs: 60_000,
      maxHibernationMs: 60_000,
      maxUnackedStanzas: 0,
      maxAckDelayMs: TIMINGS.maxAckDelayMs,
      ackRequestIntervalMs: TIMINGS.ackRequestIntervalMs,
      maxQueueStanzas: 100,
      maxQueueBytes: 100_000,
    },
    budget: new MemoryBudget(1 << 20),
  });
  if (!result.ok) throw new Error(result.text);
  const sm = result.sm;
  const requests: string[] = [];
  const overdue: number[] = [];
  const clock = new AckClock(sm, TIMINGS, () => Date.now(), {
    sendRequest: (request) => void requests.push(request),
    overdue: (waitedMs) => void overdue.push(waitedMs),
    guard: (action) => action(),
  });
  const send = (n: number) => {
    for (let i = 0; i < n; i++) sm.queue.push(Buffer.from('<message/>'), Date.now());
  };
  return { sm, clock, requests, overdue, send };
}

describe('AckClock: when <r/> goes out (XEP-0198 §4)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('asks once at the end of a write burst, however many stanzas it had', async () => {
    const { clock, requests, send } = setUp();
    send(3);
    clock.check();
    clock.check();
    clock.check();
    expect(requests).toEqual([]);
    await Promise.resolve();
    await new Promise((resolve) => process.nextTick(resolve));
    expect(requests).toEqual(["<r xmlns='urn:xmpp:sm:3'/>"]);
    clock.stop();
  });

  it('reports an unanswered request after maxAckDelay, not before, and not once answered', () => {
    const { sm, clock, overdue, send } = setUp();
    send(1);
    clock.request('burst');
    vi.advanceTimersByTime(999);
    expect(overdue).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(overdue).toEqual([1_000]);
    send(1);
    clock.request('burst');
    sm.onAck('2');
    vi.advanceTimersByTime(5_000);
    expect(overdue).toEqual([1_000]);
    clock.stop();
  });

  it('asks about unacked stanzas every ackRequestInterval when nothing is outstanding', () => {
    const { sm, clock, requests, send } = setUp();
    vi.advanceTimersByTime(5_000);
    expect(requests).toEqual([]);
    send(1);
    clock.request('burst');
    sm.onAck('0');
    vi.advanceTimersByTime(5_000);
    expect(requests).toHaveLength(2);
    clock.stop();
  });

  it('does nothing once stopped: no request, no deadline', () => {
    const { clock, requests, overdue, send } = setUp();
    send(1);
    clock.request('burst');
    clock.stop();
    clock.request('periodic');
    vi.advanceTimersByTime(60_000);
    expect(requests).toHaveLength(1);
    expect(overdue).toEqual([]);
  });
});
