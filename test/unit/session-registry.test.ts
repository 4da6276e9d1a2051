import { describe, expect, it } from 'vitest';
import { SessionRegistry } from '../../src/session/session-registry.js';

const ended = (h: number, at: number) => ({ h, bareJid: 'u@x', reason: 'expired' as const, endedAtMs: at });

describe('SessionRegistry: remembered ended sessions', () => {
  it('recalls h until rememberEndedMs has passed', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    registry.endResumable('a', ended(7, 0));
    expect(registry.recallEnded('a', 1000)?.h).toBe(7);
    expect(registry.recallEnded('a', 1001)).toBeUndefined();
  });

  it('forgets the oldest first beyond maxRememberedEnded', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 2 });
    registry.endResumable('a', ended(1, 0));
    registry.endResumable('b', ended(2, 1));
    registry.endResumable('c', ended(3, 2));
    expect(registry.recallEnded('a', 3)).toBeUndefined();
    expect(registry.recallEnded('b', 3)?.h).toBe(2);
    expect(registry.recallEnded('c', 3)?.h).toBe(3);
  });

  it('remembers nothing when disabled', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 0, maxRememberedEnded: 10 });
    registry.endResumable('a', ended(1, 0));
    expect(registry.recallEnded('a', 0)).toBeUndefined();
  });
});
