import { InvariantError } from '../errors.js';
import { smFailure } from '../sm/failures.js';
import { decideBeforeIdentity, decideResume } from '../sm/resumption.js';
import { parseH } from '../sm/sequence.js';
import type { Element } from '../xml/element.js';
import { resourceOf } from '../xml/jid.js';
import type { SmNamespace } from '../xml/namespaces.js';
import { shortId } from '../sm/enable-decision.js';
import type { SessionCore } from './session-core.js';
import type { ResumeRequest } from './stream-setup.js';
import { NOTHING_UNACKED } from './unacked-disposal.js';

/**
 * The client's `<resume/>` (XEP-0198 §5), on a new connection: looked up in the registry, decided
 * by `decideResume` (resumption.ts) once the account is known, and on success handed to the
 * resumed session through the registry. This connection's session never holds another one.
 */
export function onResume(core: SessionCore, resume: Element, ns: SmNamespace): void {
  const s = core.state;
  if (s.name !== 'negotiating' || s.setup.phaseName !== 'authenticated') {
    const early = s.name === 'negotiating' && s.setup.phaseName === 'authenticating';
    core.refuse(ns, smFailure(early ? 'resume-before-auth' : 'resume-after-bind'));
    return;
  }
  const previd = (resume.attrs.previd as string | undefined) ?? '';
  const h = parseH(resume.attrs.h as string | undefined);
  if (h === undefined) {
    core.refuse(ns, smFailure('resume-without-h'));
    return;
  }
  const candidate = core.deps.registry.lookup(previd, h, core.deps.now());
  const early = decideBeforeIdentity(candidate);
  if (early !== undefined) {
    if (early.ok) return;
    if ('reconnect' in early) reconnectElsewhere(core, previd);
    else core.refuse(ns, early.failure, previd);
    return;
  }
  // A session whose upstream stream is gone may go on over this one, bound to its own resource.
  const renewable = candidate.kind === 'live' && candidate.renewable && candidate.jid !== undefined ? candidate.jid : undefined;
  s.setup.resume(
    { ns, previd, h },
    candidate.kind === 'live' || candidate.kind === 'ended' ? candidate.bareJid : undefined,
    renewable === undefined ? undefined : resourceOf(renewable),
  );
}

/**
 * The session this connection resumes is in the other process of an upgrade (resumption.ts
 * `elsewhere`): the connection is dropped without an answer, as when the proxy is drained, and
 * the client's next connection reaches the session where it is.
 */
function reconnectElsewhere(core: SessionCore, previd: string): void {
  core.log.info({ previd: shortId(previd) }, 'resumed session is in the other process of an upgrade; the client connects again');
  core.end({ kind: 'moved' });
}

/**
 * The resuming client's account is known (stream-setup.ts): `bareJid`, or undefined when the
 * server refused the identity bind. When a bind told it, that bind may have made the legacy
 * server replace the very session being resumed (one resource per account): the resume is
 * decided only after a round trip on that session's stream has shown whether it is still there.
 */
export function onIdentityKnown(
  core: SessionCore,
  request: ResumeRequest,
  bareJid: string | undefined,
  byBind: boolean,
  boundJid: string | undefined,
): void {
  if (core.state.name !== 'negotiating') throw new InvariantError(`resume identity known in state ${core.state.name}`);
  const probed = byBind && bareJid !== undefined ? core.deps.registry.probe(request.previd) : undefined;
  if (probed === undefined) {
    decideResumeOf(core, request, bareJid, boundJid);
    return;
  }
  void probed.then(() =>
    core.guard(() => {
      // The client may have gone while the legacy server answered.
      if (core.state.name === 'negotiating') decideResumeOf(core, request, bareJid, boundJid);
    }),
  );
}

/**
 * The resume decided (resumption.ts `decideResume`) on what the registry finds now: refused with
 * `<failed/>` (a stranded session's queue then goes to this stream's bind), or accepted: the
 * registry hands this connection's link (and, renewed, its upstream stream) to the resumed session,
 * and this session ends without a trace of its own.
 */
function decideResumeOf(core: SessionCore, request: ResumeRequest, bareJid: string | undefined, boundJid: string | undefined): void {
  const s = core.state;
  if (s.name !== 'negotiating') throw new InvariantError(`resume decided in state ${s.name}`);
  const link = s.link;
  // Looked up again: the session may have ended, or its client acked, during the identity check.
  const account =
    bareJid === undefined ? undefined : { bareJid, domain: core.domainName ?? '', ...(boundJid === undefined ? {} : { boundJid }) };
  const candidate = core.deps.registry.lookup(request.previd, request.h, core.deps.now());
  const decision = decideResume(candidate, account);
  if (!decision.ok && 'reconnect' in decision) {
    reconnectElsewhere(core, request.previd);
    return;
  }
  if (!decision.ok) {
    const queued = decision.takeQueue === true ? core.deps.registry.takeQueue(request.previd, request.h) : [];
    if (queued.length > 0 && candidate.kind === 'live') core.inheritedFor = candidate.jid;
    core.refuse(request.ns, decision.failure, request.previd);
    s.setup.resumeRefused(queued);
    return;
  }
  const renewed = decision.renewUpstream === true ? s.upstream : undefined;
  // The client (and, renewed, the stream) now belong to the resumed session: this one lets go of
  // its holds on them first, and the resumed session sets its own.
  core.flow.clientHandedOver();
  if (renewed !== undefined) core.flow.upstreamHandedOver();
  const deliverHeld = core.deps.registry.resume(request.previd, { link, ns: request.ns, h: request.h, upstream: renewed });
  // The temporary stream closes cleanly (or, bound to the session's own JID, is the session's
  // now), and what the client pipelined after <resume/> goes to the resumed session, in order.
  core.inheritedLost(s.setup.unclaimed);
  if (renewed === undefined) {
    s.upstream.close();
    core.log.info({ previd: shortId(request.previd) }, 'client resumed another session; temporary stream closed');
  } else {
    core.log.info({ previd: shortId(request.previd) }, 'client resumed another session; this upstream stream is its stream now');
  }
  core.transition({ name: 'closed' });
  core.deps.registry.delete(core.session);
  core.deps.events.notify(core.log, 'sessionEnded', {
    sid: core.sid,
    jid: undefined,
    reason: 'resumed',
    code: undefined,
    unacked: NOTHING_UNACKED,
    late: undefined,
  });
  deliverHeld(s.setup.resumeAccepted());
}
