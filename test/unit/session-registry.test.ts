import { describe, expect, it } from 'vitest';
import { SessionRegistry } from '../../src/session/session-registry.js';
import type { Session } from '../../src/session/session.js';

const ended = (h: number, at: number) => ({ h, bareJid: 'u@x', domain: 'x', reason: 'expired' as const, endedAtMs: at });

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

  it('applies new limits (a reload) to what it already remembers', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    registry.endResumable('a', ended(1, 0));
    registry.endResumable('b', ended(2, 1));
    registry.setLimits({ rememberEndedMs: 1000, maxRememberedEnded: 1 });
    expect(registry.recallEnded('a', 2)).toBeUndefined();
    expect(registry.recallEnded('b', 2)?.h).toBe(2);
    registry.setLimits({ rememberEndedMs: 0, maxRememberedEnded: 1 });
    expect(registry.recallEnded('b', 2)).toBeUndefined();
  });

  it('remembers nothing when disabled', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 0, maxRememberedEnded: 10 });
    registry.endResumable('a', ended(1, 0));
    expect(registry.recallEnded('a', 0)).toBeUndefined();
  });
});

describe('SessionRegistry: sessions per client address', () => {
  it('counts live sessions by the address that opened them, once each, and forgets empty addresses', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 0, maxRememberedEnded: 0 });
    // The registry only keys on identity; any object stands in for a Session here.
    const [a, b, c] = [{}, {}, {}] as unknown as Session[];
    registry.add(a!, '192.0.2.1');
    registry.add(b!, '192.0.2.1');
    registry.add(b!, '192.0.2.1');
    registry.add(c!, '2001:db8::1');
    expect([registry.countFrom('192.0.2.1'), registry.countFrom('2001:db8::1'), registry.size]).toEqual([2, 1, 3]);
    registry.delete(a!);
    registry.delete(a!);
    expect(registry.countFrom('192.0.2.1')).toBe(1);
    registry.delete(b!);
    registry.delete(c!);
    expect([registry.countFrom('192.0.2.1'), registry.countFrom('2001:db8::1'), registry.size]).toEqual([0, 0, 0]);
  });
});

describe('SessionRegistry: sessions not yet bound', () => {
  const session = (name: string): Session => ({ name }) as unknown as Session;

  it('counts them in all and per address, oldest first, until bound or gone', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 0, maxRememberedEnded: 0 });
    const [a, b, c] = [session('a'), session('b'), session('c')];
    registry.add(a, '192.0.2.1');
    registry.add(b, '192.0.2.1');
    registry.add(c, '192.0.2.2');
    expect([registry.pendingCount, registry.boundCount, registry.pendingFrom('192.0.2.1'), registry.oldestPending()]).toEqual([3, 0, 2, a]);

    registry.bound(a);
    expect([registry.pendingCount, registry.boundCount, registry.pendingFrom('192.0.2.1'), registry.oldestPending()]).toEqual([2, 1, 1, b]);
    expect(registry.countFrom('192.0.2.1'), 'sessions from the address, bound or not').toBe(2);

    registry.delete(b);
    registry.delete(a);
    expect([registry.pendingCount, registry.boundCount, registry.pendingFrom('192.0.2.1'), registry.countFrom('192.0.2.1')]).toEqual([
      1, 0, 0, 0,
    ]);
    expect(registry.oldestPending()).toBe(c);
  });
});

describe('SessionRegistry: sessions in the other process of an upgrade (README, Upgrading)', () => {
  const live = { resumeCandidate: () => ({ kind: 'live' }) } as unknown as Session;

  it('says elsewhere for a session announced and not arrived, and for one handed over from here', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    registry.expectArrivals(['coming', 'ends-there']);
    expect(registry.lookup('coming', 0, 0)).toEqual({ kind: 'elsewhere' });
    registry.registerResumable('coming', live, 'alice@example.net/phone');
    expect(registry.lookup('coming', 0, 0)).toEqual({ kind: 'live' });
    // The previous process says it ended there: answered as ended, with its h, not sent away again.
    registry.endResumable('ends-there', ended(5, 0));
    expect(registry.lookup('ends-there', 0, 0)).toMatchObject({ kind: 'ended', h: 5 });

    registry.registerResumable('leaving', live, 'alice@example.net/phone');
    registry.handedOff('leaving');
    expect(registry.lookup('leaving', 0, 0)).toEqual({ kind: 'elsewhere' });
  });

  it('forgets what did not come once the hand-off is over: unknown from then on', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    registry.expectArrivals(['never']);
    registry.registerResumable('here', live, 'alice@example.net/phone');
    registry.forgetElsewhere();
    expect(registry.lookup('never', 0, 0)).toEqual({ kind: 'unknown' });
    expect(registry.lookup('here', 0, 0), 'what arrived stays').toEqual({ kind: 'live' });
  });
});

describe('SessionRegistry: a new login of the same resource (README, What it does)', () => {
  const session = (queued: string) => {
    const yielded: string[] = [];
    const s = { yieldToLogin: () => (yielded.push(queued), [Buffer.from(queued)]) } as unknown as Session;
    return { s, yielded };
  };

  it('hands over the queues of the resumable sessions of that full JID only, the user name compared as servers do (ASCII case)', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    const phone = session('p');
    const typed = session('P');
    const desk = session('d');
    const other = session('o');
    registry.registerResumable('phone', phone.s, 'alice@example.net/phone');
    registry.registerResumable('typed', typed.s, 'ALICE@example.net/phone');
    registry.registerResumable('desk', desk.s, 'alice@example.net/desk');
    registry.registerResumable('other', other.s, 'bob@example.net/phone');
    expect(registry.replaceByLogin('alice@example.net', 'phone').map(String)).toEqual(['p', 'P']);
    expect(registry.replaceByLogin('alice@example.net', 'Phone'), 'resources are compared exactly').toEqual([]);
    expect([desk.yielded, other.yielded]).toEqual([[], []]);
  });

  it('forgets a session that ended or moved to another process', () => {
    const registry = new SessionRegistry({ rememberEndedMs: 1000, maxRememberedEnded: 10 });
    const ending = session('e');
    const leaving = session('l');
    registry.registerResumable('ending', ending.s, 'alice@example.net/phone');
    registry.registerResumable('leaving', leaving.s, 'alice@example.net/phone');
    registry.endResumable('ending', ended(1, 0));
    registry.handedOff('leaving');
    expect(registry.replaceByLogin('alice@example.net', 'phone')).toEqual([]);
    expect([ending.yielded, leaving.yielded]).toEqual([[], []]);
  });
});
