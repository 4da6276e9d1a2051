import { ErrorCode, InvariantError } from '../errors.js';
import type { ClientLink } from '../transport/client-link.js';
import type { ReleasedUpstream } from '../upstream/upstream-link.js';
import { parseElement } from '../xml/element.js';
import { armExpiry, hibernate } from './hibernation.js';
import type { HibernatedSession } from './hibernated-snapshot.js';
import type { SessionCore } from './session-core.js';
import type { AdoptedSession } from './session-deps.js';
import type { State } from './session-state.js';

/*
 * A hibernating session leaves this process for the next one of an upgrade (README, Upgrading):
 * written out as plain data with its upstream stream released (`handOff`), and read back there
 * (`adopted`), still hibernating.
 */

/** A hibernating session as plain data (hibernated-snapshot.ts writes it out); undefined in any other state. */
export function snapshot(core: SessionCore): HibernatedSession | undefined {
  const s = core.state;
  if (s.name !== 'hibernating' || core.domainName === undefined) return undefined;
  return {
    sid: core.sid,
    addressKey: core.addressKey,
    domain: core.domainName,
    jid: s.jid,
    sinceMs: s.sinceMs,
    expiresAtMs: s.expiresAtMs,
    presenceShown: core.presence.shown,
    serverFeatures: core.serverFeatures?.toString(),
    features: core.deps.hooks.handedOff(core.session),
    sm: s.sm.snapshot(),
  };
}

/**
 * Takes this session out of the proxy for another process (an upgrade, README "Upgrading"): its
 * state as plain data and its upstream stream, released without a byte to the legacy server. The
 * session is gone from here without an ending: nothing is answered, no event but the hibernation's
 * is emitted. An attached, resumable session hibernates first; its client link comes back with it,
 * still open but no longer the session's (what the client sends from now on is not counted, so it
 * sends it again after its resume): the caller drops it once the next process holds the session,
 * so that the client's `<resume/>` finds it there. Undefined, and nothing changed, when it cannot
 * go now: not resumable, a hop over TLS, or an element half read or bytes not yet written (a
 * moment later it can).
 */
export function handOff(
  core: SessionCore,
): { session: HibernatedSession; upstream: ReleasedUpstream; link: ClientLink | undefined } | undefined {
  const before = core.state;
  const attached = before.name === 'active' && before.sm?.resumable === true;
  if ((before.name !== 'hibernating' && !attached) || core.domainName === undefined) return undefined;
  // Stanzas that wait for room in the memory budget are in no snapshot: such a session cannot move.
  if (core.delivery.waitingForRoom) return undefined;
  // The release scans what the socket had buffered (it is delivered or queued): the snapshot comes after it.
  const upstream = before.upstream.release();
  if (upstream === undefined) return undefined;
  if (core.state !== before) {
    upstream.socket.destroy();
    throw new InvariantError(`upstream released while the session went to ${core.state.name}`);
  }
  let link: ClientLink | undefined;
  if (before.name === 'active') {
    link = before.link;
    core.flow.clientGone();
    hibernate(core, before, 'the proxy is upgrading', true);
  }
  // Held stanzas that found no room on the way to the queue: the session cannot move after all.
  if (core.state.name === 'hibernating' && core.delivery.waitingForRoom) {
    core.queueOverflow(core.state.sm, core.delivery.takeUnsent(), 'global limit: stanzas wait for room during the upgrade');
  }
  const s = core.state;
  const session = snapshot(core);
  if (s.name !== 'hibernating' || session === undefined) {
    // Hibernation ended it (its queue overflowed): what it held was answered on a stream that had left.
    upstream.socket.destroy();
    link?.destroy('the proxy is upgrading');
    core.log.error({ code: ErrorCode.UPGRADE, state: s.name }, 'session ended while it was handed over');
    return undefined;
  }
  // The stanzas go on in the snapshot; their bytes leave this process's budget.
  s.sm.queue.drain();
  core.transition({ name: 'closed' });
  core.deps.registry.delete(core.session);
  core.deps.registry.handedOff(s.sm.id);
  core.log.info({ queued: session.sm.queue.entries.length, attached }, 'session handed over to the new process');
  return { session, upstream, link };
}

/** The state of a session another process handed over: hibernating, its expiry counted on from the snapshot. */
export function adopted(core: SessionCore, { session, upstream, sm }: AdoptedSession): State {
  core.domainName = session.domain;
  core.serverFeatures = session.serverFeatures === undefined ? undefined : parseElement(session.serverFeatures);
  core.deps.registry.bound(core.session);
  core.deps.registry.registerResumable(sm.id, core.session, session.jid);
  const timeoutMs = Math.max(0, session.expiresAtMs - core.deps.now());
  const expiryTimer = armExpiry(core, timeoutMs);
  upstream.setHandler(core.wiring.upstreamHandler(upstream));
  upstream.startKeepalive(core.deps.settings.upstreamKeepaliveMs);
  core.log.info({ queued: sm.queue.length, timeoutMs }, 'hibernating session taken over from the previous process');
  const { jid, sinceMs } = session;
  return { name: 'hibernating', upstream, jid, sm, sinceMs, expiresAtMs: core.deps.now() + timeoutMs, expiryTimer };
}
