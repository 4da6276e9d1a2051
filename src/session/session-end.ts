import { ErrorCode, StreamError, type StreamErrorCondition, type UpstreamError } from '../errors.js';
import type { EndedReason } from '../sm/failures.js';
import type { StreamManagement } from '../sm/stream-management.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { ClientLink } from '../transport/client-link.js';
import { toRfc6120StreamError } from '../xml/legacy-stream-error.js';
import type { HibernationEnd } from './events.js';
import type { LateStanzas } from './lingering-upstream.js';
import type { SessionCore } from './session-core.js';
import { isBound, linkOf, smOf, upstreamOf, type State } from './session-state.js';
import { NOTHING_UNACKED, disposeUnacked, type UnackedOutcome } from './unacked-disposal.js';

/** Why a session ends ({@link endSession}). */
export type EndCause =
  /** The client closed, or the link ended without hibernation, or the legacy server answered our close. */
  | { readonly kind: 'closed' }
  /** A hibernation ran out (XEP-0198 §5). */
  | { readonly kind: 'expired' }
  /** The proxy stops while the session hibernates. */
  | { readonly kind: 'shutdown' }
  /** The proxy ends the stream with a stream error (bad input, limits, timeouts, shutdown of an attached session). */
  | { readonly kind: 'stream-error'; readonly error: StreamError }
  /** The unacked queue of a hibernating session overflowed (or the memory budget of all queues ran out). */
  | { readonly kind: 'queue-overflow'; readonly error: StreamError; readonly overflowing: readonly Buffer[] }
  /** The legacy server ended the user's stream with a stream error: relayed (RFC 6120 names). */
  | { readonly kind: 'upstream-error'; readonly element: ScannedElement }
  /** The legacy server's connection failed or closed. */
  | { readonly kind: 'upstream-lost'; readonly error: UpstreamError }
  /** An operator drains the proxy (admin listener): an attached client's connection is dropped without a stream close, so that it reconnects elsewhere. */
  | { readonly kind: 'drained' }
  /**
   * The session a connection resumes is in the other process of an upgrade (resumption.ts
   * `elsewhere`): its connection is dropped without a stream close, so that it reconnects there.
   */
  | { readonly kind: 'moved' }
  /** An operator ended the session (admin listener): `error` goes to an attached client. */
  | { readonly kind: 'kicked'; readonly error: StreamError }
  /** A stranded session's queue went to the stream its client came back on (resumption.ts `takeQueue`). */
  | { readonly kind: 'queue-handed-over'; readonly handedOver: number }
  /**
   * A new login of its client bound the session's full JID instead of resuming: its queue went to
   * that login; `error` (`conflict`) goes to an attached client.
   */
  | { readonly kind: 'replaced'; readonly error: StreamError; readonly handedOver: number };

/**
 * What each ending does (the client side is {@link tellClient}): the reason remembered for a late
 * `<resume/>` and logged, whether the unacked stanzas can still be answered through the user's
 * upstream stream (README, What it does), and whether that stream is closed or dropped.
 */
const HOW_TO_END: Readonly<
  Record<EndCause['kind'], { readonly reason: EndedReason; readonly unacked: 'answer' | 'lost'; readonly upstream: 'close' | 'destroy' }>
> = {
  closed: { reason: 'closed', unacked: 'answer', upstream: 'close' },
  expired: { reason: 'expired', unacked: 'answer', upstream: 'close' },
  shutdown: { reason: 'shutdown', unacked: 'answer', upstream: 'close' },
  'stream-error': { reason: 'error', unacked: 'answer', upstream: 'close' },
  'queue-overflow': { reason: 'queue-overflow', unacked: 'answer', upstream: 'close' },
  'upstream-error': { reason: 'upstream-lost', unacked: 'lost', upstream: 'close' },
  'upstream-lost': { reason: 'upstream-lost', unacked: 'lost', upstream: 'destroy' },
  kicked: { reason: 'kicked', unacked: 'answer', upstream: 'close' },
  drained: { reason: 'drained', unacked: 'answer', upstream: 'close' },
  moved: { reason: 'moved', unacked: 'answer', upstream: 'close' },
  'queue-handed-over': { reason: 'upstream-lost', unacked: 'answer', upstream: 'close' },
  replaced: { reason: 'replaced', unacked: 'answer', upstream: 'close' },
};

