import { describe, expect, it } from 'vitest';
import { InvariantError } from '../../src/errors.js';
import { AckPolicy } from '../../src/sm/ack-policy.js';

const T0 = 1_700_000_000_000;

describe('AckPolicy threshold', () => {
  it.each([
    // [maxUnackedStanzas, sent, acked, shouldRequest]
    [0, 0, 0, false],
    [0, 1, 0, true],
    [0, 1, 1, false],
    [5, 5, 0, false],
    [5, 6, 0, true],
    [5, 10, 5, false],
    [5, 11, 5, true],
    // unacked counts modulo 2^32
    [5, 2, 4294967293, false], // 5 unacked across the wrap
    [5, 3, 4294967293, true], // 6 unacked across the wrap
    [0, 0, 4294967295, true], // 1 unacked across the wrap
  ])('max %d, sent %d, acked %d → %s', (maxUnackedStanzas, sent, acked, expected) => {
    expect(new AckPolicy({ maxUnackedStanzas }).shouldRequest({ sent, acked })).toBe(expected);
  });
});

describe('AckPolicy sequences', () => {
  /** A step: a burst that raised `sent` to a value, or an <a h/> that arrived. */
  type Step = { burst: number; expectRequest: boolean } | { a: number; expectRequest: boolean };

  /** Drives the policy like the session does: check after each burst and after each <a/>. */
  function run(maxUnackedStanzas: number, steps: Step[]): void {
    const policy = new AckPolicy({ maxUnackedStanzas });
    let sent = 0;
    let acked = 0;
    let now = T0;
    steps.forEach((step, index) => {
      now += 10;
      if ('burst' in step) {
        sent = step.burst;
      } else {
        acked = step.a;
        policy.answered();
      }
      const request = policy.shouldRequest({ sent, acked });
      expect(request, `step ${index}: ${JSON.stringify(step)}`).toBe(step.expectRequest);
      if (request) policy.requested(sent, now);
    });
  }

  it.each<[name: string, max: number, steps: Step[]]>([
    [
      'at most one outstanding request',
      0,
      [
        { burst: 1, expectRequest: true },
        { burst: 2, expectRequest: false },
        { burst: 7, expectRequest: false },
      ],
    ],
    // The loop guard: the client acks only part (or answers <a/> with <r/>): no new <r/> for the same sent.
    [
      'no second <r/> for the same sent after a partial <a/>',
      0,
      [
        { burst: 5, expectRequest: true },
        { a: 3, expectRequest: false },
        { a: 3, expectRequest: false },
        { burst: 6, expectRequest: true },
      ],
    ],
    [
      'no second <r/> for the same sent after an unsolicited <a/>',
      2,
      [
        { burst: 3, expectRequest: true },
        { a: 0, expectRequest: false },
        { a: 1, expectRequest: false },
      ],
    ],
    // Re-check on ack: stanzas sent while a request was outstanding are asked about at once.
    [
      're-checks when an <a/> arrives and more was sent meanwhile',
      0,
      [
        { burst: 5, expectRequest: true },
        { burst: 8, expectRequest: false },
        { a: 5, expectRequest: true },
        { a: 8, expectRequest: false },
      ],
    ],
    [
      're-check on ack respects the threshold',
      3,
      [
        { burst: 5, expectRequest: true },
        { burst: 8, expectRequest: false },
        { a: 5, expectRequest: false }, // 3 unacked, not more than 3
        { burst: 9, expectRequest: true },
      ],
    ],
    [
      'a full ack leaves nothing to ask',
      0,
      [
        { burst: 4, expectRequest: true },
        { a: 4, expectRequest: false },
        { burst: 5, expectRequest: true },
      ],
    ],
    [
      'below the threshold nothing is asked',
      10,
      [
        { burst: 10, expectRequest: false },
        { a: 0, expectRequest: false },
        { burst: 11, expectRequest: true },
      ],
    ],
  ])('%s', (_name, max, steps) => {
    run(max, steps);
  });

  it('the loop guard works across the wrap', () => {
    const policy = new AckPolicy({ maxUnackedStanzas: 0 });
    expect(policy.shouldRequest({ sent: 1, acked: 4294967294 })).toBe(true);
    policy.requested(1, T0);
    policy.answered();
    expect(policy.shouldRequest({ sent: 1, acked: 4294967295 })).toBe(false);
    expect(policy.shouldRequest({ sent: 2, acked: 4294967295 })).toBe(true);
  });
});

describe('AckPolicy outstanding and overdue', () => {
  it.each([
    // [elapsed ms, maxAckDelayMs, overdue]
    [0, 30_000, false],
    [29_999, 30_000, false],
    [30_000, 30_000, true],
    [45_000, 30_000, true],
  ])('outstanding for %d ms with max %d → overdue %s', (elapsed, maxAckDelayMs, expected) => {
    const policy = new AckPolicy({ maxUnackedStanzas: 0 });
    policy.requested(1, T0);
    expect(policy.outstandingSinceMs).toBe(T0);
    expect(policy.isOverdue(T0 + elapsed, maxAckDelayMs)).toBe(expected);
  });

  it('nothing outstanding is never overdue; an <a/> clears it', () => {
    const policy = new AckPolicy({ maxUnackedStanzas: 0 });
    expect(policy.outstandingSinceMs).toBeUndefined();
    expect(policy.isOverdue(T0 + 1e9, 0)).toBe(false);
    policy.requested(1, T0);
    policy.answered();
    expect(policy.outstandingSinceMs).toBeUndefined();
    expect(policy.isOverdue(T0 + 1e9, 30_000)).toBe(false);
  });

  it('refuses a second outstanding request', () => {
    const policy = new AckPolicy({ maxUnackedStanzas: 0 });
    policy.requested(1, T0);
    expect(() => policy.requested(2, T0 + 1)).toThrow(InvariantError);
    expect(policy.outstandingSinceMs).toBe(T0);
  });

  it.each([-1, 0.5, Number.NaN])('rejects maxUnackedStanzas %d', (maxUnackedStanzas) => {
    expect(() => new AckPolicy({ maxUnackedStanzas })).toThrow(InvariantError);
  });
});
