import { bare } from '../xml/jid.js';
import { smFailure } from '../sm/failures.js';
import { StreamManagement } from '../sm/stream-management.js';
import { parseElement, type Element } from '../xml/element.js';
import type { SmNamespace } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { AckClock } from './ack-clock.js';
import { onResume } from './resume-request.js';
import { shortId } from '../sm/enable-decision.js';
import type { SessionCore } from './session-core.js';
import type { State } from './session-state.js';

/*
 * The client's stream-management requests on a bound stream (XEP-0198 §3, §4): enabling, acks and
 * requests for them, and the clock that asks the client for acks. The counting itself is
 * StreamManagement's (sm/stream-management.ts).
 */

/**
 * A stream-management nonza from the client (XEP-0198): an ack or a request for one, `<enable/>`,
 * `<resume/>` (resume-request.ts); anything else is refused with `<failed/>`.
 */
export function onSmNonza(core: SessionCore, element: ScannedElement, ns: SmNamespace): void {
  const s = core.state;
  const name = element.localName;
  if (name === 'r' || name === 'a') {
    if (s.name !== 'active' || s.sm === undefined) {
      // XEP-0198 §4: acks only exist once SM is enabled; a stray one is ignored.
      core.log.debug({ element: name }, 'SM ack element before enable ignored');
      return;
    }
    if (name === 'r') core.toClient(s.sm.ackElement());
    else onClientAck(core, s, s.sm, parseElement(element.bytes));
    return;
  }
  if (name === 'enable') {
    onEnable(core, parseElement(element.bytes), ns);
    return;
  }
  if (name === 'resume') {
    onResume(core, parseElement(element.bytes), ns);
    return;
  }
  core.refuse(ns, smFailure('unknown-request', name));
}

function onEnable(core: SessionCore, enable: Element, ns: SmNamespace): void {
  const s = core.state;
  if (s.name !== 'active') {
    // XEP-0198 §3: "the client MUST NOT attempt to enable stream management until after it
    // has completed resource binding"; the server "SHALL enforce this order".
    core.refuse(ns, smFailure('enable-before-bind'));
    return;
  }
  if (s.sm !== undefined) {
    // XEP-0198 §3: the client SHALL enable at most once; the stream stays usable (Prosody, ejabberd).
    core.refuse(ns, smFailure('enable-twice'));
    return;
  }
  const result = StreamManagement.enable({
    ns,
    resumeAttr: enable.attrs.resume as string | undefined,
    maxAttr: enable.attrs.max as string | undefined,
    settings: core.deps.settings,
    budget: core.deps.queueShares.forSession(bare(s.jid), core.addressKey),
  });
  if (!result.ok) {
    core.refuse(ns, smFailure('enable-invalid', result.text));
    return;
  }
  const sm = result.sm;
  const next = { ...s, sm, clock: ackClock(core, sm) };
  core.transition(next);
  if (sm.resumable) core.deps.registry.registerResumable(sm.id, core.session, s.jid);
  core.toClient(sm.enabledElement());
  core.log.info(
    { smId: sm.resumable ? shortId(sm.id) : undefined, resumable: sm.resumable, maxSeconds: sm.hibernationMs / 1000 },
    'stream management enabled',
  );
  // Stanzas handed to this login waited for this <enable/> (session-setup.ts waitForEnable): counted now.
  core.delivery.stopAwaitingEnable(next);
}

function onClientAck(core: SessionCore, s: Extract<State, { name: 'active' }>, sm: StreamManagement, a: Element): void {
  const outcome = sm.onAck(a.attrs.h as string | undefined);
  if (outcome.kind === 'error') {
    core.fail(outcome.error);
    return;
  }
  if (outcome.kind === 'backwards') core.log.info({ h: outcome.h, previous: outcome.previous }, 'client acked less than before; ignored');
  if (outcome.requestedAtMs !== undefined) core.deps.meter.ackRoundTrip(core.deps.now() - outcome.requestedAtMs);
  core.delivery.sendBacklog(s, sm);
  s.clock?.check();
}

/** A clock for the attached client's acks; the link is dropped when one stays unanswered (ack-clock.ts). */
export function ackClock(core: SessionCore, sm: StreamManagement): AckClock {
  return new AckClock(sm, core.deps.settings, core.deps.now, {
    sendRequest: (request) => core.toClient(request),
    guard: (action) => core.guard(action),
    overdue: (waitedMs) => {
      const s = core.state;
      if (s.name !== 'active') return;
      const unacked = sm.queue.length;
      core.deps.events.notify(core.log, 'ackDelayed', { sid: core.sid, jid: s.jid, unacked, waitedMs });
      core.log.info({ unacked, waitedMs }, 'ack delayed; treating the client connection as dead');
      // Like mod_smacks's "smacks-ack-delayed", then hibernation: the link is dropped as a dead connection.
      s.link.destroy('ack delayed');
    },
  });
}
