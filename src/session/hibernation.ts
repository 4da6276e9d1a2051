import { ErrorCode, InvariantError, type UpstreamError } from '../errors.js';
import { parseElement } from '../xml/element.js';
import { NS, isStanza } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { StanzaKind } from './hooks.js';
import type { SessionCore } from './session-core.js';
import type { State } from './session-state.js';

/*
 * Hibernation (XEP-0198 §5; README, Hibernation): the client is away, the upstream stream is kept
 * alive and what the legacy server sends is queued, until the client resumes, the hibernation
 * expires, or the server ends the stream (the session is stranded: its queue waits for the client).
 */

/**
 * The attached client's link is gone: the session hibernates for its negotiated time.
 * `handOff`: the session hibernates only to move to the next process of an upgrade, whose client
 * resumes at once: the hooks are not told (a push notification for it would wake the phone for nothing).
 */
export function hibernate(core: SessionCore, s: Extract<State, { name: 'active' }>, reason: string, handOff = false): void {
  const sm = s.sm;
  if (sm === undefined) throw new InvariantError('hibernate without stream management');
  const timeoutMs = sm.hibernationMs;
  const expiryTimer = armExpiry(core, timeoutMs);
  sm.linkChanged();
  sm.queue.compact();
  const sinceMs = core.deps.now();
  core.transition({ name: 'hibernating', upstream: s.upstream, jid: s.jid, sm, sinceMs, expiresAtMs: sinceMs + timeoutMs, expiryTimer });
  core.log.info({ reason, queued: sm.queue.length, timeoutMs }, 'hibernating');
  core.deps.events.notify(core.log, 'hibernationStarted', { sid: core.sid, jid: s.jid, smId: sm.id, queued: sm.queue.length, timeoutMs });
  // What waited for room, then what was held back, goes to the queue now; a hibernating session's queue that overflows ends it.
  if (core.delivery.clientLeft(sm) === 'ended') return;
  if (core.deps.hooks.wantHibernated && !handOff)
    core.deps.hooks.hibernated(
      core.session,
      [...sm.queue.entries()].map((entry) => entry.bytes),
    );
}

/** The hibernation's end, `timeoutMs` from now; the timer re-checks that it is still the state's own. */
export function armExpiry(core: SessionCore, timeoutMs: number): NodeJS.Timeout {
  const expiryTimer = setTimeout(() => core.guard(() => onExpiryTimer(core, expiryTimer)), timeoutMs);
  expiryTimer.unref();
  return expiryTimer;
}

function onExpiryTimer(core: SessionCore, timer: NodeJS.Timeout): void {
  const s = core.state;
  if ((s.name !== 'hibernating' && s.name !== 'stranded') || s.expiryTimer !== timer) return;
  core.log.info({ queued: s.sm.queue.length }, 'hibernation expired');
  core.end({ kind: 'expired' });
}

/** A hook keeps the session longer (push notifications): never shorter than the negotiated time. */
export function hibernateFor(core: SessionCore, ms: number): void {
  const s = core.state;
  if (s.name !== 'hibernating') return;
  const timeoutMs = Math.max(ms, s.sm.hibernationMs);
  const expiryTimer = armExpiry(core, timeoutMs);
  core.transition({ ...s, expiresAtMs: core.deps.now() + timeoutMs, expiryTimer });
  core.log.info({ timeoutMs }, 'hibernation time changed');
}

/**
 * What the legacy server sends while the client is away: the answer to a resume's probe, a stream
 * error that strands the session, or a stanza for the queue (through the hooks, as `queued`).
 */
export function onUpstreamWhileHibernating(core: SessionCore, s: Extract<State, { name: 'hibernating' }>, element: ScannedElement): void {
  if (core.probe?.answers(element) === true) {
    core.probe = undefined;
    return;
  }
  if (element.localName === 'error' && element.ns === NS.stream) {
    // RFC 6120 §4.9.3.3 conflict: another session took the resource (or, one resource per account, the account).
    const replaced = parseElement(element.bytes).getChild('conflict', NS.streams) !== undefined;
    strand(core, s, 'the legacy server ended the stream with a stream error', replaced);
    return;
  }
  if (!isStanza(element)) return;
  const bytes = core.deps.hooks.toClient(element.bytes, element.localName as StanzaKind, 'queued', core.session);
  if (bytes === undefined) return;
  if (core.delivery.queueWhileAway(s.sm, bytes) !== 'queued') return;
  core.log.debug({ queued: s.sm.queue.length, kind: element.localName }, 'stanza queued while hibernating');
  core.deps.events.notify(core.log, 'stanzaQueuedWhileHibernating', {
    sid: core.sid,
    jid: s.jid,
    smId: s.sm.id,
    queued: s.sm.queue.length,
    kind: element.localName,
  });
}

/**
 * The legacy server ended the user's stream while the client is away (a restart, a kick): the
 * session cannot go on, but what it queued is kept until the client comes back (a resume, or a
 * login of the same resource), or until `strandedMs` from now or the end of its hibernation,
 * whichever is later: then it is lost, since with no stream of the user's nothing can answer it
 * (README, What it does). Waiting longer than a hibernation costs only memory: no answer is
 * given meanwhile that a client coming back later would have missed.
 */
function strand(core: SessionCore, s: Extract<State, { name: 'hibernating' }>, why: string, replaced: boolean): void {
  const strandedMs = core.deps.settings.strandedMs;
  const expiryTimer = s.expiresAtMs - core.deps.now() < strandedMs ? armExpiry(core, strandedMs) : s.expiryTimer;
  core.transition({ name: 'stranded', jid: s.jid, sm: s.sm, sinceMs: s.sinceMs, expiryTimer, replaced });
  core.log.warn(
    { code: ErrorCode.UPSTREAM_CLOSED, why, queued: s.sm.queue.length },
    'legacy server ended the stream of a hibernating session; its queue waits for the client',
  );
  s.upstream.destroy();
}

/** The upstream is gone: the session ends (or, hibernating, is stranded); a later resume says why. */
export function upstreamLost(core: SessionCore, error: UpstreamError): void {
  const s = core.state;
  if (s.name === 'hibernating') {
    strand(core, s, error.message, false);
    return;
  }
  if (s.name === 'closed' || outliveUpstream(core, s, error.message)) return;
  core.log.info({ code: error.code, err: error.message }, 'upstream lost');
  core.end({ kind: 'upstream-lost', error });
}

/**
 * The legacy server ended the user's stream (a restart, a crash) while the client is attached
 * with a resumable session: nothing the client has not acknowledged can be answered through
 * that stream, so instead of ending, the session drops the client's connection without a stream
 * error (the client reconnects and resumes, as after a network cut) and waits stranded. The
 * resume then binds the same resource on its own stream and goes on over it (README, What it
 * promises). False, and nothing done, for any other session.
 */
export function outliveUpstream(core: SessionCore, s: State, why: string): boolean {
  if (s.name !== 'active' || s.sm?.resumable !== true) return false;
  core.log.info({ code: ErrorCode.UPSTREAM_CLOSED, why }, 'legacy server ended the stream; the client is cut off to resume');
  s.link.destroy('the legacy server ended the stream: resume');
  core.flow.clientGone();
  hibernate(core, s, `the legacy server ended the stream (${why})`);
  const next = core.state;
  if (next.name === 'hibernating') strand(core, next, why, false);
  return true;
}
