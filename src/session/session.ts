import type { Logger } from 'pino';
import { ErrorCode, InvariantError, StreamError, UpstreamError, asProxyError } from '../errors.js';
import type { MemoryBudget } from '../sm/memory-budget.js';
import { renderFailed, smFailure, type EndedReason, type SmFailure } from '../sm/failures.js';
import { decideBeforeIdentity, decideResume, type ResumeCandidate } from '../sm/resumption.js';
import { parseH } from '../sm/sequence.js';
import type { ClientLink, ClientLinkHandler, LinkEnd } from '../transport/client-link.js';
import type { UpstreamHandler, UpstreamStream, UpstreamTarget } from '../upstream/upstream-link.js';
import { parseElement, type Element } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS, isSmNamespace, type SmNamespace } from '../xml/namespaces.js';
import { sanitizeForLog } from '../xml/sanitize.js';
import { toRfc6120StreamError } from '../xml/legacy-stream-error.js';
import type { ScannedElement, StreamHeader } from '../xml/stream-scanner.js';
import { addDelay, isMessage } from './delay-stamp.js';
import { FlowControl } from './flow-control.js';
import { pingAnswer, unackedDisposal } from './hibernation.js';
import type { HibernatedSession } from './hibernated-snapshot.js';
import type { SmEvents } from './events.js';
import { rewriteFeatures, type FeaturesFindings } from './features.js';
import { refuseForeignAuthzid } from './foreign-authzid.js';
import { refuseLegacyAuth } from './legacy-auth.js';
import { SaslIdentity } from './sasl-identity.js';
import type { ResumeHandOver, SessionRegistry } from './session-registry.js';
import { StreamManagement, type SmSettings } from '../sm/stream-management.js';

/** Limits and timings a session applies, in the units the code uses. Built from the config. */
export interface SessionSettings extends SmSettings {
  readonly maxStanzaBytes: number;
  readonly maxStanzaBytesPreAuth: number;
  /** An unauthenticated (or unbound) client is closed with `connection-timeout` after this. */
  readonly authTimeoutMs: number;
  /** Whitespace keepalive on the upstream link once bound, when it was idle that long. */
  readonly upstreamKeepaliveMs: number;
  /** `bounce` answers unacked stanzas at expiry; `drop` discards them quietly. */
  readonly expiryPolicy: 'bounce' | 'drop';
}

/**
 * What every session shares; the composition root (proxy.ts) builds it once. A session keeps a
 * reference to it for its whole life, so nothing per-connection belongs here (a hibernating
 * session must not pin the client link it lost).
 */
export interface SessionDeps {
  readonly settings: SessionSettings;
  readonly registry: SessionRegistry;
  readonly events: SmEvents;
  readonly budget: MemoryBudget;
  /** The upstream for a domain the client named, or undefined if it is not served. */
  readonly upstreamFor: (domain: string) => UpstreamTarget | undefined;
  readonly connectUpstream: (target: UpstreamTarget, log: Logger) => Promise<UpstreamStream>;
  /** Called once when the upstream advertises channel binding (the operator must hear it). */
  readonly reportFindings: (domain: string, findings: FeaturesFindings) => void;
  readonly now: () => number;
}

/** What one session starts from: its id, the client link that opened it, and its logger. */
export interface SessionStart {
  readonly sid: string;
  readonly link: ClientLink;
  readonly log: Logger;
}

/**
 * The lifecycle of a session. Each variant carries what is valid in it; timers
 * belong to a variant and are cleared by `transition`.
 */
type State =
  /** TLS is done (or in progress); waiting for the client's stream header. */
  | { readonly name: 'opening'; readonly authTimer: NodeJS.Timeout }
  /** Connecting to the legacy server; client elements are held in order. */
  | { readonly name: 'connecting'; readonly authTimer: NodeJS.Timeout; readonly held: ScannedElement[] }
  /** Relaying the stream before SASL success. */
  | { readonly name: 'authenticating'; readonly authTimer: NodeJS.Timeout; readonly upstream: UpstreamStream; readonly sasl: SaslIdentity }
  /** SASL succeeded; the client may bind, or resume another session. */
  | {
      readonly name: 'authenticated';
      readonly authTimer: NodeJS.Timeout;
      readonly upstream: UpstreamStream;
      /** Set when a failed resume bound a resource for the identity check (XEP-0198 §5). */
      readonly boundJid: string | undefined;
      /** The account the successful SASL exchange named, when it names one for sure (SaslIdentity). */
      readonly saslJid: string | undefined;
      /** The restarted stream's features have reached the client: a `<resumed/>` may follow them. */
      readonly featuresRelayed: boolean;
      /**
       * The client's bind request, forwarded and not answered yet: only the answer to this id
       * binds the session, and what the client pipelines behind it (an `<enable/>`) waits for it.
       */
      readonly pendingBind: { readonly id: string; readonly held: ScannedElement[] } | undefined;
    }
  /** A `<resume/>` is waiting for the legacy server's answer to the identity check. */
  | {
      readonly name: 'resuming';
      readonly authTimer: NodeJS.Timeout;
      readonly upstream: UpstreamStream;
      readonly request: ResumeRequest;
      readonly held: ScannedElement[];
      readonly saslJid: string | undefined;
      /** The SASL exchange confirmed the account; the answer waits for the restarted stream's features. */
      readonly awaitingFeatures: boolean;
    }
  /** Bound: everything is relayed; stream management may be on. */
  | {
      readonly name: 'active';
      readonly upstream: UpstreamStream;
      readonly jid: string;
      readonly sm: StreamManagement | undefined;
      readonly ackTimer: NodeJS.Timeout | undefined;
      readonly requestTimer: NodeJS.Timeout | undefined;
    }
  /** The client is away; the upstream is kept alive and stanzas are queued (README, Hibernation). */
  | {
      readonly name: 'hibernating';
      readonly upstream: UpstreamStream;
      readonly jid: string;
      readonly sm: StreamManagement;
      readonly sinceMs: number;
      readonly expiryTimer: NodeJS.Timeout;
    }
  /** The client closed cleanly; waiting for the legacy server to close its stream. */
  | { readonly name: 'closing'; readonly upstream: UpstreamStream }
  | { readonly name: 'closed' };

