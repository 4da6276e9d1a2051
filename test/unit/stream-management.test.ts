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