/** What the client of a session that ends is told, per cause (README, Errors): the other half of HOW_TO_END. */
function tellClient(link: ClientLink, cause: EndCause): void {
  switch (cause.kind) {
    case 'stream-error':
    case 'upstream-lost':
    case 'queue-overflow':
    case 'kicked':
    case 'replaced':
      link.fail(cause.error);
      return;
    case 'upstream-error':
      link.send(toRfc6120StreamError(cause.element.bytes));
      link.close();
      return;
    case 'closed':
      link.close();
      return;
    case 'drained':
      // Like a network cut: the client reconnects at once, through the load balancer, to another node.
      link.destroy('drained');
      return;
    case 'moved':
      link.destroy('the session is in the other process of an upgrade');
      return;
    case 'expired':
    case 'shutdown':
    case 'queue-handed-over':
      // Hibernating or stranded: no client link.
      return;
  }
}

/** The one place `hibernationEnded` is emitted: on resumption, or when the session ends. */
export function hibernationEnded(core: SessionCore, s: Extract<State, { name: 'hibernating' | 'stranded' }>, reason: HibernationEnd): void {
  const hibernatedMs = core.deps.now() - s.sinceMs;
  core.deps.events.notify(core.log, 'hibernationEnded', { sid: core.sid, jid: s.jid, smId: s.sm.id, reason, hibernatedMs });
}

function rememberEnded(core: SessionCore, sm: StreamManagement | undefined, reason: EndedReason): void {
  if (sm === undefined || !sm.resumable) return;
  const ended = { h: sm.inbound.h, bareJid: core.bareJid ?? '', domain: core.domainName ?? '', reason, endedAtMs: core.deps.now() };
  core.deps.registry.endResumable(sm.id, ended);
}

/** Ends the session with a stream error to the client (the session, not only the socket). */
export function failSession(core: SessionCore, error: StreamError): void {
  const s = core.state;
  if (s.name === 'closed') return;
  // Which config key set the limit, for the operator: it is raised at SASL success.
  const limitKey =
    error.code !== ErrorCode.STANZA_TOO_BIG
      ? undefined
      : s.name === 'opening' || s.name === 'connecting' || (s.name === 'negotiating' && s.setup.phaseName === 'authenticating')
        ? 'limits.maxStanzaBytesPreAuth'
        : 'limits.maxStanzaBytes';
  core.log.info({ code: error.code, condition: error.condition, err: error.message, limitKey }, 'stream error sent to client');
  endSession(core, { kind: 'stream-error', error });
}

/**
 * An operator ends the session (the admin listener, README, Metrics and health): an attached
 * client gets the stream error `condition`; the unacked stanzas are answered as at expiry, and a
 * late `<resume/>` learns that the administrator ended it.
 */
export function kickSession(core: SessionCore, condition: StreamErrorCondition): void {
  if (core.state.name === 'closed') return;
  const error = new StreamError(ErrorCode.KICKED, condition, 'the session was ended by the server administrator');
  core.log.info({ code: error.code, condition }, 'session ended by an administrator');
  endSession(core, { kind: 'kicked', error });
}

/**
 * The proxy is drained (README, Metrics and health): the session ends as at expiry (unacked
 * stanzas answered, the upstream stream closed after the user's unavailable presence), and an
 * attached client loses its connection without a stream close, as in a network cut.
 */
export function drainSession(core: SessionCore): void {
  if (core.state.name === 'closed') return;
  core.log.info('session ended: the proxy is drained');
  endSession(core, { kind: 'drained' });
}

/** Proxy shutdown (RFC 6120 §4.9.3.20 `system-shutdown`). */
export function shutdownSession(core: SessionCore): void {
  const s = core.state;
  if (s.name === 'hibernating' || s.name === 'stranded') {
    core.log.info({ queued: s.sm.queue.length }, 'hibernating session ends at shutdown');
    endSession(core, { kind: 'shutdown' });
    return;
  }
  core.fail(new StreamError(ErrorCode.SHUTDOWN, 'system-shutdown', 'the proxy is shutting down'));
}

export function closeSession(core: SessionCore, reason: string): void {
  if (core.state.name === 'closed') return;
  core.log.debug({ reason }, 'closing session');
  endSession(core, { kind: 'closed' });
}

/**
 * The one way a session ends. HOW_TO_END says, per cause, what becomes of the client link, the
 * upstream stream and the unacked stanzas; this function does it in one order: the hibernation
 * ends (its event is emitted here and on resumption only), the unacked stanzas are answered or
 * lost, the SM-ID is remembered with its h, the client is told, the upstream stream lingers for
 * late stanzas (lingering-upstream.ts) or is closed, and the summary line is logged once the
 * upstream connection is gone.
 */
