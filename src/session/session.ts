import type { Logger } from 'pino';
import { ErrorCode, InvariantError, StreamError, UpstreamError, asProxyError, hostUnknown, type StreamErrorCondition } from '../errors.js';
import { renderFailed, smFailure, type EndedReason, type SmFailure } from '../sm/failures.js';
import { decideBeforeIdentity, decideResume, sameBareJid, sameFullJid, type ResumeCandidate } from '../sm/resumption.js';
import { parseH } from '../sm/sequence.js';
import type { ClientLink, ClientLinkHandler, LinkEnd } from '../transport/client-link.js';
import type { ReleasedUpstream, UpstreamHandler, UpstreamStream } from '../upstream/upstream-link.js';
import { parseElement, type Element } from '../xml/element.js';
import { NS, isSmNamespace, isStanza, type SmNamespace } from '../xml/namespaces.js';
import { clipped, sanitizeForLog } from '../xml/sanitize.js';
import { stanzaKindOf } from '../xml/stanza-bytes.js';
import type { ScannedElement, StreamHeader } from '../xml/stream-scanner.js';
import { FlowControl } from './flow-control.js';
import { ClientPresence } from './client-presence.js';
import type { LateStanzas } from './lingering-upstream.js';
import { NOTHING_UNACKED, disposeUnacked, type UnackedOutcome } from './unacked-disposal.js';
import { HOW_TO_END, tellClient, type EndCause } from './session-end.js';
import type { HibernatedSession } from './hibernated-snapshot.js';
import type { SessionSummary } from './session-summary.js';
import { rewriteFeatures } from './features.js';
import { ClientDelivery } from './client-delivery.js';
import type { ClientPhase, SessionHandle, StanzaKind } from './hooks.js';
import { AckClock } from './ack-clock.js';
import { UpstreamProbe } from './upstream-probe.js';
import { StreamSetup, type ResumeRequest, type SetupPhaseName, type SetupPort } from './stream-setup.js';
import { bare, resourceOf } from '../xml/jid.js';
import type { ResumeHandOver } from './session-registry.js';
import type { AdoptedSession, SessionDeps, SessionStart } from './session-deps.js';
import type { HibernationEnd } from './events.js';
import { checkedTransition, isBound, linkOf, resumeCandidateOf, smOf, upstreamOf, type State, type StateName } from './session-state.js';
import { StreamManagement } from '../sm/stream-management.js';

/** Counters for the summary line logged when the session ends. */
interface SessionStats {
  fromClient: number;
  toClient: number;
  resumes: number;
  peakQueue: number;
}

const BIND_ID_PREFIX = 'smacks-proxy-bind-';
/** RFC 6120 §4.9.3 stream errors that say the legacy server goes away, not that it refuses this session. */
const SERVER_GOING_AWAY: ReadonlySet<string> = new Set(['system-shutdown', 'reset', 'internal-server-error', 'connection-timeout']);
/** How long a resume waits for the legacy server's answer on the hibernated session's stream (upstream-probe.ts). */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * One client stream and its upstream stream to the legacy server. Relays SASL and
 * binding unchanged, forwards every other element as its original bytes, and does XEP-0198 itself.
 */
export class Session implements SessionHandle {
  readonly sid: string;
  readonly addressKey: string;
  private state: State;
  private logger: Logger;
  private domainName: string | undefined;
  private readonly startedMs: number;
  private readonly stats: SessionStats = { fromClient: 0, toClient: 0, resumes: 0, peakQueue: 0 };
  private readonly deps: SessionDeps;
  /** Backpressure and protocol waits: when reading from the client or the legacy server pauses. */
  private readonly flow = new FlowControl(
    () => linkOf(this.state),
    () => upstreamOf(this.state),
  );
  /** Whether the client showed its presence, for the unavailable presence sent when the session ends. */
  private readonly presence: ClientPresence;
  /** The way to the attached client: hooks, what they hold back, the unacked queue and its backlog (client-delivery.ts). */
  private readonly delivery: ClientDelivery;
  /** The legacy server's features after authentication, as it sent them (`serverOffers`). */
  private serverFeatures: Element | undefined;
  /** XML is logged only at trace (README, Security); checked once, not per element. */
  private readonly traceXml: boolean;
  /** While hibernating: the round trip a resume waits for, until its answer arrives. */
  private probe: UpstreamProbe | undefined;
  /** The full JID of the stanzas this stream inherits for its bind (a replaced or stranded session's queue, kept stanzas). */
  private inheritedFor: string | undefined;

  /**
   * A session for a client link that just opened, or for a hibernated session another process of
   * the proxy handed over (an upgrade, README "Upgrading"): that one goes on hibernating here.
   */
  constructor(deps: SessionDeps, start: SessionStart | AdoptedSession) {
    this.deps = deps;
    const from = 'link' in start ? start : start.session;
    this.sid = from.sid;
    this.addressKey = from.addressKey;
    this.logger = start.log;
    this.traceXml = start.log.isLevelEnabled('trace');
    this.startedMs = deps.now();
    this.presence = new ClientPresence('link' in start ? false : start.session.presenceShown);
    this.delivery = new ClientDelivery({
      hooks: deps.hooks,
      handle: this,
      limits: deps.settings,
      flow: this.flow,
      now: deps.now,
      log: () => this.log,
      send: (bytes) => this.sendToClient(bytes),
      counted: (bytes, queued) => this.countedToClient(bytes, queued),
      overflow: (sm, overflowing, why) => this.queueOverflow(sm, overflowing, why),
      whenRoom: (need, retry) => deps.queueShares.whenRoom(this, need, retry),
      roomFreed: () => this.guard(() => this.roomFreed()),
    });
    deps.registry.add(this, this.addressKey);
    if ('link' in start) {
      this.state = { name: 'opening', link: start.link, authTimer: this.armAuthTimer() };
      start.link.setHandler(this.clientHandler(start.link));
      this.log.debug('session opened');
      return;
    }
    this.state = this.adopted(start);
    this.deps.hooks.adopted(this, start.session.features);
    start.upstream.resume();
  }

  /** The current state's name (while negotiating, the stream setup's phase), for tests and logs. */
  get stateName(): Exclude<StateName, 'negotiating'> | SetupPhaseName {
    const s = this.state;
    return s.name === 'negotiating' ? s.setup.phaseName : s.name;
  }

  /** The XEP-0198 SM-ID once stream management is on. */
  get smId(): string | undefined {
    return smOf(this.state)?.id;
  }

  /** While this connection's `<resume/>` waits for its identity check: the SM-ID it resumes (an upgrade leaves that session here). */
  get resuming(): string | undefined {
    const s = this.state;
    return s.name === 'negotiating' ? s.setup.resuming : undefined;
  }

  /** The bare JID once bound (logs, identity check on resumption). */
  get bareJid(): string | undefined {
    const s = this.state;
    return isBound(s) ? bare(s.jid) : undefined;
  }

  /** The session as plain data, for the metrics and the admin listener (session-summary.ts). */
  summary(): SessionSummary {
    const s = this.state;
    const sm = smOf(s);
    const link = linkOf(s);
    return {
      sid: this.sid,
      jid: this.jid,
      state: this.stateName,
      transport: link?.transport,
      remote: link?.remote,
      sinceMs: this.startedMs,
      hibernatingSinceMs: s.name === 'hibernating' || s.name === 'stranded' ? s.sinceMs : undefined,
      smEnabled: sm !== undefined,
      resumable: sm?.resumable ?? false,
      queued: sm?.queue.length ?? 0,
    };
  }