type StateName = State['name'];

/** One table of allowed transitions; anything else is a bug. */
const TRANSITIONS: Record<StateName, readonly StateName[]> = {
  opening: ['connecting', 'closed'],
  connecting: ['authenticating', 'closed'],
  authenticating: ['authenticated', 'closing', 'closed'],
  authenticated: ['authenticated', 'active', 'resuming', 'closing', 'closed'],
  resuming: ['authenticated', 'closing', 'closed'],
  active: ['active', 'hibernating', 'closing', 'closed'],
  hibernating: ['active', 'closed'],
  closing: ['closed'],
  closed: [],
};

interface ResumeRequest {
  readonly ns: SmNamespace;
  readonly previd: string;
  readonly h: number;
  readonly bindId: string;
}

/** Why a session ends ({@link Session.end}). */
type EndCause =
  /** The client closed, or the link ended without hibernation, or the legacy server answered our close. */
  | { readonly kind: 'closed' }
  /** A hibernation ran out (XEP-0198 §5). */
  | { readonly kind: 'expired' }
  /** The proxy stops while the session hibernates. */
  | { readonly kind: 'shutdown' }
  /** The proxy ends the stream with a stream error (bad input, limits, timeouts, shutdown of an attached session). */
  | { readonly kind: 'stream-error'; readonly error: StreamError }
  /** The unacked queue overflowed. */
  | { readonly kind: 'queue-overflow'; readonly error: StreamError; readonly overflowing: Buffer }
  /** The legacy server ended the user's stream with a stream error: relayed (RFC 6120 names). */
  | { readonly kind: 'upstream-error'; readonly element: ScannedElement }
  /** The legacy server's connection failed or closed. */
  | { readonly kind: 'upstream-lost'; readonly error: UpstreamError };

/**
 * What each ending does (the client side is in `end`'s switch): the reason remembered for a late
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
};

/** Counters for the summary line logged when the session ends. */
interface SessionStats {
  fromClient: number;
  toClient: number;
  resumes: number;
  peakQueue: number;
}

const BIND_ID_PREFIX = 'smacks-proxy-bind-';

/**
 * One client stream and its upstream stream to the legacy server. Relays SASL and
 * binding unchanged, forwards every other element as its original bytes, and does XEP-0198 itself.
 */
export class Session {
  readonly sid: string;
  private state: State;
  private link: ClientLink | undefined;
  private log: Logger;
  private domain: string | undefined;
  private readonly startedMs: number;
  private readonly stats: SessionStats = { fromClient: 0, toClient: 0, resumes: 0, peakQueue: 0 };
  private readonly deps: SessionDeps;
  private ackCheckScheduled = false;
  /** Backpressure and protocol waits: when reading from the client or the legacy server pauses. */
  private readonly flow = new FlowControl(
    () => this.link,
    () => this.upstreamOf(this.state),
  );
  /** XML is logged only at trace (README, Security); checked once, not per element. */
  private readonly traceXml: boolean;

  constructor(deps: SessionDeps, start: SessionStart) {
    this.deps = deps;
    this.sid = start.sid;
    this.log = start.log;
    this.link = start.link;
    this.traceXml = start.log.isLevelEnabled('trace');
    this.startedMs = deps.now();
    this.state = { name: 'opening', authTimer: this.armAuthTimer() };
    start.link.setHandler(this.clientHandler(start.link));
    deps.registry.add(this, start.link.address);
    this.log.debug('session opened');
  }

  /** The current state's name, for tests and for the registry's shutdown logic. */
  get stateName(): StateName {
    return this.state.name;
  }

  /** The bare JID once bound (logs, identity check on resumption). */
  get bareJid(): string | undefined {
    const s = this.state;
    return s.name === 'active' || s.name === 'hibernating' ? bare(s.jid) : undefined;
  }

  // --- transitions ---

