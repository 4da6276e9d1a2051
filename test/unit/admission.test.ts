import { describe, expect, it } from 'vitest';
import { admit, type AdmissionCounts, type AdmissionLimits } from '../../src/session/admission.js';

const LIMITS: AdmissionLimits = { maxSessionsPerAddress: 5, maxUnauthenticated: 100, maxUnauthenticatedPerAddress: 2 };
const NONE: AdmissionCounts = { pending: 0, pendingFromAddress: 0, fromAddress: 0 };

function outcome(counts: Partial<AdmissionCounts>, limits: Partial<AdmissionLimits> = {}): string {
  const admission = admit({ ...NONE, ...counts }, { ...LIMITS, ...limits });
  if (admission.kind === 'refuse') return `${admission.error.condition} ${admission.error.code}`;
  return admission.evictOldest ? 'admit, evicting the oldest' : 'admit';
}

describe('admit: a new connection against the limits (README, Limits and abuse)', () => {
  it.each<[string, Partial<AdmissionCounts>, Partial<AdmissionLimits>, string]>([
    ['nothing open', {}, {}, 'admit'],
    [
      'its address has maxUnauthenticatedPerAddress logging in',
      { pendingFromAddress: 2, fromAddress: 2 },
      {},
      'policy-violation PROXY_ERR_TOO_MANY_UNAUTHENTICATED_FROM_ADDRESS',
    ],
    ['one below it', { pendingFromAddress: 1, fromAddress: 1 }, {}, 'admit'],
    [
      '0 means no per-address limit on logging in',
      { pendingFromAddress: 50, fromAddress: 0 },
      { maxUnauthenticatedPerAddress: 0 },
      'admit',
    ],
    ['its address holds maxSessionsPerAddress sessions', { fromAddress: 5 }, {}, 'policy-violation PROXY_ERR_TOO_MANY_FROM_ADDRESS'],
    ['0 means no per-address session limit', { fromAddress: 500 }, { maxSessionsPerAddress: 0 }, 'admit'],
    ['maxUnauthenticated logging in, in all: never refused, the oldest makes room', { pending: 100 }, {}, 'admit, evicting the oldest'],
    ['one below maxUnauthenticated', { pending: 99 }, {}, 'admit'],
  ])('%s → %s', (_label, counts, limits, expected) => {
    expect(outcome(counts, limits)).toBe(expected);
  });
});
