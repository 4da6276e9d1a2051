import { describe, expect, it } from 'vitest';
import { FailedLogins } from '../../src/session/failed-logins.js';

const A = '192.0.2.1';
const B = '192.0.2.2';

describe('FailedLogins: the back-off per address (README, Limits and abuse)', () => {
  it('refuses after maxFailedLogins close together, for backoffMs, doubling with each further failure', () => {
    const logins = new FailedLogins({ maxFailedLogins: 3, backoffMs: 1000 });
    logins.failed(A, 0);
    logins.failed(A, 500);
    expect(logins.refusedFor(A, 600)).toBe(0);
    logins.failed(A, 1000);
    expect(logins.refusedFor(A, 1000)).toBe(1000);
    expect(logins.refusedFor(A, 1999)).toBe(1);
    expect(logins.refusedFor(A, 2000)).toBe(0);
    expect(logins.refusedFor(B, 1000), 'another address').toBe(0);
    // A failure right after the refusal ended: twice as long.
    logins.failed(A, 2500);
    expect(logins.refusedFor(A, 2500)).toBe(2000);
  });

  it('starts counting afresh after a quiet back-off period', () => {
    const logins = new FailedLogins({ maxFailedLogins: 3, backoffMs: 1000 });
    logins.failed(A, 0);
    logins.failed(A, 900);
    logins.failed(A, 2000);
    expect(logins.refusedFor(A, 2000)).toBe(0);
  });

  it('never refuses with maxFailedLogins 0, and caps the refusal at an hour', () => {
    const off = new FailedLogins({ maxFailedLogins: 0, backoffMs: 1000 });
    for (let i = 0; i < 10; i++) off.failed(A, i);
    expect(off.refusedFor(A, 10)).toBe(0);
    const capped = new FailedLogins({ maxFailedLogins: 1, backoffMs: 1000 });
    let t = 0;
    for (let i = 0; i < 40; i++) {
      capped.failed(A, t);
      t += capped.refusedFor(A, t);
    }
    expect(capped.refusedFor(A, t - 1)).toBeLessThanOrEqual(3_600_000);
    capped.failed(A, t);
    expect(capped.refusedFor(A, t)).toBe(3_600_000);
  });

  it('keeps the counts when a reload changes the policy, and applies the new one to them', () => {
    const logins = new FailedLogins({ maxFailedLogins: 3, backoffMs: 1000 });
    logins.failed(A, 0);
    logins.failed(A, 100);
    expect(logins.refusedFor(A, 100)).toBe(0);
    logins.setPolicy({ maxFailedLogins: 2, backoffMs: 5000 });
    logins.failed(A, 200);
    expect(logins.refusedFor(A, 200)).toBeGreaterThan(0);
    logins.setPolicy({ maxFailedLogins: 0, backoffMs: 5000 });
    expect(logins.refusedFor(A, 300), 'back-off turned off').toBe(0);
  });
});
