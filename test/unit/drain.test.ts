import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Drain, type DrainedSession } from '../../src/admin/drain.js';
import { Readiness } from '../../src/admin/readiness.js';

afterEach(() => {
  vi.useRealTimers();
});

/** Live sessions that leave the list when drained, as the registry drops an ended session. */
function liveSessions(count: number): { live: DrainedSession[]; drained: number[] } {
  const drained: number[] = [];
  const live: DrainedSession[] = [];
  for (let i = 0; i < count; i++) {
    const session: DrainedSession = {
      drain: () => {
        drained.push(i);
        live.splice(live.indexOf(session), 1);
      },
    };
    live.push(session);
  }
  return { live, drained };
}

describe('Drain', () => {
  it('says not ready and stops accepting at once, then ends the sessions oldest first at the rate, then stops', () => {
    vi.useFakeTimers();
    const { live, drained } = liveSessions(5);
    const readiness = new Readiness();
    let stoppedAccepting = 0;
    const drain = new Drain({ sessions: () => live, stopAccepting: () => stoppedAccepting++, readiness, log: pino({ level: 'silent' }) });
    expect(drain.start(2)).toBe(5);
    expect(readiness.report([]).draining).toBe(true);
    expect(stoppedAccepting).toBe(1);
    expect(drained).toEqual([]);
    vi.advanceTimersByTime(1000);
    expect(drained).toEqual([0, 1]);
    // A second request re-paces; the listeners are not stopped twice.
    expect(drain.start(1000)).toBe(3);
    expect(stoppedAccepting).toBe(1);
    vi.advanceTimersByTime(10);
    expect(drained).toEqual([0, 1, 2, 3, 4]);
    vi.advanceTimersByTime(10);
    expect(vi.getTimerCount()).toBe(0);
  });
});