  // --- what hooks see (hooks.ts) ---

  get domain(): string | undefined {
    return this.domainName;
  }

  get jid(): string | undefined {
    const s = this.state;
    return isBound(s) ? s.jid : undefined;
  }

  get awaySinceMs(): number | undefined {
    const s = this.state;
    return s.name === 'hibernating' || s.name === 'stranded' ? s.sinceMs : undefined;
  }

  get log(): Logger {
    return this.logger;
  }

  sendUpstream(data: string): void {
    const upstream = upstreamOf(this.state);
    if (upstream !== undefined && !upstream.ended) this.toUpstream(upstream, data);
  }

  serverOffers(name: string, ns: string): boolean {
    return this.serverFeatures?.getChild(name, ns) !== undefined;
  }

  hibernateFor(ms: number): void {
    const s = this.state;
    if (s.name !== 'hibernating') return;
    const timeoutMs = Math.max(ms, s.sm.hibernationMs);
    const expiryTimer = this.armExpiry(timeoutMs);
    this.transition({ ...s, expiresAtMs: this.deps.now() + timeoutMs, expiryTimer });
    this.log.info({ timeoutMs }, 'hibernation time changed');
  }

  holdBack(on: boolean): void {
    const s = this.state;
    this.delivery.holdBack(s.name === 'active' ? s : undefined, on);
  }

  releaseHeld(): void {
    const s = this.state;
    if (s.name === 'active') this.delivery.releaseHeld(s);
  }

  // --- transitions ---

  private transition(next: State): void {
    const from = this.state;
    checkedTransition(from, next);
    this.state = next;
    if (from.name !== next.name) this.log.debug({ from: from.name, to: next.name }, 'session state');
    if (from.name === 'hibernating' && next.name !== 'hibernating') {
      this.probe?.settled();
      this.probe = undefined;
    }
  }

