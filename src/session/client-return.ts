import { ErrorCode, InvariantError, StreamError } from '../errors.js';
import type { ResumeCandidate } from '../sm/resumption.js';
import type { StreamManagement } from '../sm/stream-management.js';
import { ackClock } from './sm-requests.js';
import type { SessionCore } from './session-core.js';
import { hibernationEnded } from './session-end.js';
import type { ResumeHandOver } from './session-registry.js';
import { isBound, resumeCandidateOf } from './session-state.js';
import { UpstreamProbe } from './upstream-probe.js';

/*
 * The client of a session comes back on another connection (XEP-0198 §5; README, What it does):
 * its `<resume/>` takes the session over (`takeOver`), or, the session stranded, its queue goes to
 * that stream's bind (`handOverQueue`), or a new login of its resource takes the queue instead of
 * resuming (`yieldToLogin`). The registry brokers each of them: the other connection's session
 * never calls this one.
 */

/** How long a resume waits for the legacy server's answer on the hibernated session's stream (upstream-probe.ts). */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * A round trip on this hibernating session's upstream stream (upstream-probe.ts), settled when
 * the session stops hibernating too; `undefined` in any other state.
 */
export function probeUpstream(core: SessionCore): Promise<void> | undefined {
  const s = core.state;
  if (s.name !== 'hibernating' || core.domainName === undefined) return undefined;
  if (core.probe?.isSettled === true) core.probe = undefined;
  core.probe ??= new UpstreamProbe((data) => core.toUpstream(s.upstream, data), core.domainName, PROBE_TIMEOUT_MS);
  return core.probe.done;
}

/** What a `<resume/>` of this session with `h` would find (the registry asks, for decideResume). */
export function resumeCandidate(core: SessionCore, h: number): ResumeCandidate {
  return resumeCandidateOf(core.state, core.domainName, h);
}

/**
 * The client of this stranded session came back on another stream (decideResume's `takeQueue`):
 * the stanzas it did not acknowledge (`h`) leave with it, in order, for its next bind there; the
 * session ends.
 */
export function handOverQueue(core: SessionCore, h: number): Buffer[] {
  const s = core.state;
  if (s.name !== 'stranded') throw new InvariantError(`queue handed over in state ${s.name}`);
  const trimmed = s.sm.queue.resume(h);
  if (trimmed.ack.kind !== 'acked') throw new InvariantError(`queue handed over with h=${h}, which it refuses (${trimmed.ack.kind})`);
  const queued = takeQueue(core, s.sm);
  core.log.info({ handedOver: queued.length, h }, 'client came back; the queue goes to its next bind');
  core.end({ kind: 'queue-handed-over', handedOver: queued.length });
  return queued;
}

/**
 * A new login of this session's client binds its full JID instead of resuming (the app was
 * restarted, or does not resume). The legacy server would end this session's stream for a
 * resource conflict (RFC 6120 §7.7.2.2), and what the client had not acknowledged would be lost:
 * instead, that queue, then what waited behind it, goes to the new login, in order; this session
 * ends (an attached client is told `conflict`, RFC 6120 §4.9.3.3), and its upstream stream
 * lingers until closed, so that what the server routed there follows too.
 */
export function yieldToLogin(core: SessionCore): Buffer[] {
  const s = core.state;
  if (!isBound(s)) return [];
  const queued = takeQueue(core, s.sm);
  core.log.info({ handedOver: queued.length }, 'a new login bound this resource; the queue goes to it');
  core.end({
    kind: 'replaced',
    error: new StreamError(ErrorCode.SM_REPLACED, 'conflict', 'Replaced by new connection'),
    handedOver: queued.length,
  });
  return queued;
}

/**
 * The unacknowledged stanzas, for another session of the client, then what waited behind them
 * (for room in the memory budget, or held back by a hook), in order. Sent before, they go out
 * again with their original time (XEP-0203), as in a replay.
 */
function takeQueue(core: SessionCore, sm: StreamManagement | undefined): Buffer[] {
  const replayed = sm?.queue.drain().map((entry) => core.deps.hooks.replay(entry.bytes, entry.sentAtMs, core.session)) ?? [];
  return [...replayed, ...core.delivery.takeUnsent()];
}

/**
 * Called by the registry once decideResume accepted a resume of this (hibernated or still
 * attached) session: takes the link, `<resumed/>`, replay of unacked stanzas, normal flow.
 */
export function takeOver(core: SessionCore, { link, ns, h, upstream: renewed }: ResumeHandOver): void {
  const s = core.state;
  if (!(s.name === 'active' || s.name === 'hibernating' || (s.name === 'stranded' && renewed !== undefined)) || s.sm === undefined)
    throw new InvariantError(`resume accepted for a session in state ${s.name}`);
  const sm = s.sm;
  const resumed = sm.queue.resume(h);
  if (resumed.ack.kind !== 'acked') throw new InvariantError(`resume accepted with h=${h}, which the queue refuses (${resumed.ack.kind})`);
  const hibernatedMs = s.name === 'hibernating' || s.name === 'stranded' ? core.deps.now() - s.sinceMs : 0;
  core.flow.clientGone();
  core.stats.resumes++;
  sm.linkChanged();
  const clock = ackClock(core, sm);
  core.delivery.linkChanged();
  const upstream = s.name === 'stranded' ? renewed! : s.upstream;
  // From here on the old link's events no longer reach this session (`Session.clientHandler`).
  const next = { name: 'active', link, upstream, jid: s.jid, sm, clock } as const;
  core.transition(next);
  link.setHandler(core.wiring.clientHandler(link));
  if (s.name === 'stranded') {
    // The legacy server restarted: its new session of this JID hears again what the old one heard.
    upstream.setHandler(core.wiring.upstreamHandler(upstream));
    core.flow.upstreamChanged();
    upstream.startKeepalive(core.deps.settings.upstreamKeepaliveMs);
    core.deps.hooks.upstreamRenewed(core.session);
    core.log.info({ jid: s.jid }, 'session goes on over a new upstream stream');
  }
  if (s.name === 'active') {
    // XEP-0198 §5: "the server SHOULD send a <conflict/> stream error on the old stream".
    s.link.fail(new StreamError(ErrorCode.SM_TAKEOVER, 'conflict', 'the session was resumed from another connection'));
    core.log.info('session taken over by a newer connection');
  }
  // XEP-0198 §5: <resumed/> first, then every unacked stanza in its original order.
  core.toClient(sm.resumedElement(ns));
  for (const entry of resumed.replay) core.toClient(core.deps.hooks.replay(entry.bytes, entry.sentAtMs, core.session));
  // Then what waited for room in the queue of a taken-over link, as far as the resume's h made room.
  core.delivery.sendBacklog(next, sm);
  core.log.info({ replayed: resumed.replay.length, hibernatedMs, h }, 'session resumed');
  // A takeover of a still-attached session ends no hibernation: events stay paired for metrics.
  if (s.name === 'hibernating' || s.name === 'stranded') hibernationEnded(core, s, 'resumed');
  const tookOver = s.name === 'active';
  core.deps.events.notify(core.log, 'resumed', {
    sid: core.sid,
    jid: s.jid,
    smId: sm.id,
    replayed: resumed.replay.length,
    hibernatedMs,
    tookOver,
  });
  // Ask at once whether the replay arrived, so the queue trims without waiting for the interval.
  if (resumed.replay.length > 0) clock.request('replayed');
}
