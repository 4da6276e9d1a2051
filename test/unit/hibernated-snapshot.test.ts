import { describe, expect, it } from 'vitest';
import { readSnapshot, writeSnapshot } from '../../src/session/hibernated-snapshot.js';
import { StreamManagement, type SmSettings } from '../../src/sm/stream-management.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { MAX_SEQ } from '../../src/sm/sequence.js';

const SETTINGS: SmSettings = {
  hibernationMs: 300_000,
  maxHibernationMs: 600_000,
  maxUnackedStanzas: 0,
  maxAckDelayMs: 30_000,
  ackRequestIntervalMs: 60_000,
  maxQueueStanzas: 100,
  maxQueueBytes: 1 << 20,
};

function enabled(budget = new MemoryBudget(1 << 20)): StreamManagement {
  const result = StreamManagement.enable({ ns: 'urn:xmpp:sm:3', resumeAttr: 'true', maxAttr: undefined, settings: SETTINGS, budget });
  if (!result.ok) throw new Error(result.text);
  return result.sm;
}

const stanza = (i: number) => Buffer.from(`<message to='a@example.org/r' id='m${i}'><body>caf\u00e9 ${i}</body></message>`);

const SESSION = {
  sid: 'Ab12Cd34',
  addressKey: '192.0.2.7',
  domain: 'example.org',
  jid: 'a@example.org/r',
  sinceMs: 1_000,
  expiresAtMs: 301_000,
  presenceShown: true,
  features: { 'push-notifications': { registrations: [{ jid: 'push.example.org', node: 'n1' }], wakers: 2 } },
  serverFeatures:
    "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
};

/** Through JSON, as it crosses to the next process. */
function roundTrip(sm: StreamManagement) {
  const written = writeSnapshot({ ...SESSION, sm: sm.snapshot() });
  return readSnapshot(JSON.parse(JSON.stringify(written)));
}

describe('hibernated session snapshot (version 1)', () => {
  it('round-trips SM state and the unacked queue: the restored session resumes with the same replay', () => {
    const sm = enabled();
    for (let i = 1; i <= 5; i++) sm.queue.push(stanza(i), 10_000 + i);
    sm.queue.ack(2);
    sm.inbound.handled();
    sm.inbound.handled();
    sm.inbound.handled();
    const read = roundTrip(sm);
    const { sm: _sm, ...facts } = read;
    expect(facts).toEqual(SESSION);
    expect(readSnapshot(JSON.parse(JSON.stringify(writeSnapshot({ ...read, serverFeatures: undefined })))).serverFeatures).toBeUndefined();
    const budget = new MemoryBudget(1 << 20);
    const restored = StreamManagement.restore(read.sm, SETTINGS, budget);
    if (!(restored instanceof StreamManagement)) throw new Error(`restore refused: ${restored.reason}`);
    expect([restored.id, restored.ns, restored.resumable, restored.inbound.h]).toEqual([sm.id, sm.ns, true, 3]);
    expect([restored.queue.sent, restored.queue.acked, restored.queue.length]).toEqual([5, 2, 3]);
    expect(budget.usedBytes).toBe(stanza(3).length + stanza(4).length + stanza(5).length);
    const resumed = restored.queue.resume(3);
    expect(resumed.ack).toEqual({ kind: 'acked', count: 1 });
    expect(resumed.replay.map((e) => [e.bytes.toString(), e.sentAtMs])).toEqual([
      [stanza(4).toString(), 10_004],
      [stanza(5).toString(), 10_005],
    ]);
    expect(restored.queue.checkAck(1)).toMatchObject({ kind: 'backwards' });
  });

  it('keeps counters across the 2^32 wrap', () => {
    const sm = enabled();
    const read = roundTrip(sm);
    const wrapped = { ...read.sm, h: MAX_SEQ, queue: { ...read.sm.queue, sent: MAX_SEQ, acked: MAX_SEQ } };
    const restored = StreamManagement.restore(wrapped, SETTINGS, new MemoryBudget(1 << 20));
    if (!(restored instanceof StreamManagement)) throw new Error('restore refused');
    restored.queue.push(stanza(1), 1);
    expect(restored.queue.sent).toBe(0);
    restored.inbound.handled();
    expect(restored.inbound.h).toBe(0);
  });

  it('is refused by the next process when it does not fit that process limits', () => {
    const sm = enabled();
    for (let i = 1; i <= 3; i++) sm.queue.push(stanza(i), i);
    const budget = new MemoryBudget(1 << 20);
    const refused = StreamManagement.restore(roundTrip(sm).sm, { ...SETTINGS, maxQueueStanzas: 2 }, budget);
    expect(refused).toMatchObject({ ok: false, reason: 'stanzas', limit: 2 });
    expect(budget.usedBytes).toBe(0);
  });

  it.each([
    ['another version', { version: 2 }],
    ['a queue whose counters disagree with its entries', { sm: { queue: { sent: 9 } } }],
    ['bytes that are not base64', { sm: { queue: { entries: [{ bytes: '%%%', sentAtMs: 1 }] } } }],
    ['an h outside 0..2^32-1', { sm: { h: 2 ** 32 } }],
    ['no session id', { sid: '' }],
    ['a presence that is not a boolean', { presenceShown: 'yes' }],
    ['features that are not a string', { serverFeatures: 7 }],
    ['hook data that is not an object', { features: [] }],
  ])('refuses %s', (_label, change) => {
    const sm = enabled();
    sm.queue.push(stanza(1), 1);
    const written = JSON.parse(JSON.stringify(writeSnapshot({ ...SESSION, sinceMs: 1, expiresAtMs: 2, sm: sm.snapshot() })));
    const merged = deepMerge(written, change);
    expect(() => {
      const read = readSnapshot(merged);
      const restored = StreamManagement.restore(read.sm, SETTINGS, new MemoryBudget(1 << 20));
      if (!(restored instanceof StreamManagement)) throw new Error('refused by limits');
    }).toThrow();
  });
});

function deepMerge(base: Record<string, unknown>, change: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(change)) {
    const current = out[key];
    out[key] =
      value !== null &&
      typeof value === 'object' &&
      !Array.isArray(value) &&
      current !== null &&
      typeof current === 'object' &&
      !Array.isArray(current)
        ? deepMerge(current as Record<string, unknown>, value as Record<string, unknown>)
        : value;
  }
  return out;
}
