import { describe, expect, it } from 'vitest';
import { listenerKey, readToNext, readToPrevious } from '../../src/upgrade/handoff-protocol.js';

const ENDED = { smId: 'c2VjcmV0', h: 4_294_967_295, bareJid: 'alice@example.org', domain: 'example.org', reason: 'expired', endedAtMs: 1 };

describe('the hand-off messages of an upgrade (README, Upgrading)', () => {
  it.each([
    { kind: 'listener', key: 'starttls 0.0.0.0:5222' },
    { kind: 'listeners-sent', count: 3 },
    { kind: 'session', session: { version: 1 }, serverHeader: 'PHN0cmVhbTpzdHJlYW0+' },
    { kind: 'ended', sessions: [ENDED] },
    { kind: 'done', handedOver: 0 },
  ])('reads $kind from the running process', (message) => {
    expect(readToNext(JSON.parse(JSON.stringify(message)))).toEqual(message);
  });

  it.each([{ kind: 'ready' }, { kind: 'listening' }, { kind: 'running' }, { kind: 'refused', reason: 'protocol 2' }])(
    'reads $kind from the new process',
    (message) => {
      expect(readToPrevious(message)).toEqual(message);
    },
  );

  it.each([
    ['not an object', 'done'],
    ['an unknown kind', { kind: 'shutdown' }],
    ['a listener without a key', { kind: 'listener', key: '' }],
    ['a count that is not a count', { kind: 'listeners-sent', count: -1 }],
    ['a session without its server header', { kind: 'session', session: {} }],
    ['an ended session with an h beyond 2^32-1', { kind: 'ended', sessions: [{ ...ENDED, h: 2 ** 32 }] }],
    ['an ended session with an unknown reason', { kind: 'ended', sessions: [{ ...ENDED, reason: 'vanished' }] }],
  ])('refuses %s', (_what, message) => {
    expect(() => readToNext(message)).toThrow(/hand-off message refused/);
  });

  it('refuses what the new process cannot have sent', () => {
    expect(() => readToPrevious({ kind: 'listener', key: 'x' })).toThrow(/hand-off message refused/);
    expect(() => readToPrevious({ kind: 'refused' })).toThrow(/hand-off message refused/);
  });

  it('names a listener by its config entry: the same in both processes', () => {
    expect(listenerKey({ type: 'directtls', host: '::', port: 5223 })).toBe('directtls [::]:5223');
    expect(listenerKey({ type: 'admin', host: '127.0.0.1', port: 9180 })).toBe('admin 127.0.0.1:9180');
  });
});