  private armAuthTimer(): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const s = this.state;
      // The timer re-checks the state it was armed for.
      if (!('authTimer' in s) || s.authTimer !== timer) return;
      this.fail(
        new StreamError(
          ErrorCode.CONNECTION_TIMEOUT,
          'connection-timeout',
          `no authentication and bind within ${this.deps.settings.authTimeoutMs} ms`,
        ),
      );
    }, this.deps.settings.authTimeoutMs);
    timer.unref();
    return timer;
  }

  // --- client side ---

  /**
   * Events from `link` reach the session only while it is the session's link: after a takeover
   * the old connection "must no longer deliver anything" (a stanza or a stream close still in
   * flight on it must not touch the resumed session).
   */
  private clientHandler(link: ClientLink): ClientLinkHandler {
    const current = (): boolean => linkOf(this.state) === link;
    return {
      onStreamOpen: (header) => current() && this.guard(() => this.onClientStreamOpen(header)),
      onElement: (element) => current() && this.guard(() => this.onClientElement(element)),
      onStreamClose: () => current() && this.guard(() => this.onClientStreamClose()),
      onProtocolError: (error) => current() && this.guard(() => this.fail(error)),
      onEnd: (end) => current() && this.guard(() => this.onClientEnd(end)),
      onDrain: () => {
        if (current()) this.flow.clientDrained();
      },
    };
  }

  /** Every event handler runs inside this: a bug in one session ends that session only. */
  private guard(action: () => void): void {
    try {
      action();
    } catch (err) {
      const error = asProxyError(err);
      this.log.error({ code: error.code, err: error.message, stack: err instanceof Error ? err.stack : undefined }, 'session failed');
      this.fail(error instanceof StreamError ? error : new InvariantError(error.message));
    }
  }

  private onClientStreamOpen(header: StreamHeader): void {
    const s = this.state;
    if (s.name === 'opening') {
      this.openUpstream(s, header);
      return;
    }
    if (s.name === 'negotiating' && s.setup.phaseName !== 'authenticating') {
      // RFC 6120 §6.4.6: after SASL success the client restarts the stream; so does the hop.
      s.upstream.sendHeader(headerAttrs(header));
    }
  }

  private openUpstream({ link, authTimer }: Extract<State, { name: 'opening' }>, header: StreamHeader): void {
    const version = header.attrs.version;
    const to = header.attrs.to?.toLowerCase();
    if (version === undefined || !version.startsWith('1.')) {
      // RFC 6120 §4.7.5: the proxy speaks XMPP 1.0 only.
      this.fail(
        new StreamError(
          ErrorCode.UNSUPPORTED_VERSION,
          'unsupported-version',
          `stream version '${clipped(version ?? '(none)')}' is not 1.x`,
        ),
      );
      return;
    }
    const target = to === undefined ? undefined : this.deps.upstreamFor(to);
    if (to === undefined || target === undefined) {
      this.fail(hostUnknown(to));
      return;
    }
    this.domainName = to;
    this.transition({ name: 'connecting', link, authTimer, held: [] });
    this.flow.waitForServer();
    link.setLimits({ maxStanzaBytes: this.deps.settings.maxStanzaBytesPreAuth });
    this.log.debug({ domain: to, upstream: `${target.host}:${target.port}` }, 'connecting upstream');
    // A PROXY protocol header upstream, when the domain asks for one, names this client.
    this.deps.connectUpstream({ ...target, origin: link.endpoints }, this.log).then(
      (upstream) => this.guard(() => this.onUpstreamConnected(upstream, header)),
      (err: unknown) =>
        this.guard(() => {
          const error = err instanceof StreamError ? err : new UpstreamError(ErrorCode.UPSTREAM_CONNECT, asProxyError(err).message);
          this.log.warn({ code: error.code, err: error.message }, 'upstream connect failed');
          this.fail(error);
        }),
    );
  }

  private onUpstreamConnected(upstream: UpstreamStream, header: StreamHeader): void {
    const s = this.state;
    if (s.name !== 'connecting') {
      // The client went away while we were connecting.
      upstream.destroy();
      return;
    }
    upstream.setHandler(this.upstreamHandler(upstream));
    const setup = new StreamSetup(this.domainName ?? '', BIND_ID_PREFIX + this.sid, this.setupPort(upstream));
    this.transition({ name: 'negotiating', link: s.link, authTimer: s.authTimer, upstream, setup });
    upstream.sendHeader(headerAttrs(header));
    for (const element of s.held) this.onClientElement(element);
    this.flow.serverAnswered();
  }

  private onClientElement(element: ScannedElement): void {
    if (this.traceXml) this.log.trace({ fromClient: sanitizeForLog(element) }, 'element');
    const s = this.state;
    switch (s.name) {
      case 'connecting':
        s.held.push(element);
        return;
      case 'active': {
        const stanza = isStanza(element);
        if (!stanza && isSmNamespace(element.ns)) {
          this.onSmNonza(element, element.ns);
          return;
        }
        if (stanza) {
          this.stats.fromClient++;
          this.deps.meter.fromClient(element.bytes.length);
          this.presence.observe(element.localName, element.bytes);
        }
        if (!this.answeredByHook(element, 'active')) this.toUpstream(s.upstream, element.bytes);
        // README, What it does: a client stanza counts as handled once written to the upstream socket (or answered).
        if (stanza) s.sm?.inbound.handled();
        return;
      }
      case 'negotiating':
        if (s.setup.hold(element)) return;
        if (isSmNamespace(element.ns)) {
          this.onSmNonza(element, element.ns);
          return;
        }
        if (this.answeredByHook(element, s.setup.phaseName === 'authenticating' ? 'authenticating' : 'authenticated')) return;
        s.setup.fromClient(element);
        return;
      case 'opening':
        // The scanner only delivers elements after a stream header.
        throw new InvariantError('client element before the stream header');
      case 'hibernating':
      case 'closed':
        return;
    }
  }

  /** Runs the from-client hooks; true when one answered the element, which is then not relayed. */
  private answeredByHook(element: ScannedElement, phase: ClientPhase): boolean {
    const verdict = this.deps.hooks.fromClient(element, phase, this);
    if (verdict === undefined) return false;
    if (verdict.kind === 'consumed') return true;
    if (verdict.kind === 'answer-nonza') {
      this.sendToClient(verdict.nonza);
      if (verdict.thenClose !== undefined) this.closeEverything(verdict.thenClose);
      return true;
    }
    const s = this.state;
    if (s.name === 'active') {
      const stanza = Buffer.from(verdict.stanza);
      this.delivery.toClient(s, stanza, stanzaKindOf(stanza));
    } else this.sendToClient(verdict.stanza);
    return true;
  }

  private onClientStreamClose(): void {
    const s = this.state;
    // XEP-0198 (since v1.5.2) recommends an `<a/>` just before a graceful close: the peer trims its
    // queue. What it did not ack is answered as at expiry (XEP-0198 §5), by `end`.
    if (s.name === 'active' && s.sm !== undefined) this.sendToClient(s.sm.ackElement());
    this.closeEverything('client closed the stream');
  }

  private onClientEnd(end: LinkEnd): void {
    this.flow.clientGone();
    const s = this.state;
    if (s.name === 'active' && end.kind !== 'clean' && s.sm !== undefined && s.sm.resumable) {
      this.hibernate(s, end.kind === 'lost' ? end.reason : `link closed: ${end.reason}`);
      return;
    }
    if (s.name === 'closed') return;
    this.log.debug({ end: end.kind }, 'client link ended');
    this.closeEverything(`client link ended (${end.kind})`);
  }

  // --- stream management nonzas (XEP-0198) ---

  private onSmNonza(element: ScannedElement, ns: SmNamespace): void {
    const s = this.state;
    const name = element.localName;
    if (name === 'r' || name === 'a') {
      if (s.name !== 'active' || s.sm === undefined) {
        // XEP-0198 §4: acks only exist once SM is enabled; a stray one is ignored.
        this.log.debug({ element: name }, 'SM ack element before enable ignored');
        return;
      }
      if (name === 'r') this.sendToClient(s.sm.ackElement());
      else this.onClientAck(s, s.sm, parseElement(element.bytes));
      return;
    }
    if (name === 'enable') {
      this.onEnable(parseElement(element.bytes), ns);
      return;
    }
    if (name === 'resume') {
      this.onResume(parseElement(element.bytes), ns);
      return;
    }
    this.refuse(ns, smFailure('unknown-request', name));
  }

  /** Answers a stream-management request with `<failed/>`; the log line carries the failure's key. */
  private refuse(ns: SmNamespace, failure: SmFailure, previd?: string): void {
    this.log.info(
      { failed: failure.key, previd: previd === undefined ? undefined : shortId(previd) },
      previd === undefined ? 'stream management request refused' : 'resume failed',
    );
    this.sendToClient(renderFailed(ns, failure));
    this.deps.events.notify(this.log, 'smFailed', { sid: this.sid, failed: failure.key });
  }

  private onEnable(enable: Element, ns: SmNamespace): void {
    const s = this.state;
    if (s.name !== 'active') {
      // XEP-0198 §3: "the client MUST NOT attempt to enable stream management until after it
      // has completed resource binding"; the server "SHALL enforce this order".
      this.refuse(ns, smFailure('enable-before-bind'));
      return;
    }
    if (s.sm !== undefined) {
      // XEP-0198 §3: the client SHALL enable at most once; the stream stays usable (Prosody, ejabberd).
      this.refuse(ns, smFailure('enable-twice'));
      return;
    }
    const result = StreamManagement.enable({
      ns,
      resumeAttr: enable.attrs.resume as string | undefined,
      maxAttr: enable.attrs.max as string | undefined,
      settings: this.deps.settings,
      budget: this.deps.queueShares.forSession(bare(s.jid), this.addressKey),
    });
    if (!result.ok) {
      this.refuse(ns, smFailure('enable-invalid', result.text));
      return;
    }
    const sm = result.sm;
    this.transition({ ...s, sm, clock: this.ackClock(sm) });
    if (sm.resumable) this.deps.registry.registerResumable(sm.id, this, s.jid);
    this.sendToClient(sm.enabledElement());
    this.log.info(
      { smId: sm.resumable ? shortId(sm.id) : undefined, resumable: sm.resumable, maxSeconds: sm.hibernationMs / 1000 },
      'stream management enabled',
    );
  }

  private onClientAck(s: Extract<State, { name: 'active' }>, sm: StreamManagement, a: Element): void {
    const outcome = sm.onAck(a.attrs.h as string | undefined);
    if (outcome.kind === 'error') {
      this.fail(outcome.error);
      return;
    }
    if (outcome.kind === 'backwards') this.log.info({ h: outcome.h, previous: outcome.previous }, 'client acked less than before; ignored');
    if (outcome.requestedAtMs !== undefined) this.deps.meter.ackRoundTrip(this.deps.now() - outcome.requestedAtMs);
    this.delivery.sendBacklog(s, sm);
    s.clock?.check();
  }

  /** A clock for the attached client's acks; the link is dropped when one stays unanswered (ack-clock.ts). */
  private ackClock(sm: StreamManagement): AckClock {
    return new AckClock(sm, this.deps.settings, this.deps.now, {
      sendRequest: (request) => this.sendToClient(request),
      guard: (action) => this.guard(action),
      overdue: (waitedMs) => {
        const s = this.state;
        if (s.name !== 'active') return;
        const unacked = sm.queue.length;
        this.deps.events.notify(this.log, 'ackDelayed', { sid: this.sid, jid: s.jid, unacked, waitedMs });
        this.log.info({ unacked, waitedMs }, 'ack delayed; treating the client connection as dead');
        // Like mod_smacks's "smacks-ack-delayed", then hibernation: the link is dropped as a dead connection.
        s.link.destroy('ack delayed');
      },
    });
  }

  // --- resumption (XEP-0198 §5; README, Resumption and the legacy server) ---

  private onResume(resume: Element, ns: SmNamespace): void {
    const s = this.state;
    if (s.name !== 'negotiating' || s.setup.phaseName !== 'authenticated') {
      const early = s.name === 'negotiating' && s.setup.phaseName === 'authenticating';
      this.refuse(ns, smFailure(early ? 'resume-before-auth' : 'resume-after-bind'));
      return;
    }
    const previd = (resume.attrs.previd as string | undefined) ?? '';
    const h = parseH(resume.attrs.h as string | undefined);
    if (h === undefined) {
      this.refuse(ns, smFailure('resume-without-h'));
      return;
    }
    const candidate = this.deps.registry.lookup(previd, h, this.deps.now());
    const early = decideBeforeIdentity(candidate);
    if (early !== undefined) {
      if (early.ok) return;
      if ('reconnect' in early) this.reconnectElsewhere(previd);
      else this.refuse(ns, early.failure, previd);
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
  private reconnectElsewhere(previd: string): void {
    this.log.info({ previd: shortId(previd) }, 'resumed session is in the other process of an upgrade; the client connects again');
    this.end({ kind: 'moved' });
  }

  /**
   * The resuming client's account is known (stream-setup.ts): `bareJid`, or undefined when the
   * server refused the identity bind. When a bind told it, that bind may have made the legacy
   * server replace the very session being resumed (one resource per account): the resume is
   * decided only after a round trip on that session's stream has shown whether it is still there.
   */
  private onIdentityKnown(request: ResumeRequest, bareJid: string | undefined, byBind: boolean, boundJid: string | undefined): void {
    if (this.state.name !== 'negotiating') throw new InvariantError(`resume identity known in state ${this.state.name}`);
    const probed = byBind && bareJid !== undefined ? this.deps.registry.probe(request.previd) : undefined;
    if (probed === undefined) {
      this.decideResumeOf(request, bareJid, boundJid);
      return;
    }
    void probed.then(() =>
      this.guard(() => {
        // The client may have gone while the legacy server answered.
        if (this.state.name === 'negotiating') this.decideResumeOf(request, bareJid, boundJid);
      }),
    );
  }

  private decideResumeOf(request: ResumeRequest, bareJid: string | undefined, boundJid: string | undefined): void {
    const s = this.state;
    if (s.name !== 'negotiating') throw new InvariantError(`resume decided in state ${s.name}`);
    const link = s.link;
    // Looked up again: the session may have ended, or its client acked, during the identity check.
    const account =
      bareJid === undefined ? undefined : { bareJid, domain: this.domainName ?? '', ...(boundJid === undefined ? {} : { boundJid }) };
    const candidate = this.deps.registry.lookup(request.previd, request.h, this.deps.now());
    const decision = decideResume(candidate, account);
    if (!decision.ok && 'reconnect' in decision) {
      this.reconnectElsewhere(request.previd);
      return;
    }
    if (!decision.ok) {
      const queued = decision.takeQueue === true ? this.deps.registry.takeQueue(request.previd, request.h) : [];
      if (queued.length > 0 && candidate.kind === 'live') this.inheritedFor = candidate.jid;
      this.refuse(request.ns, decision.failure, request.previd);
      s.setup.resumeRefused(queued);
      return;
    }
    const renewed = decision.renewUpstream === true ? s.upstream : undefined;
    // The client (and, renewed, the stream) now belong to the resumed session: this one lets go of
    // its holds on them first, and the resumed session sets its own.
    this.flow.clientHandedOver();
    if (renewed !== undefined) this.flow.upstreamHandedOver();
    const deliverHeld = this.deps.registry.resume(request.previd, { link, ns: request.ns, h: request.h, upstream: renewed });
    // The temporary stream closes cleanly (or, bound to the session's own JID, is the session's
    // now), and what the client pipelined after <resume/> goes to the resumed session, in order.
    this.inheritedLost(s.setup.unclaimed);
    if (renewed === undefined) {
      s.upstream.close();
      this.log.info({ previd: shortId(request.previd) }, 'client resumed another session; temporary stream closed');
    } else {
      this.log.info({ previd: shortId(request.previd) }, 'client resumed another session; this upstream stream is its stream now');
    }
    this.transition({ name: 'closed' });
    this.deps.registry.delete(this);
    this.deps.events.notify(this.log, 'sessionEnded', {
      sid: this.sid,
      jid: undefined,
      reason: 'resumed',
      code: undefined,
      unacked: NOTHING_UNACKED,
      late: undefined,
    });
    deliverHeld(s.setup.resumeAccepted());
  }

  /** A hibernating session as plain data (hibernated-snapshot.ts writes it out); undefined in any other state. */
  snapshot(): HibernatedSession | undefined {
    const s = this.state;
    if (s.name !== 'hibernating' || this.domain === undefined) return undefined;
    return {
      sid: this.sid,
      addressKey: this.addressKey,
      domain: this.domain,
      jid: s.jid,
      sinceMs: s.sinceMs,
      expiresAtMs: s.expiresAtMs,
      presenceShown: this.presence.shown,
      serverFeatures: this.serverFeatures?.toString(),
      features: this.deps.hooks.handedOff(this),
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
  handOff(): { session: HibernatedSession; upstream: ReleasedUpstream; link: ClientLink | undefined } | undefined {
    const before = this.state;
    const attached = before.name === 'active' && before.sm?.resumable === true;
    if ((before.name !== 'hibernating' && !attached) || this.domainName === undefined) return undefined;
    // Stanzas that wait for room in the memory budget are in no snapshot: such a session cannot move.
    if (this.delivery.waitingForRoom) return undefined;
    // The release scans what the socket had buffered (it is delivered or queued): the snapshot comes after it.
    const upstream = before.upstream.release();
    if (upstream === undefined) return undefined;
    if (this.state !== before) {
      upstream.socket.destroy();
      throw new InvariantError(`upstream released while the session went to ${this.state.name}`);
    }
    let link: ClientLink | undefined;
    if (before.name === 'active') {
      link = before.link;
      this.flow.clientGone();
      this.hibernate(before, 'the proxy is upgrading', true);
    }
    // Held stanzas that found no room on the way to the queue: the session cannot move after all.
    if (this.state.name === 'hibernating' && this.delivery.waitingForRoom) {
      this.queueOverflow(this.state.sm, this.delivery.takeUnsent(), 'global limit: stanzas wait for room during the upgrade');
    }
    const s = this.state;
    const session = this.snapshot();
    if (s.name !== 'hibernating' || session === undefined) {
      // Hibernation ended it (its queue overflowed): what it held was answered on a stream that had left.
      upstream.socket.destroy();
      link?.destroy('the proxy is upgrading');
      this.log.error({ code: ErrorCode.UPGRADE, state: s.name }, 'session ended while it was handed over');
      return undefined;
    }
    // The stanzas go on in the snapshot; their bytes leave this process's budget.
    s.sm.queue.drain();
    this.transition({ name: 'closed' });
    this.deps.registry.delete(this);
    this.deps.registry.handedOff(s.sm.id);
    this.log.info({ queued: session.sm.queue.entries.length, attached }, 'session handed over to the new process');
    return { session, upstream, link };
  }

  /** The state of a session another process handed over: hibernating, its expiry counted on from the snapshot. */
  private adopted({ session, upstream, sm }: AdoptedSession): State {
    this.domainName = session.domain;
    this.serverFeatures = session.serverFeatures === undefined ? undefined : parseElement(session.serverFeatures);
    this.deps.registry.bound(this);
    this.deps.registry.registerResumable(sm.id, this, session.jid);
    const timeoutMs = Math.max(0, session.expiresAtMs - this.deps.now());
    const expiryTimer = this.armExpiry(timeoutMs);
    upstream.setHandler(this.upstreamHandler(upstream));
    upstream.startKeepalive(this.deps.settings.upstreamKeepaliveMs);
    this.log.info({ queued: sm.queue.length, timeoutMs }, 'hibernating session taken over from the previous process');
    const { jid, sinceMs } = session;
    return { name: 'hibernating', upstream, jid, sm, sinceMs, expiresAtMs: this.deps.now() + timeoutMs, expiryTimer };
  }

  /**
   * A round trip on this hibernating session's upstream stream (upstream-probe.ts), settled when
   * the session stops hibernating too; `undefined` in any other state.
   */
  probeUpstream(): Promise<void> | undefined {
    const s = this.state;
    if (s.name !== 'hibernating' || this.domainName === undefined) return undefined;
    if (this.probe?.isSettled === true) this.probe = undefined;
    this.probe ??= new UpstreamProbe((data) => this.toUpstream(s.upstream, data), this.domainName, PROBE_TIMEOUT_MS);
    return this.probe.done;
  }

  /** What a `<resume/>` of this session with `h` would find (the registry asks, for decideResume). */
  resumeCandidate(h: number): ResumeCandidate {
    return resumeCandidateOf(this.state, this.domainName, h);
  }

  /**
   * The client of this stranded session came back on another stream (decideResume's `takeQueue`):
   * the stanzas it did not acknowledge (`h`) leave with it, in order, for its next bind there; the
   * session ends.
   */
  handOverQueue(h: number): Buffer[] {
    const s = this.state;
    if (s.name !== 'stranded') throw new InvariantError(`queue handed over in state ${s.name}`);
    const trimmed = s.sm.queue.resume(h);
    if (trimmed.ack.kind !== 'acked') throw new InvariantError(`queue handed over with h=${h}, which it refuses (${trimmed.ack.kind})`);
    const queued = this.takeQueue(s.sm);
    this.log.info({ handedOver: queued.length, h }, 'client came back; the queue goes to its next bind');
    this.end({ kind: 'queue-handed-over', handedOver: queued.length });
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
  yieldToLogin(): Buffer[] {
    const s = this.state;
    if (!isBound(s)) return [];
    const queued = this.takeQueue(s.sm);
    this.log.info({ handedOver: queued.length }, 'a new login bound this resource; the queue goes to it');
    this.end({
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
  private takeQueue(sm: StreamManagement | undefined): Buffer[] {
    const replayed = sm?.queue.drain().map((entry) => this.deps.hooks.replay(entry.bytes, entry.sentAtMs, this)) ?? [];
    return [...replayed, ...this.delivery.takeUnsent()];
  }

  /**
   * Called by the registry once decideResume accepted a resume of this (hibernated or still
   * attached) session: takes the link, `<resumed/>`, replay of unacked stanzas, normal flow.
   */
  takeOver({ link, ns, h, upstream: renewed }: ResumeHandOver): void {
    const s = this.state;
    if (!(s.name === 'active' || s.name === 'hibernating' || (s.name === 'stranded' && renewed !== undefined)) || s.sm === undefined)
      throw new InvariantError(`resume accepted for a session in state ${s.name}`);
    const sm = s.sm;
    const resumed = sm.queue.resume(h);
    if (resumed.ack.kind !== 'acked')
      throw new InvariantError(`resume accepted with h=${h}, which the queue refuses (${resumed.ack.kind})`);
    const hibernatedMs = s.name === 'hibernating' || s.name === 'stranded' ? this.deps.now() - s.sinceMs : 0;
    this.flow.clientGone();
    this.stats.resumes++;
    sm.linkChanged();
    const clock = this.ackClock(sm);
    this.delivery.linkChanged();
    const upstream = s.name === 'stranded' ? renewed! : s.upstream;
    // From here on the old link's events no longer reach this session (clientHandler).
    const next = { name: 'active', link, upstream, jid: s.jid, sm, clock } as const;
    this.transition(next);
    link.setHandler(this.clientHandler(link));
    if (s.name === 'stranded') {
      // The legacy server restarted: its new session of this JID hears again what the old one heard.
      upstream.setHandler(this.upstreamHandler(upstream));
      this.flow.upstreamChanged();
      upstream.startKeepalive(this.deps.settings.upstreamKeepaliveMs);
      this.deps.hooks.upstreamRenewed(this);
      this.log.info({ jid: s.jid }, 'session goes on over a new upstream stream');
    }
    if (s.name === 'active') {
      // XEP-0198 §5: "the server SHOULD send a <conflict/> stream error on the old stream".
      s.link.fail(new StreamError(ErrorCode.SM_TAKEOVER, 'conflict', 'the session was resumed from another connection'));
      this.log.info('session taken over by a newer connection');
    }
    // XEP-0198 §5: <resumed/> first, then every unacked stanza in its original order.
    this.sendToClient(sm.resumedElement(ns));
    for (const entry of resumed.replay) this.sendToClient(this.deps.hooks.replay(entry.bytes, entry.sentAtMs, this));
    // Then what waited for room in the queue of a taken-over link, as far as the resume's h made room.
    this.delivery.sendBacklog(next, sm);
    this.log.info({ replayed: resumed.replay.length, hibernatedMs, h }, 'session resumed');
    // A takeover of a still-attached session ends no hibernation: events stay paired for metrics.
    if (s.name === 'hibernating' || s.name === 'stranded') this.hibernationEnded(s, 'resumed');
    const tookOver = s.name === 'active';
    this.deps.events.notify(this.log, 'resumed', {
      sid: this.sid,
      jid: s.jid,
      smId: sm.id,
      replayed: resumed.replay.length,
      hibernatedMs,
      tookOver,
    });
    // Ask at once whether the replay arrived, so the queue trims without waiting for the interval.
    if (resumed.replay.length > 0) clock.request('replayed');
  }

  /** Elements the client pipelined after `<resume/>` (Monal), delivered after the replay. */
  acceptHeld(held: readonly ScannedElement[]): void {
    for (const element of held) this.guard(() => this.onClientElement(element));
  }

  // --- hibernation and expiry ---

  /**
   * `handOff`: the session hibernates only to move to the next process of an upgrade, whose client
   * resumes at once: the hooks are not told (a push notification for it would wake the phone for nothing).
   */
  private hibernate(s: Extract<State, { name: 'active' }>, reason: string, handOff = false): void {
    const sm = s.sm;
    if (sm === undefined) throw new InvariantError('hibernate without stream management');
    const timeoutMs = sm.hibernationMs;
    const expiryTimer = this.armExpiry(timeoutMs);
    sm.linkChanged();
    sm.queue.compact();
    const sinceMs = this.deps.now();
    this.transition({ name: 'hibernating', upstream: s.upstream, jid: s.jid, sm, sinceMs, expiresAtMs: sinceMs + timeoutMs, expiryTimer });
    this.log.info({ reason, queued: sm.queue.length, timeoutMs }, 'hibernating');
    this.deps.events.notify(this.log, 'hibernationStarted', { sid: this.sid, jid: s.jid, smId: sm.id, queued: sm.queue.length, timeoutMs });
    // What waited for room, then what was held back, goes to the queue now; a hibernating session's queue that overflows ends it.
    if (this.delivery.clientLeft(sm) === 'ended') return;
    if (this.deps.hooks.wantHibernated && !handOff)
      this.deps.hooks.hibernated(
        this,
        [...sm.queue.entries()].map((entry) => entry.bytes),
      );
  }

  /** The hibernation's end, `timeoutMs` from now; the timer re-checks that it is still the state's own. */
  private armExpiry(timeoutMs: number): NodeJS.Timeout {
    const expiryTimer = setTimeout(() => this.guard(() => this.onExpiryTimer(expiryTimer)), timeoutMs);
    expiryTimer.unref();
    return expiryTimer;
  }

  private onExpiryTimer(timer: NodeJS.Timeout): void {
    const s = this.state;
    if ((s.name !== 'hibernating' && s.name !== 'stranded') || s.expiryTimer !== timer) return;
    this.log.info({ queued: s.sm.queue.length }, 'hibernation expired');
    this.end({ kind: 'expired' });
  }

  /** The one place `hibernationEnded` is emitted: on resumption, or when the session ends. */
  private hibernationEnded(s: Extract<State, { name: 'hibernating' | 'stranded' }>, reason: HibernationEnd): void {
    const hibernatedMs = this.deps.now() - s.sinceMs;
    this.deps.events.notify(this.log, 'hibernationEnded', { sid: this.sid, jid: s.jid, smId: s.sm.id, reason, hibernatedMs });
  }

  private endSm(sm: StreamManagement | undefined, reason: EndedReason): void {
    if (sm === undefined || !sm.resumable) return;
    const ended = { h: sm.inbound.h, bareJid: this.bareJid ?? '', domain: this.domainName ?? '', reason, endedAtMs: this.deps.now() };
    this.deps.registry.endResumable(sm.id, ended);
  }

  // --- upstream side ---

  private upstreamHandler(upstream: UpstreamStream): UpstreamHandler {
    return {
      onStreamOpen: (header) => this.guard(() => this.onUpstreamStreamOpen(upstream, header)),
      onElement: (element) => this.guard(() => this.onUpstreamElement(upstream, element)),
      onStreamClose: () => this.guard(() => this.onUpstreamStreamClose(upstream)),
      onFailure: (error) =>
        this.guard(() => {
          if (upstreamOf(this.state) === upstream) this.upstreamLost(error);
        }),
      onEnd: (clean) =>
        this.guard(() => {
          if (upstreamOf(this.state) !== upstream) return;
          this.upstreamLost(
            new UpstreamError(ErrorCode.UPSTREAM_CLOSED, clean ? 'legacy server closed the stream' : 'legacy server connection lost', {
              text: 'legacy server connection lost',
            }),
          );
        }),
      onDrain: () => {
        if (upstreamOf(this.state) === upstream) this.flow.upstreamDrained();
      },
    };
  }

  private onUpstreamStreamOpen(upstream: UpstreamStream, header: StreamHeader): void {
    if (upstreamOf(this.state) !== upstream) return;
    linkOf(this.state)?.sendHeader({
      from: header.attrs.from ?? this.domain,
      id: header.attrs.id,
      version: header.attrs.version ?? '1.0',
      lang: header.attrs['xml:lang'],
    });
  }

  private onUpstreamElement(upstream: UpstreamStream, element: ScannedElement): void {
    if (this.traceXml) this.log.trace({ fromUpstream: sanitizeForLog(element) }, 'element');
    const s = this.state;
    if (upstreamOf(s) !== upstream) return;
    if (s.name === 'active' && isStanza(element)) {
      this.delivery.toClient(s, element.bytes, element.localName as StanzaKind);
      return;
    }
    if (s.name === 'hibernating') {
      this.onUpstreamWhileHibernating(s, element);
      return;
    }
    if (element.localName === 'error' && element.ns === NS.stream) {
      // Only the server going away is outlived; a conflict (another session took the resource), a
      // policy violation or a kick is the server's word on this session and is told as it is.
      const condition = parseElement(element.bytes).getChildElements()[0]?.name ?? '';
      if (SERVER_GOING_AWAY.has(condition) && this.outliveUpstream(s, `stream error ${condition}`)) return;
      this.log.info({ code: ErrorCode.UPSTREAM_STREAM_ERROR }, 'legacy server sent a stream error; relayed');
      this.end({ kind: 'upstream-error', element });
      return;
    }
    const setup = s.name === 'negotiating' ? s.setup : undefined;
    if (element.localName === 'features' && element.ns === NS.stream) {
      this.relayFeatures(setup, element);
      return;
    }
    if (setup !== undefined) setup.fromServer(element);
    else this.sendToClient(element.bytes);
  }

  /** What stream setup does through this session (stream-setup.ts). */
  private setupPort(upstream: UpstreamStream): SetupPort {
    return {
      toClient: (data) => this.sendToClient(data),
      toServer: (data) => this.toUpstream(upstream, data),
      saslFailed: (condition, attempt) => {
        // README, Limits and abuse: a line per failure for fail2ban and the like; never the payload.
        const address = linkOf(this.state)?.address;
        this.log.info(
          { code: ErrorCode.SASL_FAILED, address, mechanism: attempt?.mechanism, username: attempt?.username, condition },
          'SASL authentication failed',
        );
        this.deps.failedLogins.failed(this.addressKey, this.deps.now());
      },
      saslSucceeded: () => {
        // RFC 6120 §6.4.6: both streams restart; SASL payloads are never logged.
        const link = this.requireLink();
        link.expectRestart();
        upstream.expectRestart();
        link.setLimits({ maxStanzaBytes: this.deps.settings.maxStanzaBytes });
        this.log.debug('authenticated');
      },
      waitForServer: () => this.flow.waitForServer(),
      serverAnswered: () => this.flow.serverAnswered(),
      beforeBind: (resource, account, send) => {
        // The same full JID. Only where SASL named the account: what the sessions of that JID
        // queued or received must never reach another account (EXTERNAL names none; such a bind
        // replaces nothing and does not wait).
        if (resource === undefined || account === undefined) {
          send([]);
          return;
        }
        const wanted = `${account}/${resource}`;
        const sameJid = (jid: string): boolean => sameFullJid(jid, wanted);
        this.inheritedFor = wanted;
        // README, What it does: a live session of this JID ends here, and its stream lingers.
        const queued = this.deps.registry.replaceByLogin(account, resource);
        if (!this.deps.lingering.has(sameJid)) {
          send(queued);
          return;
        }
        this.log.debug({ resource }, 'bind waits for the ended session of this resource to close upstream');
        void this.deps.lingering.handOver(sameJid).then((inherited) =>
          this.guard(() => {
            if (upstreamOf(this.state) === upstream && this.state.name === 'negotiating') send([...queued, ...inherited]);
            else this.inheritedLost([...queued, ...inherited]);
          }),
        );
      },
      bound: (jid, inherited, held) => {
        // Only the account they were for may have them: a server could bind a SASL name to another.
        const forAnother = this.inheritedFor !== undefined && !sameBareJid(bare(jid), bare(this.inheritedFor));
        if (forAnother) this.inheritedLost(inherited);
        // What was kept for this very full JID (kept-stanzas.ts): the server bound it here, whatever the SASL mechanism.
        const kept = this.deps.lingering.kept.take((keptFor) => sameFullJid(keptFor, jid));
        const handedOver = [...kept, ...(forAnother ? [] : inherited)];
        this.inheritedFor = handedOver.length > 0 ? jid : undefined;
        this.becomeActive(jid);
        // A pipelined <enable/> first: what is handed over is then counted, and kept until acknowledged.
        for (const element of held) this.onClientElement(element);
        // Routed to this full JID before the server bound it here: they come first, oldest first, in
        // order, for as long as the session lasts (a queue that overflows ends it).
        const s = this.state;
        for (const [i, bytes] of handedOver.entries()) {
          if (this.state !== s || s.name !== 'active') {
            this.inheritedLost(handedOver.slice(i));
            break;
          }
          this.delivery.toClient(s, bytes, stanzaKindOf(bytes));
        }
        this.inheritedFor = undefined;
      },
      inheritedLost: (inherited) => this.inheritedLost(inherited),
      redeliver: (held) => {
        for (const element of held) this.onClientElement(element);
      },
      identityKnown: (request, bareJid, byBind, boundJid) => this.onIdentityKnown(request, bareJid, byBind, boundJid),
    };
  }

  /**
   * Stanzas handed to this stream for a bind that did not take them (the stream ended first, the
   * server refused the bind or bound another account): the next session that binds their full JID
   * gets them (kept-stanzas.ts).
   */
  private inheritedLost(inherited: readonly Buffer[]): void {
    const jid = this.inheritedFor;
    this.deps.lingering.kept.keep(jid ?? '', inherited, jid === undefined ? 0 : this.deps.settings.strandedMs, this.log);
  }

  private becomeActive(jid: string): void {
    const s = this.state;
    if (s.name !== 'negotiating') return;
    this.transition({ name: 'active', link: s.link, upstream: s.upstream, jid, sm: undefined, clock: undefined });
    this.deps.registry.bound(this);
    s.upstream.startKeepalive(this.deps.settings.upstreamKeepaliveMs);
    this.logger = this.logger.child({ jid });
    this.log.info('bound');
    this.deps.hooks.bound(this);
  }

  private relayFeatures(setup: StreamSetup | undefined, element: ScannedElement): void {
    const phase = setup?.featuresPhase ?? 'post-auth';
    const offered = parseElement(element.bytes);
    if (phase === 'post-auth') this.serverFeatures = offered;
    const { features, findings } = rewriteFeatures(offered, this.deps.hooks.advertise(phase, offered));
    if (findings.channelBindingMechanisms.length > 0 || findings.channelBindingTypes) {
      this.deps.reportFindings(this.domainName ?? '', findings);
    }
    this.sendToClient(features.toString());
    setup?.featuresRelayed();
  }

  /** A stanza for the client was sent or queued: counted for the summary line and the metrics. */
  private countedToClient(bytes: Buffer, queued: number): void {
    this.stats.toClient++;
    this.deps.meter.toClient(bytes.length);
    if (queued > this.stats.peakQueue) this.stats.peakQueue = queued;
  }

  private onUpstreamWhileHibernating(s: Extract<State, { name: 'hibernating' }>, element: ScannedElement): void {
    if (this.probe?.answers(element) === true) {
      this.probe = undefined;
      return;
    }
    if (element.localName === 'error' && element.ns === NS.stream) {
      // RFC 6120 §4.9.3.3 conflict: another session took the resource (or, one resource per account, the account).
      const replaced = parseElement(element.bytes).getChild('conflict', NS.streams) !== undefined;
      this.strand(s, 'the legacy server ended the stream with a stream error', replaced);
      return;
    }
    if (!isStanza(element)) return;
    const bytes = this.deps.hooks.toClient(element.bytes, element.localName as StanzaKind, 'queued', this);
    if (bytes === undefined) return;
    if (this.delivery.queueWhileAway(s.sm, bytes) !== 'queued') return;
    this.log.debug({ queued: s.sm.queue.length, kind: element.localName }, 'stanza queued while hibernating');
    this.deps.events.notify(this.log, 'stanzaQueuedWhileHibernating', {
      sid: this.sid,
      jid: s.jid,
      smId: s.sm.id,
      queued: s.sm.queue.length,
      kind: element.localName,
    });
  }

  /** The memory budget of all queues has room again: what waited for it goes on, as the state now allows. */
  private roomFreed(): void {
    const s = this.state;
    if (s.name === 'active' && s.sm !== undefined) this.delivery.sendBacklog(s, s.sm);
    else if (s.name === 'hibernating') this.delivery.queueBacklog(s.sm);
  }

  /** The queue is full: the session stops being resumable and the client is told (`resource-constraint`, README, Errors). */
  private queueOverflow(sm: StreamManagement, overflowing: readonly Buffer[], why: string): void {
    this.log.warn({ code: ErrorCode.SM_QUEUE_OVERFLOW, why, queued: sm.queue.length }, 'unacked queue overflow; session ends');
    this.end({
      kind: 'queue-overflow',
      overflowing,
      error: new StreamError(ErrorCode.SM_QUEUE_OVERFLOW, 'resource-constraint', `too many unacknowledged stanzas (${why})`),
    });
  }

  private onUpstreamStreamClose(upstream: UpstreamStream): void {
    const s = this.state;
    if (upstreamOf(s) !== upstream) return;
    // The legacy server ended the user's stream: the session ends, and so does the client's.
    this.upstreamLost(
      new UpstreamError(ErrorCode.UPSTREAM_CLOSED, 'legacy server closed the stream', { text: 'legacy server closed the stream' }),
    );
  }

  /**
   * The legacy server ended the user's stream while the client is away (a restart, a kick): the
   * session cannot go on, but what it queued is kept until the client comes back (a resume, or a
   * login of the same resource), or until `strandedMs` from now or the end of its hibernation,
   * whichever is later: then it is lost, since with no stream of the user's nothing can answer it
   * (README, What it does). Waiting longer than a hibernation costs only memory: no answer is
   * given meanwhile that a client coming back later would have missed.
   */
  private strand(s: Extract<State, { name: 'hibernating' }>, why: string, replaced: boolean): void {
    const strandedMs = this.deps.settings.strandedMs;
    const expiryTimer = s.expiresAtMs - this.deps.now() < strandedMs ? this.armExpiry(strandedMs) : s.expiryTimer;
    this.transition({ name: 'stranded', jid: s.jid, sm: s.sm, sinceMs: s.sinceMs, expiryTimer, replaced });
    this.log.warn(
      { code: ErrorCode.UPSTREAM_CLOSED, why, queued: s.sm.queue.length },
      'legacy server ended the stream of a hibernating session; its queue waits for the client',
    );
    s.upstream.destroy();
  }

  /** The upstream is gone: the session ends (or, hibernating, is stranded); a later resume says why. */
  private upstreamLost(error: UpstreamError): void {
    const s = this.state;
    if (s.name === 'hibernating') {
      this.strand(s, error.message, false);
      return;
    }
    if (s.name === 'closed' || this.outliveUpstream(s, error.message)) return;
    this.log.info({ code: error.code, err: error.message }, 'upstream lost');
    this.end({ kind: 'upstream-lost', error });
  }

  /**
   * The legacy server ended the user's stream (a restart, a crash) while the client is attached
   * with a resumable session: nothing the client has not acknowledged can be answered through
   * that stream, so instead of ending, the session drops the client's connection without a stream
   * error (the client reconnects and resumes, as after a network cut) and waits stranded. The
   * resume then binds the same resource on its own stream and goes on over it (README, What it
   * promises). False, and nothing done, for any other session.
   */
  private outliveUpstream(s: State, why: string): boolean {
    if (s.name !== 'active' || s.sm?.resumable !== true) return false;
    this.log.info({ code: ErrorCode.UPSTREAM_CLOSED, why }, 'legacy server ended the stream; the client is cut off to resume');
    s.link.destroy('the legacy server ended the stream: resume');
    this.flow.clientGone();
    this.hibernate(s, `the legacy server ended the stream (${why})`);
    const next = this.state;
    if (next.name === 'hibernating') this.strand(next, why, false);
    return true;
  }

  // --- the end of a session ---

  /** Ends the session with a stream error to the client (the session, not only the socket). */
  fail(error: StreamError): void {
    const s = this.state;
    if (s.name === 'closed') return;
    // Which config key set the limit, for the operator: it is raised at SASL success.
    const limitKey =
      error.code !== ErrorCode.STANZA_TOO_BIG
        ? undefined
        : s.name === 'opening' || s.name === 'connecting' || (s.name === 'negotiating' && s.setup.phaseName === 'authenticating')
          ? 'limits.maxStanzaBytesPreAuth'
          : 'limits.maxStanzaBytes';
    this.log.info({ code: error.code, condition: error.condition, err: error.message, limitKey }, 'stream error sent to client');
    this.end({ kind: 'stream-error', error });
  }

  /**
   * An operator ends the session (the admin listener, README, Metrics and health): an attached
   * client gets the stream error `condition`; the unacked stanzas are answered as at expiry, and a
   * late `<resume/>` learns that the administrator ended it.
   */
  kick(condition: StreamErrorCondition): void {
    if (this.state.name === 'closed') return;
    const error = new StreamError(ErrorCode.KICKED, condition, 'the session was ended by the server administrator');
    this.log.info({ code: error.code, condition }, 'session ended by an administrator');
    this.end({ kind: 'kicked', error });
  }

  /**
   * The proxy is drained (README, Metrics and health): the session ends as at expiry (unacked
   * stanzas answered, the upstream stream closed after the user's unavailable presence), and an
   * attached client loses its connection without a stream close, as in a network cut.
   */
  drain(): void {
    if (this.state.name === 'closed') return;
    this.log.info('session ended: the proxy is drained');
    this.end({ kind: 'drained' });
  }

  /** Proxy shutdown (RFC 6120 §4.9.3.20 `system-shutdown`). */
  shutdown(): void {
    const s = this.state;
    if (s.name === 'hibernating' || s.name === 'stranded') {
      this.log.info({ queued: s.sm.queue.length }, 'hibernating session ends at shutdown');
      this.end({ kind: 'shutdown' });
      return;
    }
    this.fail(new StreamError(ErrorCode.SHUTDOWN, 'system-shutdown', 'the proxy is shutting down'));
  }

  private closeEverything(reason: string): void {
    if (this.state.name === 'closed') return;
    this.log.debug({ reason }, 'closing session');
    this.end({ kind: 'closed' });
  }

  /**
   * The one way a session ends. HOW_TO_END says, per cause, what becomes of the client link, the
   * upstream stream and the unacked stanzas; this method does it in one order: the hibernation
   * ends (its event is emitted here and on resumption only), the unacked stanzas are answered or
   * lost, the SM-ID is remembered with its h, the client is told, the upstream stream lingers for
   * late stanzas (lingering-upstream.ts) or is closed, and the summary line is logged once the
   * upstream connection is gone.
   */
  private end(cause: EndCause): void {
    const s = this.state;
    if (s.name === 'closed') return;
    const how = HOW_TO_END[cause.kind];
    const upstream = upstreamOf(s);
    const sm = smOf(s);
    const jid = isBound(s) ? s.jid : undefined;
    if (s.name === 'hibernating' || s.name === 'stranded') this.hibernationEnded(s, how.reason);
    if (s.name === 'negotiating') this.inheritedLost(s.setup.unclaimed);
    let unacked = NOTHING_UNACKED;
    /** The stanzas answered through the upstream stream: if the server never reads the answers, the client's next session gets them. */
    let answered: readonly Buffer[] = [];
    // What was never sent: what waited for room, what hooks held back (a client without stream management may be held back too).
    const unsent = this.delivery.takeUnsent();
    if ((sm !== undefined || unsent.length > 0) && isBound(s)) {
      // The unacked queue, then what was never sent, then the stanzas that overflowed, in that order.
      // RFC 6120 §4.9.1.1: a stream error is followed by the closing of the stream; bounces
      // written behind it would never be processed, so with the upstream failed they are lost.
      const entries = [...(sm?.queue.drain().map((entry) => entry.bytes) ?? []), ...unsent];
      if (cause.kind === 'queue-overflow') entries.push(...cause.overflowing);
      const via = how.unacked === 'answer' && s.name !== 'stranded' ? { upstream: s.upstream, jid: s.jid } : undefined;
      ({ outcome: unacked, answered } = disposeUnacked(entries, this.deps.settings.expiryPolicy, via, this.log));
    }
    if ('handedOver' in cause) unacked = { ...unacked, handedOver: cause.handedOver };
    this.endSm(sm, how.reason);
    const link = linkOf(s);
    // Closed before the link and the upstream are told: whatever they report from here on is not the session's any more.
    this.transition({ name: 'closed' });
    this.deps.registry.delete(this);
    if (link !== undefined) tellClient(link, cause);
    if (how.upstream === 'destroy') upstream?.destroy();
    else if (upstream !== undefined && jid !== undefined && how.unacked === 'answer' && !upstream.ended) {
      const options = {
        jid,
        expiryPolicy: this.deps.settings.expiryPolicy,
        wasAvailable: this.presence.shown,
        answered,
        // At shutdown the proxy drops what is kept once every stream is gone (KeptStanzas.dropAll).
        keepMs: this.deps.settings.strandedMs,
        log: this.log,
      };
      this.deps.lingering.linger(upstream, options, (late) => this.ended(how.reason, jid, cause, unacked, late));
      return;
    } else upstream?.close();
    this.ended(how.reason, jid, cause, unacked, undefined);
  }

  /**
   * The session's last log line and its `sessionEnded` event; `late` counts what reached it while
   * its upstream stream lingered. At debug for a connection that never named a domain the proxy
   * serves: a load balancer's TCP probe, or a client refused before that (its refusal has a line of
   * its own).
   */
  private ended(
    reason: EndedReason,
    jid: string | undefined,
    cause: EndCause,
    unacked: UnackedOutcome,
    late: LateStanzas | undefined,
  ): void {
    const code = 'error' in cause ? cause.error.code : cause.kind === 'upstream-error' ? ErrorCode.UPSTREAM_STREAM_ERROR : undefined;
    this.deps.events.notify(this.log, 'sessionEnded', { sid: this.sid, jid, reason, code, unacked, late });
    const level = this.domainName === undefined ? 'debug' : 'info';
    this.log[level](
      {
        reason,
        stanzasFromClient: this.stats.fromClient,
        stanzasToClient: this.stats.toClient,
        resumes: this.stats.resumes,
        peakQueue: this.stats.peakQueue,
        durationMs: this.deps.now() - this.startedMs,
        ...(late !== undefined ? { late } : {}),
      },
      'session ended',
    );
  }

  // --- writing ---

  private sendToClient(data: Buffer | string): void {
    const link = linkOf(this.state);
    if (link === undefined) return;
    this.flow.wroteToClient(link.send(data));
  }

  private toUpstream(upstream: UpstreamStream, data: Buffer | string): void {
    this.flow.wroteToUpstream(upstream.send(data));
  }

  private requireLink(): ClientLink {
    const link = linkOf(this.state);
    if (link === undefined) throw new InvariantError(`no client link in state ${this.state.name}`);
    return link;
  }
}

function headerAttrs(header: StreamHeader): { to?: string; from?: string; version?: string; lang?: string } {
  return { to: header.attrs.to, from: header.attrs.from, version: header.attrs.version, lang: header.attrs['xml:lang'] };
}

/** SM-IDs are secrets of their session: logs carry only a prefix. */
function shortId(id: string): string {
  return id.slice(0, 6);
}
