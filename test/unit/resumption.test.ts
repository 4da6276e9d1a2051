import { describe, expect, it } from 'vitest';
import { decideBeforeIdentity, decideResume, type ResumeCandidate, type ResumingAccount } from '../../src/sm/resumption.js';

const ALICE: ResumingAccount = { bareJid: 'alice@example.org', domain: 'example.org' };
const MALLORY: ResumingAccount = { bareJid: 'mallory@example.org', domain: 'example.org' };
/** Alice's account as a legacy server serving two of the proxy's domains binds it, reached through the other domain. */
const ALICE_VIA_OTHER_DOMAIN: ResumingAccount = { bareJid: 'alice@example.org', domain: 'other.example' };
const live = (over: Partial<Extract<ResumeCandidate, { kind: 'live' }>> = {}): ResumeCandidate => ({
  kind: 'live',
  bareJid: ALICE.bareJid,
  jid: `${ALICE.bareJid}/phone`,
  domain: ALICE.domain,
  resumable: true,
  upstreamGone: false,
  renewable: false,
  h: 7,
  ack: { kind: 'in-range' },
  ...over,
});
const ended: ResumeCandidate = { kind: 'ended', reason: 'expired', bareJid: ALICE.bareJid, domain: ALICE.domain, h: 12 };

/** key and h of a refusal, or 'resumed'. */
function outcome(decision: ReturnType<typeof decideResume> | undefined): string {
  if (decision === undefined) return 'check identity';
  if (decision.ok) return decision.renewUpstream === true ? 'resumed on the new stream' : 'resumed';
  if ('reconnect' in decision) return 'reconnect';
  return `${decision.failure.key}${decision.failure.h === undefined ? '' : ` h=${decision.failure.h}`}${decision.takeQueue === true ? ' +queue' : ''}`;
}

describe('decideBeforeIdentity: what may be said before the account is known', () => {
  it.each([
    ['an unknown id', { kind: 'unknown' } as ResumeCandidate, 'resume-unknown-id'],
    ['a session in the other process of an upgrade: the client connects again', { kind: 'elsewhere' } as ResumeCandidate, 'reconnect'],
    ['an ended session: what it remembers waits for the identity', ended, 'check identity'],
    ['a live session: the identity decides', live(), 'check identity'],
  ])('%s → %s', (_label, candidate, expected) => {
    expect(outcome(decideBeforeIdentity(candidate))).toBe(expected);
  });
});

describe('decideResume (XEP-0198 §5, §6)', () => {
  it.each([
    ['the same account, h in range (hibernated or still attached: a takeover)', live(), ALICE, 'resumed'],
    ['moved to the other process of an upgrade during the identity check', { kind: 'elsewhere' } as ResumeCandidate, ALICE, 'reconnect'],
    ['the legacy server refused the identity check', live(), undefined, 'resume-identity-refused'],
    ['another account', live(), MALLORY, 'resume-other-account'],
    ['the same bare JID through another domain of the proxy', live(), ALICE_VIA_OTHER_DOMAIN, 'resume-other-account'],
    ['the same account as ejabberd binds it when typed in capitals', live(), { ...ALICE, bareJid: 'ALICE@example.org' }, 'resumed'],
    [
      'a name equal only after folding beyond ASCII (Kelvin sign K)',
      live({ bareJid: 'kelvin@example.org' }),
      { ...ALICE, bareJid: '\u212Aelvin@example.org' },
      'resume-other-account',
    ],
    [
      'a name equal only under Unicode case folding (straße, STRASSE)',
      live({ bareJid: 'straße@example.org' }),
      { ...ALICE, bareJid: 'STRASSE@example.org' },
      'resume-other-account',
    ],
    ['another account, the session not resumable: still another account', live({ resumable: false }), MALLORY, 'resume-other-account'],
    ['the same account, not resumable any more (queue overflow)', live({ resumable: false }), ALICE, 'resume-not-resumable'],
    ['a session not bound (ending)', live({ bareJid: undefined, resumable: false }), ALICE, 'resume-not-resumable'],
    ['h above what was sent', live({ ack: { kind: 'too-high', h: 9, sendCount: 4 } }), ALICE, 'resume-h-too-high h=7'],
    ['h below the last acknowledged count', live({ ack: { kind: 'backwards', h: 1, previous: 3 } }), ALICE, 'resume-h-below-ack h=7'],
    [
      'stranded (the legacy server ended its stream): the queue goes to the next bind',
      live({ upstreamGone: true }),
      ALICE,
      'resume-upstream-restarted h=7 +queue',
    ],
    [
      'stranded by a restart, and the resuming stream bound the same full JID: that stream becomes the session’s',
      live({ upstreamGone: true, renewable: true }),
      { ...ALICE, boundJid: `${ALICE.bareJid}/phone` },
      'resumed on the new stream',
    ],
    [
      'stranded by a restart, and the resuming stream got another resource: the queue goes to the next bind',
      live({ upstreamGone: true, renewable: true }),
      { ...ALICE, boundJid: `${ALICE.bareJid}/1234-other` },
      'resume-upstream-restarted h=7 +queue',
    ],
    [
      'stranded by a restart, another spelling of the same full JID (ALICE): the client binds afresh',
      live({ upstreamGone: true, renewable: true }),
      { ...ALICE, boundJid: `ALICE@example.org/phone` },
      'resume-upstream-restarted h=7 +queue',
    ],
    [
      'stranded by a resource conflict (another session holds the JID): never taken back',
      live({ upstreamGone: true, renewable: false }),
      { ...ALICE, boundJid: `${ALICE.bareJid}/phone` },
      'resume-upstream-restarted h=7 +queue',
    ],
    ['a session that has its stream: the bound JID changes nothing', live(), { ...ALICE, boundJid: `${ALICE.bareJid}/phone` }, 'resumed'],
    ['stranded, another account: nothing', live({ upstreamGone: true }), MALLORY, 'resume-other-account'],
    [
      'stranded, another account bound the same resource name: nothing',
      live({ upstreamGone: true, renewable: true }),
      { ...MALLORY, boundJid: `${ALICE.bareJid}/phone` },
      'resume-other-account',
    ],
    [
      'stranded, h above what was sent',
      live({ upstreamGone: true, ack: { kind: 'too-high', h: 9, sendCount: 4 } }),
      ALICE,
      'resume-h-too-high h=7',
    ],
    ['ended: its own account learns how, and h', ended, ALICE, 'resume-ended h=12'],
    ['ended: another account gets the answer of an unknown id', ended, MALLORY, 'resume-unknown-id'],
    ['ended: the same bare JID through another domain, too', ended, ALICE_VIA_OTHER_DOMAIN, 'resume-unknown-id'],
    ['gone without a trace during the identity check', { kind: 'unknown' } as ResumeCandidate, ALICE, 'resume-not-resumable'],
  ])('%s → %s', (_label, candidate, account, expected) => {
    expect(outcome(decideResume(candidate, account))).toBe(expected);
  });

  it('carries <handled-count-too-high/> with the client h and the send count', () => {
    const decision = decideResume(live({ ack: { kind: 'too-high', h: 9, sendCount: 4 } }), ALICE);
    expect(decision.ok || 'reconnect' in decision ? undefined : decision.failure.appCondition).toMatchObject({
      name: 'handled-count-too-high',
      attrs: { h: '9', 'send-count': '4' },
    });
  });
});