  private transition(next: State): void {
    const from = this.state;
    if (!TRANSITIONS[from.name].includes(next.name)) {
      throw new InvariantError(`session transition ${from.name} → ${next.name} is not allowed`);
    }
    clearStateTimers(from, next);
    this.state = next;
    if (from.name !== next.name) this.log.debug({ from: from.name, to: next.name }, 'session state');
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
    const current = (): boolean => this.link === link;
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
      this.openUpstream(header, s.authTimer);
      return;
    }
    if (s.name === 'authenticated' || s.name === 'resuming') {
      // RFC 6120 §6.4.6: after SASL success the client restarts the stream; so does the hop.
      s.upstream.sendHeader(headerAttrs(header));
    }
  }

  private openUpstream(header: StreamHeader, authTimer: NodeJS.Timeout): void {
    const link = this.requireLink();
    const version = header.attrs.version;
    const to = header.attrs.to?.toLowerCase();
    if (version === undefined || !version.startsWith('1.')) {
      // RFC 6120 §4.7.5: the proxy speaks XMPP 1.0 only.
      this.fail(
        new StreamError(ErrorCode.UNSUPPORTED_VERSION, 'unsupported-version', `stream version '${version ?? '(none)'}' is not 1.x`),
      );
      return;
    }
    const target = to === undefined ? undefined : this.deps.upstreamFor(to);
    if (to === undefined || target === undefined) {
      this.fail(new StreamError(ErrorCode.HOST_UNKNOWN, 'host-unknown', `stream to '${to ?? ''}' names no domain this proxy serves`));
      return;
    }
    this.domain = to;
    this.transition({ name: 'connecting', authTimer, held: [] });
    this.flow.waitForServer();
    link.setLimits({ maxStanzaBytes: this.deps.settings.maxStanzaBytesPreAuth });
    this.log.debug({ domain: to, upstream: `${target.host}:${target.port}` }, 'connecting upstream');
    this.deps.connectUpstream(target, this.log).then(
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
    this.transition({ name: 'authenticating', authTimer: s.authTimer, upstream, sasl: new SaslIdentity(this.domain ?? '') });
    upstream.sendHeader(headerAttrs(header));
    for (const element of s.held) this.onClientElement(element);
    this.flow.serverAnswered();
  }

  private onClientElement(element: ScannedElement): void {
    if (this.traceXml) this.log.trace({ fromClient: sanitizeForLog(element) }, 'element');
    const s = this.state;
    switch (s.name) {
      case 'connecting':
      case 'resuming':
        s.held.push(element);
        return;
      case 'active':
        if (isStanza(element)) {
          this.stats.fromClient++;
          this.toUpstream(s.upstream, element.bytes);
          // README, What it does: a client stanza counts as handled once written to the upstream socket.
          s.sm?.inbound.handled();
          return;
        }
        if (isSmNamespace(element.ns)) {
          this.onSmNonza(element, element.ns);
          return;
        }
        this.forwardOther(s.upstream, element);
        return;
      case 'authenticating':
      case 'authenticated':
        if (s.name === 'authenticated' && s.pendingBind !== undefined) {
          s.pendingBind.held.push(element);
          return;
        }
        if (isSmNamespace(element.ns)) {
          this.onSmNonza(element, element.ns);
          return;
        }
        if (s.name === 'authenticating') {
          const foreign = refuseForeignAuthzid(element, this.domain ?? '');
          if (foreign !== undefined) {
            this.log.info({ code: ErrorCode.SASL_FOREIGN_AUTHZID }, 'SASL authorization identity of another account refused');
            this.sendToClient(foreign);
            return;
          }
          s.sasl.fromClient(element);
          const refusal = refuseLegacyAuth(element);
          if (refusal !== undefined) {
            this.log.info('XEP-0078 non-SASL authentication refused');
            this.sendToClient(refusal);
            return;
          }
        }
        if (s.name === 'authenticated') {
          if (s.boundJid !== undefined && this.answerRebind(element, s.boundJid)) return;
          const bindId = bindRequestId(element);
          if (bindId !== undefined) {
            this.transition({ ...s, pendingBind: { id: bindId, held: [] } });
            this.flow.waitForServer();
          }
        }
        this.forwardOther(s.upstream, element);
        return;
      case 'opening':
        // The scanner only delivers elements after a stream header.
        throw new InvariantError('client element before the stream header');
      case 'hibernating':
      case 'closing':
      case 'closed':
        return;
    }
  }

  /** Elements other than stanzas and SM nonzas: refused if they would break the proxy, else relayed. */
  private forwardOther(upstream: UpstreamStream, element: ScannedElement): void {
    if (element.localName === 'starttls' && element.ns === NS.tls) {
      // TLS already ends at the proxy: RFC 6120 §5.4.2.2 failure case, then the stream closes.
      this.sendToClient(`<failure xmlns='${NS.tls}'/>`);
      this.closeEverything('client asked for STARTTLS twice');
      return;
    }
    if (element.localName === 'compress' && element.ns === NS.compress) {
      // XEP-0138 §6: the proxy must see plain XML; the feature is never offered.
      this.sendToClient(`<failure xmlns='${NS.compress}'><unsupported-method/></failure>`);
      return;
    }
    this.toUpstream(upstream, element.bytes);
  }

  private onClientStreamClose(): void {
    const s = this.state;
    if (s.name === 'active' || s.name === 'authenticating' || s.name === 'authenticated' || s.name === 'resuming') {
      // XEP-0198 (since v1.5.2) recommends an `<a/>` just before a graceful close: the peer trims its queue.
      const sm = s.name === 'active' ? s.sm : undefined;
      if (s.name === 'active' && sm !== undefined) {
        this.sendToClient(sm.ackElement());
        // Stanzas the client did not ack before closing are answered like at expiry (XEP-0198 §5).
        this.disposeUnacked(sm, { upstream: s.upstream, jid: s.jid });
      }
      this.endSm(sm, 'closed');
      s.upstream.close();
      this.transition({ name: 'closing', upstream: s.upstream });
      return;
    }
    this.closeEverything('client closed the stream');
  }

  private onClientEnd(end: LinkEnd): void {
    this.link = undefined;
    this.flow.clientGone();
    const s = this.state;
    if (s.name === 'active' && end.kind !== 'clean' && s.sm !== undefined && s.sm.resumable) {
      this.hibernate(s, end.kind === 'lost' ? end.reason : `link closed: ${end.reason}`);
      return;
    }
    // Closing: the legacy server's close (or the upstream close timer) finishes the session.
    if (s.name === 'closing' || s.name === 'closed') return;
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
      else this.onClientAck(s, parseElement(element.bytes));
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
      budget: this.deps.budget,
    });
    if (!result.ok) {
      this.refuse(ns, smFailure('enable-invalid', result.text));
      return;
    }
    const sm = result.sm;
    this.transition({ ...s, sm });
    if (sm.resumable) this.deps.registry.registerResumable(sm.id, this);
    this.sendToClient(sm.enabledElement());
    this.log.info(
      { smId: sm.resumable ? shortId(sm.id) : undefined, resumable: sm.resumable, maxSeconds: sm.hibernationMs / 1000 },
      'stream management enabled',
    );
    this.armRequestTimer();
  }

  private onClientAck(s: Extract<State, { name: 'active' }>, a: Element): void {
    const sm = s.sm;
    if (sm === undefined) return;
    const h = parseH(a.attrs.h as string | undefined);
    if (h === undefined) {
      this.fail(
        new StreamError(
          ErrorCode.SM_INVALID_H,
          'invalid-xml',
          `<a/> without a valid h (got '${String(a.attrs.h ?? '')}'); XEP-0198 §4: h is REQUIRED, an xs:unsignedInt`,
        ),
      );
      return;
    }
    const result = sm.queue.ack(h);
    switch (result.kind) {
      case 'backwards':
      case 'acked':
        // A backwards h is tolerated (ejabberd, Openfire): a late duplicate ack must not kill the
        // session. It still answers the outstanding <r/> (AckPolicy: any <a/> shows the client is
        // alive), or that request would block every later one until maxAckDelay declared the link dead.
        if (result.kind === 'backwards')
          this.log.info({ h: result.h, previous: result.previous }, 'client acked less than before; ignored');
        sm.policy.answered();
        this.scheduleAckCheck();
        return;
      case 'too-high':
        // XEP-0198 §6: on an h above what was sent the receiver SHOULD send `undefined-condition` with <handled-count-too-high/>.
        this.fail(
          new StreamError(
            ErrorCode.SM_HANDLED_COUNT_TOO_HIGH,
            'undefined-condition',
            `client acked h=${result.h} but only ${result.sendCount} stanzas were sent`,
            {
              appCondition: {
                name: 'handled-count-too-high',
                xmlns: NS.sm3,
                attrs: { h: String(result.h), 'send-count': String(result.sendCount) },
              },
            },
          ),
        );
        return;
    }
  }

  /** The `<r/>` policy (AckPolicy), checked once per write burst and on each ack. */
  private scheduleAckCheck(): void {
    if (this.ackCheckScheduled) return;
    this.ackCheckScheduled = true;
    process.nextTick(() => {
      this.ackCheckScheduled = false;
      this.guard(() => this.checkAckRequest(false));
    });
  }

  private checkAckRequest(periodic: boolean): void {
    const s = this.state;
    if (s.name !== 'active' || s.sm === undefined) return;
    const sm = s.sm;
    const due = periodic
      ? sm.queue.length > 0 && sm.policy.outstandingSinceMs === undefined
      : sm.policy.shouldRequest({ sent: sm.queue.sent, acked: sm.queue.acked });
    if (due) this.requestAck();
  }

  private requestAck(): void {
    const s = this.state;
    if (s.name !== 'active' || s.sm === undefined) return;
    s.sm.policy.requested(s.sm.queue.sent, this.deps.now());
    this.sendToClient(s.sm.requestElement());
    if (s.ackTimer === undefined) this.transition({ ...s, ackTimer: this.armAckTimer() });
  }

  private armAckTimer(delayMs = this.deps.settings.maxAckDelayMs): NodeJS.Timeout {
    const timer = setTimeout(() => this.guard(() => this.onAckTimer(timer)), Math.max(0, delayMs));
    timer.unref();
    return timer;
  }

  private onAckTimer(timer: NodeJS.Timeout): void {
    const s = this.state;
    if (s.name !== 'active' || s.ackTimer !== timer || s.sm === undefined) return;
    const sm = s.sm;
    const since = sm.policy.outstandingSinceMs;
    if (since === undefined) {
      this.transition({ ...s, ackTimer: undefined });
      return;
    }
    if (!sm.policy.isOverdue(this.deps.now(), this.deps.settings.maxAckDelayMs)) {
      // A newer request is outstanding: wait for what is left of its delay, not a full one.
      this.transition({ ...s, ackTimer: this.armAckTimer(since + this.deps.settings.maxAckDelayMs - this.deps.now()) });
      return;
    }
    const waitedMs = this.deps.now() - since;
    this.deps.events.notify(this.log, 'ackDelayed', { sid: this.sid, jid: s.jid, unacked: sm.queue.length, waitedMs });
    this.log.info({ unacked: sm.queue.length, waitedMs }, 'ack delayed; treating the client connection as dead');
    this.transition({ ...s, ackTimer: undefined });
    // Like mod_smacks's "smacks-ack-delayed", then hibernation: the link is dropped as a dead connection.
    this.link?.destroy('ack delayed');
  }

  private armRequestTimer(): void {
    const s = this.state;
    if (s.name !== 'active' || s.requestTimer !== undefined) return;
    const timer = setInterval(() => {
      const now = this.state;
      if (now.name !== 'active' || now.requestTimer !== timer) return;
      this.guard(() => this.checkAckRequest(true));
    }, this.deps.settings.ackRequestIntervalMs);
    timer.unref();
    this.transition({ ...s, requestTimer: timer });
  }

  // --- resumption (XEP-0198 §5; README, Resumption and the legacy server) ---

  private onResume(resume: Element, ns: SmNamespace): void {
    const s = this.state;
    if (s.name !== 'authenticated') {
      this.refuse(ns, smFailure(s.name === 'authenticating' ? 'resume-before-auth' : 'resume-after-bind'));
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
      if (!early.ok) this.refuse(ns, early.failure, previd);
      return;
    }
    const bindId = BIND_ID_PREFIX + this.sid;
    // The SASL exchange named exactly the hibernated session's account: confirmed with no second
    // resource, which a server allowing one resource per account would trade for the session. A
    // stream that bound a resource already has the server's own answer, which comes first.
    const confirmedBySasl =
      s.boundJid === undefined && s.saslJid !== undefined && candidate.kind === 'live' && s.saslJid === candidate.bareJid;
    const resuming: Extract<State, { name: 'resuming' }> = {
      name: 'resuming',
      authTimer: s.authTimer,
      upstream: s.upstream,
      request: { ns, previd, h, bindId },
      held: [],
      saslJid: s.saslJid,
      awaitingFeatures: confirmedBySasl && !s.featuresRelayed,
    };
    this.transition(resuming);
    this.flow.waitForServer();
    if (confirmedBySasl) {
      // XEP-0198 §5: the client resumes "where it would otherwise bind", so `<resumed/>` belongs
      // after the restarted stream's header and features; a pipelined `<resume/>` waits for them.
      if (!resuming.awaitingFeatures) this.onIdentityKnown(resuming, s.saslJid, s.boundJid);
      return;
    }
    // The identity is the legacy server's own answer. Bind a throwaway resource on this
    // (temporary) upstream stream and compare bare JIDs; a stream that already bound one (an
    // earlier resume attempt failed) uses that answer again.
    if (s.boundJid !== undefined) {
      this.onIdentityKnown(resuming, bare(s.boundJid), s.boundJid);
      return;
    }
    s.upstream.send(`<iq type='set' id='${bindId}'><bind xmlns='${NS.bind}'/></iq>`);
  }

  /**
   * The resuming client's account is known: `bareJid` (undefined when the server refused the
   * identity bind). `boundJid` is what this stream has bound upstream, if anything: a later bind
   * from the client is answered with it.
   */
  private onIdentityKnown(s: Extract<State, { name: 'resuming' }>, bareJid: string | undefined, boundJid: string | undefined): void {
    const { request } = s;
    const link = this.requireLink();
    // Looked up again: the session may have ended, or its client acked, during the identity check.
    const decision = decideResume(this.deps.registry.lookup(request.previd, request.h, this.deps.now()), bareJid);
    if (!decision.ok) {
      this.refuse(request.ns, decision.failure, request.previd);
      this.transition({
        name: 'authenticated',
        authTimer: s.authTimer,
        upstream: s.upstream,
        boundJid,
        saslJid: s.saslJid,
        featuresRelayed: true,
        pendingBind: undefined,
      });
      this.flow.serverAnswered();
      for (const element of s.held) this.onClientElement(element);
      return;
    }
    const deliverHeld = this.deps.registry.resume(request.previd, { link, ns: request.ns, h: request.h });
    // The client now belongs to the resumed session: the temporary stream closes cleanly, and
    // what the client pipelined after <resume/> goes to the resumed session, in order.
    this.flow.clientHandedOver();
    this.link = undefined;
    s.upstream.close();
    this.log.info({ previd: shortId(request.previd) }, 'client resumed another session; temporary stream closed');
    this.transition({ name: 'closed' });
    this.deps.registry.delete(this);
    deliverHeld(s.held);
  }

  /** A hibernating session as plain data (hibernated-snapshot.ts writes it out); undefined in any other state. */
  snapshot(): HibernatedSession | undefined {
    const s = this.state;
    if (s.name !== 'hibernating' || this.domain === undefined) return undefined;
    return { domain: this.domain, jid: s.jid, sinceMs: s.sinceMs, expiresAtMs: s.sinceMs + s.sm.hibernationMs, sm: s.sm.snapshot() };
  }

  /** What a `<resume/>` of this session with `h` would find (the registry asks, for decideResume). */
  resumeCandidate(h: number): ResumeCandidate {
    const s = this.state;
    if (s.name !== 'active' && s.name !== 'hibernating')
      return { kind: 'live', bareJid: undefined, resumable: false, h: 0, ack: { kind: 'in-range' } };
    const sm = s.sm;
    if (sm === undefined) return { kind: 'live', bareJid: bare(s.jid), resumable: false, h: 0, ack: { kind: 'in-range' } };
    return { kind: 'live', bareJid: bare(s.jid), resumable: sm.resumable, h: sm.inbound.h, ack: sm.queue.checkAck(h) };
  }

  /**
   * Called by the registry once decideResume accepted a resume of this (hibernated or still
   * attached) session: takes the link, `<resumed/>`, replay of unacked stanzas, normal flow.
   */
  takeOver({ link, ns, h }: ResumeHandOver): void {
    const s = this.state;
    if ((s.name !== 'active' && s.name !== 'hibernating') || s.sm === undefined)
      throw new InvariantError(`resume accepted for a session in state ${s.name}`);
    const sm = s.sm;
    const resumed = sm.queue.resume(h);
    if (resumed.ack.kind !== 'acked')
      throw new InvariantError(`resume accepted with h=${h}, which the queue refuses (${resumed.ack.kind})`);
    if (s.name === 'active') {
      // XEP-0198 §5: "the server SHOULD send a <conflict/> stream error on the old stream".
      const old = this.link;
      this.link = undefined;
      old?.fail(new StreamError(ErrorCode.SM_TAKEOVER, 'conflict', 'the session was resumed from another connection'));
      this.log.info('session taken over by a newer connection');
    }
    const wasHibernating = s.name === 'hibernating';
    const hibernatedMs = wasHibernating ? this.deps.now() - s.sinceMs : 0;
    this.flow.clientGone();
    this.link = link;
    link.setHandler(this.clientHandler(link));
    this.stats.resumes++;
    sm.policy.answered();
    this.transition({ name: 'active', upstream: s.upstream, jid: s.jid, sm, ackTimer: undefined, requestTimer: undefined });
    // XEP-0198 §5: <resumed/> first, then every unacked stanza in its original order.
    this.sendToClient(sm.resumedElement(ns));
    const from = bare(s.jid);
    for (const entry of resumed.replay) {
      // XEP-0203: replayed messages carry their original time.
      this.sendToClient(isMessage(entry.bytes) ? addDelay(entry.bytes, entry.sentAtMs, from) : entry.bytes);
    }
    this.log.info({ replayed: resumed.replay.length, hibernatedMs, h }, 'session resumed');
    // A takeover of a still-attached session ends no hibernation: events stay paired for metrics.
    if (wasHibernating)
      this.deps.events.notify(this.log, 'hibernationEnded', { sid: this.sid, jid: s.jid, smId: sm.id, reason: 'resumed', hibernatedMs });
    this.armRequestTimer();
    // Ask at once whether the replay arrived, so the queue trims without waiting for the interval.
    if (resumed.replay.length > 0) this.requestAck();
  }

  /** Elements the client pipelined after `<resume/>` (Monal), delivered after the replay. */
  acceptHeld(held: readonly ScannedElement[]): void {
    for (const element of held) this.guard(() => this.onClientElement(element));
  }

  /** After a failed resume bound a resource, the client's own bind is answered with it (XEP-0198 §5: the client may bind after a failed resume). */
  private answerRebind(element: ScannedElement, jid: string): boolean {
    const bindId = bindRequestId(element);
    if (bindId === undefined) return false;
    const id = escapeXml(bindId);
    this.sendToClient(`<iq type='result' id='${id}'><bind xmlns='${NS.bind}'><jid>${escapeXml(jid)}</jid></bind></iq>`);
    this.becomeActive(jid);
    return true;
  }

  // --- hibernation and expiry ---

  private hibernate(s: Extract<State, { name: 'active' }>, reason: string): void {
    const sm = s.sm;
    if (sm === undefined) throw new InvariantError('hibernate without stream management');
    const timeoutMs = sm.hibernationMs;
    const expiryTimer = setTimeout(() => this.guard(() => this.onExpiryTimer(expiryTimer)), timeoutMs);
    expiryTimer.unref();
    sm.policy.answered();
    sm.queue.compact();
    this.transition({ name: 'hibernating', upstream: s.upstream, jid: s.jid, sm, sinceMs: this.deps.now(), expiryTimer });
    this.log.info({ reason, queued: sm.queue.length, timeoutMs }, 'hibernating');
    this.deps.events.notify(this.log, 'hibernationStarted', { sid: this.sid, jid: s.jid, smId: sm.id, queued: sm.queue.length, timeoutMs });
  }

  private onExpiryTimer(timer: NodeJS.Timeout): void {
    const s = this.state;
    if (s.name !== 'hibernating' || s.expiryTimer !== timer) return;
    this.log.info({ queued: s.sm.queue.length }, 'hibernation expired');
    this.end({ kind: 'expired' });
  }

  /**
   * Unacked stanzas are answered on the user's behalf (or dropped, per `expiryPolicy`) through the
   * user's (full `jid`) upstream stream. `via` is undefined when the legacy server's stream is gone
   * or going: nothing written to it would be processed, so the stanzas are lost and the senders
   * get no error; that is a warning.
   */
  private disposeUnacked(sm: StreamManagement, via: { upstream: UpstreamStream; jid: string } | undefined, extra?: Buffer): void {
    const entries = sm.queue.drain().map((entry) => entry.bytes);
    if (extra !== undefined) entries.push(extra);
    if (entries.length === 0) return;
    const usable = via !== undefined && !via.upstream.ended ? via : undefined;
    const disposal = unackedDisposal(entries, this.deps.settings.expiryPolicy, usable?.jid);
    switch (disposal.kind) {
      case 'dropped-by-policy':
        this.log.info({ dropped: disposal.count }, 'unacked stanzas dropped (expiryPolicy drop)');
        return;
      case 'lost':
        this.log.warn(
          { dropped: disposal.count },
          'unacked stanzas dropped unanswered: the legacy server ended the stream they would be bounced on',
        );
        return;
      case 'answered':
        for (const bounce of disposal.bounces) usable?.upstream.send(bounce);
        this.log.info({ unacked: disposal.count, bounced: disposal.bounces.length }, 'unacked stanzas answered to their senders');
    }
  }

  private endSm(sm: StreamManagement | undefined, reason: EndedReason): void {
    if (sm === undefined || !sm.resumable) return;
    this.deps.registry.endResumable(sm.id, { h: sm.inbound.h, bareJid: this.bareJid ?? '', reason, endedAtMs: this.deps.now() });
  }

  // --- upstream side ---

  private upstreamHandler(upstream: UpstreamStream): UpstreamHandler {
    return {
      onStreamOpen: (header) => this.guard(() => this.onUpstreamStreamOpen(upstream, header)),
      onElement: (element) => this.guard(() => this.onUpstreamElement(upstream, element)),
      onStreamClose: () => this.guard(() => this.onUpstreamStreamClose(upstream)),
      onFailure: (error) =>
        this.guard(() => {
          if (this.upstreamOf(this.state) === upstream) this.upstreamLost(error);
        }),
      onEnd: (clean) =>
        this.guard(() => {
          if (this.upstreamOf(this.state) !== upstream) return;
          if (this.state.name === 'closing') {
            this.end({ kind: 'closed' });
            return;
          }
          this.upstreamLost(
            new UpstreamError(ErrorCode.UPSTREAM_CLOSED, clean ? 'legacy server closed the stream' : 'legacy server connection lost', {
              text: 'legacy server connection lost',
            }),
          );
        }),
      onDrain: () => {
        if (this.upstreamOf(this.state) === upstream) this.flow.upstreamDrained();
      },
    };
  }

  private upstreamOf(s: State): UpstreamStream | undefined {
    return 'upstream' in s ? s.upstream : undefined;
  }

  private onUpstreamStreamOpen(upstream: UpstreamStream, header: StreamHeader): void {
    if (this.upstreamOf(this.state) !== upstream) return;
    this.link?.sendHeader({
      from: header.attrs.from ?? this.domain,
      id: header.attrs.id,
      version: header.attrs.version ?? '1.0',
      lang: header.attrs['xml:lang'],
    });
  }

  private onUpstreamElement(upstream: UpstreamStream, element: ScannedElement): void {
    if (this.traceXml) this.log.trace({ fromUpstream: sanitizeForLog(element) }, 'element');
    const s = this.state;
    if (this.upstreamOf(s) !== upstream) return;
    if (s.name === 'active' && isStanza(element)) {
      this.stanzaToClient(s, element.bytes);
      return;
    }
    if (s.name === 'hibernating') {
      this.onUpstreamWhileHibernating(s, element);
      return;
    }
    if (element.localName === 'error' && element.ns === NS.stream) {
      this.log.info({ code: ErrorCode.UPSTREAM_STREAM_ERROR }, 'legacy server sent a stream error; relayed');
      this.end({ kind: 'upstream-error', element });
      return;
    }
    if (element.localName === 'features' && element.ns === NS.stream) {
      this.relayFeatures(s, element);
      return;
    }
    if (element.localName === 'success' && element.ns === NS.sasl && s.name === 'authenticating') {
      this.sendToClient(element.bytes);
      this.onSaslSuccess(s);
      return;
    }
    if (element.localName === 'failure' && element.ns === NS.sasl && s.name === 'authenticating') s.sasl.onFailure();
    if (element.localName === 'iq' && (s.name === 'authenticated' || s.name === 'resuming')) {
      if (this.onIqBeforeBound(s, element)) return;
    }
    this.sendToClient(element.bytes);
  }

  private onSaslSuccess(s: Extract<State, { name: 'authenticating' }>): void {
    // RFC 6120 §6.4.6: both streams restart; SASL payloads are never logged.
    this.requireLink().expectRestart();
    s.upstream.expectRestart();
    this.requireLink().setLimits({ maxStanzaBytes: this.deps.settings.maxStanzaBytes });
    this.transition({
      name: 'authenticated',
      authTimer: s.authTimer,
      upstream: s.upstream,
      boundJid: undefined,
      saslJid: s.sasl.bareJid,
      featuresRelayed: false,
      pendingBind: undefined,
    });
    this.log.debug('authenticated');
  }

  /**
   * Learns the full JID from the answer to the client's own bind request (matched by id, and
   * from the server itself: no `from`), or consumes the answer to a throwaway identity bind.
   */
  private onIqBeforeBound(s: Extract<State, { name: 'authenticated' | 'resuming' }>, element: ScannedElement): boolean {
    const expectedId = s.name === 'resuming' ? s.request.bindId : s.pendingBind?.id;
    if (expectedId === undefined) return false;
    const iq = parseElement(element.bytes);
    if (iq.attrs.id !== expectedId || iq.attrs.from !== undefined) return false;
    const jid = iq.attrs.type === 'result' ? (iq.getChild('bind', NS.bind)?.getChildText('jid') ?? undefined) : undefined;
    if (s.name === 'resuming') {
      this.onIdentityKnown(s, jid === undefined ? undefined : bare(jid), jid);
      return true;
    }
    this.sendToClient(element.bytes);
    const held = s.pendingBind?.held ?? [];
    if (jid !== undefined) this.becomeActive(jid);
    // A refused bind leaves the stream authenticated; the client may try again.
    else this.transition({ ...s, pendingBind: undefined });
    this.flow.serverAnswered();
    for (const pipelined of held) this.onClientElement(pipelined);
    return true;
  }

  private becomeActive(jid: string): void {
    const s = this.state;
    if (s.name !== 'authenticated') return;
    this.transition({ name: 'active', upstream: s.upstream, jid, sm: undefined, ackTimer: undefined, requestTimer: undefined });
    s.upstream.startKeepalive(this.deps.settings.upstreamKeepaliveMs);
    this.log = this.log.child({ jid });
    this.log.info('bound');
  }

  private relayFeatures(s: State, element: ScannedElement): void {
    const phase = s.name === 'authenticating' ? 'pre-auth' : 'post-auth';
    const { features, findings } = rewriteFeatures(parseElement(element.bytes), phase);
    if (findings.channelBindingMechanisms.length > 0 || findings.channelBindingTypes) {
      this.deps.reportFindings(this.domain ?? '', findings);
    }
    this.sendToClient(features.toString());
    if (s.name === 'authenticated') this.transition({ ...s, featuresRelayed: true });
    else if (s.name === 'resuming' && s.awaitingFeatures) this.onIdentityKnown(s, s.saslJid, undefined);
  }

  private stanzaToClient(s: Extract<State, { name: 'active' }>, bytes: Buffer): void {
    this.stats.toClient++;
    const sm = s.sm;
    if (sm !== undefined) {
      const pushed = sm.queue.push(bytes, this.deps.now());
      if (!pushed.ok) {
        this.queueOverflow(sm, bytes, `${pushed.reason} limit ${pushed.limit}`);
        return;
      }
      if (sm.queue.length > this.stats.peakQueue) this.stats.peakQueue = sm.queue.length;
      this.scheduleAckCheck();
    }
    this.sendToClient(bytes);
  }

  private onUpstreamWhileHibernating(s: Extract<State, { name: 'hibernating' }>, element: ScannedElement): void {
    if (element.localName === 'error' && element.ns === NS.stream) {
      this.log.info('legacy server ended the stream while hibernating');
      this.end({ kind: 'upstream-error', element });
      return;
    }
    if (!isStanza(element)) return;
    const pong = pingAnswer(element);
    if (pong !== undefined) {
      s.upstream.send(pong);
      return;
    }
    const pushed = s.sm.queue.push(element.bytes, this.deps.now());
    if (!pushed.ok) {
      this.queueOverflow(s.sm, element.bytes, `${pushed.reason} limit ${pushed.limit}`);
      return;
    }
    this.stats.toClient++;
    if (s.sm.queue.length > this.stats.peakQueue) this.stats.peakQueue = s.sm.queue.length;
    this.log.debug({ queued: s.sm.queue.length, kind: element.localName }, 'stanza queued while hibernating');
    this.deps.events.notify(this.log, 'stanzaQueuedWhileHibernating', {
      sid: this.sid,
      jid: s.jid,
      smId: s.sm.id,
      queued: s.sm.queue.length,
      kind: element.localName,
    });
  }

  /** The queue is full: the session stops being resumable and the client is told (`resource-constraint`, README, Errors). */
  private queueOverflow(sm: StreamManagement, overflowing: Buffer, why: string): void {
    this.log.warn({ code: ErrorCode.SM_QUEUE_OVERFLOW, why, queued: sm.queue.length }, 'unacked queue overflow; session ends');
    this.end({
      kind: 'queue-overflow',
      overflowing,
      error: new StreamError(ErrorCode.SM_QUEUE_OVERFLOW, 'resource-constraint', `too many unacknowledged stanzas (${why})`),
    });
  }

  private onUpstreamStreamClose(upstream: UpstreamStream): void {
    const s = this.state;
    if (this.upstreamOf(s) !== upstream) return;
    if (s.name === 'closing') {
      this.end({ kind: 'closed' });
      return;
    }
    // The legacy server ended the user's stream: the session ends, and so does the client's.
    this.upstreamLost(
      new UpstreamError(ErrorCode.UPSTREAM_CLOSED, 'legacy server closed the stream', { text: 'legacy server closed the stream' }),
    );
  }

  /** The upstream is gone: the session ends; a later resume fails fast with the reason. */
  private upstreamLost(error: UpstreamError): void {
    if (this.state.name === 'closed') return;
    this.log.info({ code: error.code, err: error.message }, 'upstream lost');
    this.end({ kind: 'upstream-lost', error });
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
        : s.name === 'opening' || s.name === 'connecting' || s.name === 'authenticating'
          ? 'limits.maxStanzaBytesPreAuth'
          : 'limits.maxStanzaBytes';
    this.log.info({ code: error.code, condition: error.condition, err: error.message, limitKey }, 'stream error sent to client');
    this.end({ kind: 'stream-error', error });
  }

  /** Proxy shutdown (RFC 6120 §4.9.3.20 `system-shutdown`). */
  shutdown(): void {
    const s = this.state;
    if (s.name === 'hibernating') {
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
   * lost, the SM-ID is remembered with its h, the client is told, the upstream is closed, and the
   * summary line is logged.
   */
  private end(cause: EndCause): void {
    const s = this.state;
    if (s.name === 'closed') return;
    const how = HOW_TO_END[cause.kind];
    const upstream = this.upstreamOf(s);
    const sm = s.name === 'active' || s.name === 'hibernating' ? s.sm : undefined;
    if (s.name === 'hibernating') {
      this.deps.events.notify(this.log, 'hibernationEnded', {
        sid: this.sid,
        jid: s.jid,
        smId: s.sm.id,
        reason: how.reason,
        hibernatedMs: this.deps.now() - s.sinceMs,
      });
    }
    if (sm !== undefined && (s.name === 'active' || s.name === 'hibernating')) {
      // RFC 6120 §4.9.1.1: a stream error is followed by the closing of the stream; bounces
      // written behind it would never be processed, so with the upstream failed they are lost.
      const via = how.unacked === 'answer' ? { upstream: s.upstream, jid: s.jid } : undefined;
      this.disposeUnacked(sm, via, cause.kind === 'queue-overflow' ? cause.overflowing : undefined);
    }
    this.endSm(sm, how.reason);
    const link = this.link;
    this.link = undefined;
    switch (cause.kind) {
      case 'stream-error':
      case 'upstream-lost':
      case 'queue-overflow':
        link?.fail(cause.error);
        break;
      case 'upstream-error':
        link?.send(toRfc6120StreamError(cause.element.bytes));
        link?.close();
        break;
      case 'closed':
        link?.close();
        break;
      case 'expired':
      case 'shutdown':
        // Hibernating: no client link.
        break;
    }
    if (how.upstream === 'destroy') upstream?.destroy();
    else upstream?.close();
    this.transition({ name: 'closed' });
    this.finish(how.reason);
  }

  private finish(reason: EndedReason): void {
    this.deps.registry.delete(this);
    const s = this.state;
    if (s.name !== 'closed') throw new InvariantError(`finish() in state ${s.name}`);
    this.log.info(
      {
        reason,
        stanzasFromClient: this.stats.fromClient,
        stanzasToClient: this.stats.toClient,
        resumes: this.stats.resumes,
        peakQueue: this.stats.peakQueue,
        durationMs: this.deps.now() - this.startedMs,
      },
      'session ended',
    );
  }

  // --- writing ---

  private sendToClient(data: Buffer | string): void {
    const link = this.link;
    if (link === undefined) return;
    this.flow.wroteToClient(link.send(data));
  }

  private toUpstream(upstream: UpstreamStream, bytes: Buffer): void {
    this.flow.wroteToUpstream(upstream.send(bytes));
  }

  private requireLink(): ClientLink {
    if (this.link === undefined) throw new InvariantError(`no client link in state ${this.state.name}`);
    return this.link;
  }
}

/** The id of a client `<iq type='set'><bind/></iq>` (RFC 6120 §7.6), or undefined for anything else. */
function bindRequestId(element: ScannedElement): string | undefined {
  if (element.localName !== 'iq' || !element.bytes.includes(NS.bind)) return undefined;
  const iq = parseElement(element.bytes);
  if (iq.attrs.type !== 'set' || iq.getChild('bind', NS.bind) === undefined) return undefined;
  return (iq.attrs.id as string | undefined) ?? '';
}

/** XEP-0198 §2: only iq, message and presence in the content namespace are counted. */
export function isStanza(element: ScannedElement): boolean {
  const name = element.localName;
  return (name === 'message' || name === 'presence' || name === 'iq') && element.ns === NS.client;
}

function bare(jid: string): string {
  const slash = jid.indexOf('/');
  return slash === -1 ? jid : jid.slice(0, slash);
}

function headerAttrs(header: StreamHeader): { to?: string; from?: string; version?: string; lang?: string } {
  return { to: header.attrs.to, from: header.attrs.from, version: header.attrs.version, lang: header.attrs['xml:lang'] };
}

/**
 * XEP-0198 `<failed/>` with a stanza error condition, a text saying why (users need it) and, like
 * an RFC 6120 §8.3.2 stanza error, an optional application-specific element after the text.
 */
/** SM-IDs are secrets of their session: logs carry only a prefix. */
function shortId(id: string): string {
  return id.slice(0, 6);
}

function clearStateTimers(from: State, to: State): void {
  const timers: (NodeJS.Timeout | undefined)[] = [];
  if ('authTimer' in from && !('authTimer' in to && to.authTimer === from.authTimer)) timers.push(from.authTimer);
  if (from.name === 'active') {
    if (to.name !== 'active' || to.ackTimer !== from.ackTimer) timers.push(from.ackTimer);
    if (to.name !== 'active' || to.requestTimer !== from.requestTimer) timers.push(from.requestTimer);
  }
  if (from.name === 'hibernating') timers.push(from.expiryTimer);
  for (const timer of timers) if (timer !== undefined) clearTimeout(timer);
}
