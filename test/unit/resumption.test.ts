import { describe, expect, it } from 'vitest';
import { decideBeforeIdentity, decideResume, type ResumeCandidate } from '../../src/sm/resumption.js';

const ALICE = 'alice@example.org';
const live = (over: Partial<Extract<ResumeCandidate, { kind: 'live' }>> = {}): ResumeCandidate => ({
  kind: 'live',
  bareJid: ALICE,
  resumable: true,
  h: 7,
  ack: { kind: 'in-range' },
  ...over,
});
const ended: ResumeCandidate = { kind: 'ended', reason: 'expired', bareJid: ALICE, h: 12 };

/** key and h of a refusal, or 'resumed'. */
function outcome(decision: ReturnType<typeof decideResume> | undefined): string {
  if (decision === undefined) return 'check identity';
  return decision.ok ? 'resumed' : `${decision.failure.key}${decision.failure.h === undefined ? '' : ` h=${decision.failure.h}`}`;
}

describe('decideBeforeIdentity: what may be said before the account is known', () => {
  it.each([
    ['an unknown id', { kind: 'unknown' } as ResumeCandidate, 'resume-unknown-id'],
    ['an expired session, with its remembered h', ended, 'resume-ended h=12'],
    ['a live session: the identity decides', live(), 'check identity'],
  ])('%s → %s', (_label, candidate, expected) => {
    expect(outcome(decideBeforeIdentity(candidate))).toBe(expected);
  });
});

describe('decideResume (XEP-0198 §5, §6)', () => {
  it.each([
    ['the same account, h in range (hibernated or still attached: a takeover)', live(), ALICE, 'resumed'],
    ['the legacy server refused the identity check', live(), undefined, 'resume-identity-refused'],
    ['another account', live(), 'mallory@example.org', 'resume-other-account'],
    [
      'another account, the session not resumable: still another account',
      live({ resumable: false }),
      'mallory@example.org',
      'resume-other-account',
    ],
    ['the same account, not resumable any more (queue overflow)', live({ resumable: false }), ALICE, 'resume-not-resumable'],
    ['a session not bound (ending)', live({ bareJid: undefined, resumable: false }), ALICE, 'resume-not-resumable'],
    ['h above what was sent', live({ ack: { kind: 'too-high', h: 9, sendCount: 4 } }), ALICE, 'resume-h-too-high h=7'],
    ['h below the last acknowledged count', live({ ack: { kind: 'backwards', h: 1, previous: 3 } }), ALICE, 'resume-h-below-ack h=7'],
    ['expired during the identity check: the same account learns h', ended, ALICE, 'resume-ended h=12'],
    ['expired during the identity check: another account does not', ended, 'mallory@example.org', 'resume-ended'],
    ['gone without a trace during the identity check', { kind: 'unknown' } as ResumeCandidate, ALICE, 'resume-not-resumable'],
  ])('%s → %s', (_label, candidate, account, expected) => {
    expect(outcome(decideResume(candidate, account))).toBe(expected);
  });

  it('carries <handled-count-too-high/> with the client h and the send count', () => {
    const decision = decideResume(live({ ack: { kind: 'too-high', h: 9, sendCount: 4 } }), ALICE);
    expect(decision.ok ? undefined : decision.failure.appCondition).toMatchObject({
      name: 'handled-count-too-high',
      attrs: { h: '9', 'send-count': '4' },
    });
  });
});