export function endSession(core: SessionCore, cause: EndCause): void {
  const s = core.state;
  if (s.name === 'closed') return;
  const how = HOW_TO_END[cause.kind];
  const upstream = upstreamOf(s);
  const sm = smOf(s);
  const jid = isBound(s) ? s.jid : undefined;
  if (s.name === 'hibernating' || s.name === 'stranded') hibernationEnded(core, s, how.reason);
  if (s.name === 'negotiating') core.inheritedLost(s.setup.unclaimed);
  let unacked = NOTHING_UNACKED;
  /** The stanzas answered through the upstream stream: if the server never reads the answers, the client's next session gets them. */
  let answered: readonly Buffer[] = [];
  // Stanzas handed to this login that still wait for its <enable/>: with the user's stream gone,
  // nothing can answer them, so the next session of the full JID gets them (kept-stanzas.ts).
  const keepUnsent = core.delivery.waitingForEnable && how.unacked === 'lost' && isBound(s);
  // What was never sent: what waited for room, what hooks held back (a client without stream management may be held back too).
  let unsent = core.delivery.takeUnsent();
  if (keepUnsent) {
    core.deps.lingering.kept.keep(s.jid, unsent, core.deps.settings.strandedMs, core.log);
    unsent = [];
  }
  if ((sm !== undefined || unsent.length > 0) && isBound(s)) {
    // The unacked queue, then what was never sent, then the stanzas that overflowed, in that order.
    // RFC 6120 §4.9.1.1: a stream error is followed by the closing of the stream; bounces
    // written behind it would never be processed, so with the upstream failed they are lost.
    const entries = [...(sm?.queue.drain().map((entry) => entry.bytes) ?? []), ...unsent];
    if (cause.kind === 'queue-overflow') entries.push(...cause.overflowing);
    const via = how.unacked === 'answer' && s.name !== 'stranded' ? { upstream: s.upstream, jid: s.jid } : undefined;
    ({ outcome: unacked, answered } = disposeUnacked(entries, core.deps.settings.expiryPolicy, via, core.log));
  }
  if ('handedOver' in cause) unacked = { ...unacked, handedOver: cause.handedOver };
  rememberEnded(core, sm, how.reason);
  const link = linkOf(s);
  // Closed before the link and the upstream are told: whatever they report from here on is not the session's any more.
  core.transition({ name: 'closed' });
  core.deps.registry.delete(core.session);
  if (link !== undefined) tellClient(link, cause);
  if (how.upstream === 'destroy') upstream?.destroy();
  else if (upstream !== undefined && jid !== undefined && how.unacked === 'answer' && !upstream.ended) {
    const options = {
      jid,
      expiryPolicy: core.deps.settings.expiryPolicy,
      wasAvailable: core.presence.shown,
      answered,
      // At shutdown the proxy drops what is kept once every stream is gone (KeptStanzas.dropAll).
      keepMs: core.deps.settings.strandedMs,
      log: core.log,
    };
    core.deps.lingering.linger(upstream, options, (late) => logEnded(core, how.reason, jid, cause, unacked, late));
    return;
  } else upstream?.close();
  logEnded(core, how.reason, jid, cause, unacked, undefined);
}

/**
 * The session's last log line and its `sessionEnded` event; `late` counts what reached it while
 * its upstream stream lingered. At debug for a connection that never named a domain the proxy
 * serves: a load balancer's TCP probe, or a client refused before that (its refusal has a line of
 * its own).
 */
function logEnded(
  core: SessionCore,
  reason: EndedReason,
  jid: string | undefined,
  cause: EndCause,
  unacked: UnackedOutcome,
  late: LateStanzas | undefined,
): void {
  const code = 'error' in cause ? cause.error.code : cause.kind === 'upstream-error' ? ErrorCode.UPSTREAM_STREAM_ERROR : undefined;
  core.deps.events.notify(core.log, 'sessionEnded', { sid: core.sid, jid, reason, code, unacked, late });
  const level = core.domainName === undefined ? 'debug' : 'info';
  core.log[level](
    {
      reason,
      stanzasFromClient: core.stats.fromClient,
      stanzasToClient: core.stats.toClient,
      resumes: core.stats.resumes,
      peakQueue: core.stats.peakQueue,
      durationMs: core.deps.now() - core.startedMs,
      ...(late !== undefined ? { late } : {}),
    },
    'session ended',
  );
}
