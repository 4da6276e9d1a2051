import { describe, expect, it } from 'vitest';
import { StreamManagement, type SmSettings } from '../../src/sm/stream-management.js';
import { MemoryBudget } from '../../src/sm/memory-budget.js';
import { parseElement } from '../../src/xml/element.js';
import { NS, type SmNamespace } from '../../src/xml/namespaces.js';

const SETTINGS: SmSettings = {
  hibernationMs: 300_000,
  maxHibernationMs: 600_000,
  maxUnackedStanzas: 0,
  maxAckDelayMs: 60_000,
  ackRequestIntervalMs: 5_000,
  maxQueueStanzas: 100,
  maxQueueBytes: 100_000,
};

function enable(ns: SmNamespace, settings: Partial<SmSettings> = {}, maxAttr?: string): StreamManagement {
  const result = StreamManagement.enable({
    ns,
    resumeAttr: 'true',
    maxAttr,
    settings: { ...SETTINGS, ...settings },
    budget: new MemoryBudget(Infinity),
  });
  if (!result.ok) throw new Error(result.text);
  return result.sm;
}

describe('StreamManagement.enabledElement', () => {
  // XEP-0198 §13: max is an xs:positiveInteger; fractional hibernation times round up, never to 0.
  it.each([
    [300_000, undefined, '300'],
    [1_000, undefined, '1'],
    [500, undefined, '1'],
    [300, undefined, '1'],
    [1_500, undefined, '2'],
    [300_000, '100', '100'],
  ])('hibernationMs %d, client max %s → max=%s', (hibernationMs, maxAttr, expected) => {
    const sm = enable(NS.sm3, { hibernationMs, maxHibernationMs: Math.max(hibernationMs, 600_000) }, maxAttr);
    const enabled = parseElement(sm.enabledElement());
    expect(enabled.attrs).toMatchObject({ xmlns: NS.sm3, resume: 'true', max: expected });
  });
});

describe('StreamManagement.resumedElement', () => {
  // XEP-0198 §2: the answer uses the namespace of the request, here <resume/>, not <enable/>.
  it.each([
    [NS.sm3, NS.sm2],
    [NS.sm2, NS.sm3],
    [NS.sm3, NS.sm3],
  ])('enabled in %s, resumed in %s', (enableNs, resumeNs) => {
    const sm = enable(enableNs);
    const resumed = parseElement(sm.resumedElement(resumeNs));
    expect(resumed.attrs).toEqual({ xmlns: resumeNs, previd: sm.id, h: '0' });
  });
});

describe('StreamManagement: the ack protocol (XEP-0198 §4)', () => {
  const T0 = 1_000_000;
  const sent = (sm: StreamManagement, n: number) => {
    for (let i = 0; i < n; i++) sm.queue.push(Buffer.from(`<message id='${i}'/>`), T0);
  };

  it('asks after a burst, once per sent count, and again only after an answer with more sent', () => {
    const sm = enable(NS.sm3);
    expect(sm.requestIfDue('burst', T0)).toBeUndefined();
    sent(sm, 2);
    expect(sm.requestIfDue('burst', T0)).toBe(`<r xmlns='${NS.sm3}'/>`);
    expect(sm.requestIfDue('burst', T0)).toBeUndefined();
    // The answer tells when the request it answers was sent: the ack's round trip, for the metrics.
    expect(sm.onAck('1')).toEqual({ kind: 'acked', requestedAtMs: T0 });
    expect(sm.requestIfDue('burst', T0)).toBeUndefined();
    sent(sm, 1);
    expect(sm.requestIfDue('burst', T0)).toBeDefined();
  });

  it('asks on the periodic check only with stanzas unacked and no request outstanding; after a replay at once', () => {
    const sm = enable(NS.sm2);
    expect(sm.requestIfDue('periodic', T0)).toBeUndefined();
    expect(sm.requestIfDue('replayed', T0)).toBe(`<r xmlns='${NS.sm2}'/>`);
    sm.linkChanged();
    sent(sm, 1);
    expect(sm.requestIfDue('periodic', T0)).toBeDefined();
    expect(sm.requestIfDue('periodic', T0)).toBeUndefined();
  });

  it('tolerates a backwards h, which still answers the outstanding request', () => {
    const sm = enable(NS.sm3);
    sent(sm, 3);
    expect(sm.onAck('2')).toStrictEqual({ kind: 'acked', requestedAtMs: undefined });
    sm.requestIfDue('periodic', T0);
    expect(sm.onAck('1')).toEqual({ kind: 'backwards', h: 1, previous: 2, requestedAtMs: T0 });
    expect(sm.ackTimerFired(T0 + 60_000, 60_000)).toEqual({ kind: 'idle' });
  });

  it.each([
    ['missing', undefined, 'invalid-xml'],
    ['not a number', '1e3', 'invalid-xml'],
    ['above 2^32 - 1', '4294967296', 'invalid-xml'],
    ['more than was sent', '4', 'undefined-condition'],
  ])('ends the stream on an h %s', (_label, h, condition) => {
    const sm = enable(NS.sm3);
    sent(sm, 3);
    const outcome = sm.onAck(h);
    expect(outcome.kind).toBe('error');
    if (outcome.kind === 'error') expect(outcome.error.condition).toBe(condition);
  });

  it('reports a request overdue only after maxAckDelay, and what is left of it before', () => {
    const sm = enable(NS.sm3);
    sent(sm, 1);
    sm.requestIfDue('burst', T0);
    expect(sm.ackTimerFired(T0 + 20_000, 60_000)).toEqual({ kind: 'wait', ms: 40_000 });
    expect(sm.ackTimerFired(T0 + 60_000, 60_000)).toEqual({ kind: 'overdue', waitedMs: 60_000 });
  });
});
