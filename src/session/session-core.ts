import type { Logger } from 'pino';
import { ErrorCode, InvariantError, StreamError, asProxyError } from '../errors.js';
import { shortId } from '../sm/enable-decision.js';
import { renderFailed, type SmFailure } from '../sm/failures.js';
import type { StreamManagement } from '../sm/stream-management.js';
import type { SmNamespace } from '../xml/namespaces.js';
import type { ClientLink, ClientLinkHandler } from '../transport/client-link.js';
import type { UpstreamHandler, UpstreamStream } from '../upstream/upstream-link.js';
import type { Element } from '../xml/element.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import { ClientDelivery } from './client-delivery.js';
import { ClientPresence } from './client-presence.js';
import { FlowControl } from './flow-control.js';
import type { Session } from './session.js';
import type { SessionDeps } from './session-deps.js';
import { endSession, failSession, type EndCause } from './session-end.js';
import { checkedTransition, isBound, linkOf, upstreamOf, type State } from './session-state.js';
import type { UpstreamProbe } from './upstream-probe.js';
import { bare } from '../xml/jid.js';

/** Counters for the summary line logged when the session ends. */
interface SessionStats {
  fromClient: number;
  toClient: number;
  resumes: number;
  peakQueue: number;
}

/**
 * What the state machine (session.ts) gives its parts: the handlers for a client link and an
 * upstream stream it takes on, and the way a client element is handled in the current state.
 */
interface SessionWiring {
  clientHandler(link: ClientLink): ClientLinkHandler;
  upstreamHandler(upstream: UpstreamStream): UpstreamHandler;
  /** Handles an element from the client as if it arrived now (held elements, in order). */
  fromClient(element: ScannedElement): void;
}

/** Who the session is: the session object itself (its ids), and its logger. */
interface SessionIdentity {
  readonly session: Session;
  readonly log: Logger;
  /** Whether the client's presence was out there (as an upgrade's previous process saw it). */
  readonly presenceShown: boolean;
}

/**
 * One session's state and what its parts share: the state machine (session.ts) and the parts it
 * hands work to (session-setup.ts, sm-requests.ts, resume-request.ts, client-return.ts,
 * hibernation.ts, session-handoff.ts, session-end.ts) read the state here and change it only
 * through {@link transition}. Stanzas and nonzas go to the client and the legacy server through
 * {@link toClient} and {@link toUpstream}, where flow control sees every write; stream headers,
 * closes and stream errors go to the links themselves.
 */
export class SessionCore {
  /** The session itself: what hooks see, and what the registry knows. */
  readonly session: Session;
  /** Set once by the session's constructor, then changed only by {@link transition}. */
  state!: State;
  /** The session's logger; a child naming the JID once bound. */
  log: Logger;
  /** The domain the client named, once the proxy serves it. */
  domainName: string | undefined;
  /** The legacy server's features after authentication, as it sent them (`serverOffers`). */
  serverFeatures: Element | undefined;
  /** While hibernating: the round trip a resume waits for, until its answer arrives. */
  probe: UpstreamProbe | undefined;
  /** The full JID of the stanzas this stream inherits for its bind (a replaced or stranded session's queue, kept stanzas). */
  inheritedFor: string | undefined;
  readonly startedMs: number;
  readonly stats: SessionStats = { fromClient: 0, toClient: 0, resumes: 0, peakQueue: 0 };
  /** XML is logged only at trace (README, Security); checked once, not per element. */
  readonly traceXml: boolean;
  /** Backpressure and protocol waits: when reading from the client or the legacy server pauses. */
  readonly flow = new FlowControl(
    () => linkOf(this.state),
    () => upstreamOf(this.state),
  );
  /** Whether the client showed its presence, for the unavailable presence sent when the session ends. */
  readonly presence: ClientPresence;
  /** The way to the attached client: hooks, what they hold back, the unacked queue and its backlog (client-delivery.ts). */
  readonly delivery: ClientDelivery;

  constructor(
    readonly deps: SessionDeps,
    readonly wiring: SessionWiring,
    identity: SessionIdentity,
  ) {
    this.session = identity.session;
    this.log = identity.log;
    this.traceXml = identity.log.isLevelEnabled('trace');
    this.startedMs = deps.now();
    this.presence = new ClientPresence(identity.presenceShown);
    this.delivery = new ClientDelivery({
      hooks: deps.hooks,
      handle: identity.session,
      limits: deps.settings,
      flow: this.flow,
      now: deps.now,
      log: () => this.log,
      send: (bytes) => this.toClient(bytes),
      counted: (bytes, queued) => this.countedToClient(bytes, queued),
      overflow: (sm, overflowing, why) => this.queueOverflow(sm, overflowing, why),
      whenRoom: (need, retry) => deps.queueShares.whenRoom(identity.session, need, retry),
      roomFreed: () => this.guard(() => this.roomFreed()),
    });
  }

  get sid(): string {
    return this.session.sid;
  }

  get addressKey(): string {
    return this.session.addressKey;
  }

  /** The bare JID once bound. */
  get bareJid(): string | undefined {
    const s = this.state;
    return isBound(s) ? bare(s.jid) : undefined;
  }

  transition(next: State): void {
    const from = this.state;
    checkedTransition(from, next);
    this.state = next;
    if (from.name !== next.name) this.log.debug({ from: from.name, to: next.name }, 'session state');
    if (from.name === 'hibernating' && next.name !== 'hibernating') {
      this.probe?.settled();
      this.probe = undefined;
    }
  }

  /** Every event handler runs inside this: a bug in one session ends that session only. */
  guard(action: () => void): void {
    try {
      action();
    } catch (err) {
      const error = asProxyError(err);
      this.log.error({ code: error.code, err: error.message, stack: err instanceof Error ? err.stack : undefined }, 'session failed');
      this.fail(error instanceof StreamError ? error : new InvariantError(error.message));
    }
  }

  /** Ends the session with a stream error to the client (session-end.ts). */
  fail(error: StreamError): void {
    failSession(this, error);
  }

  /** The one way a session ends (session-end.ts). */
  end(cause: EndCause): void {
    endSession(this, cause);
  }

  toClient(data: Buffer | string): void {
    const link = linkOf(this.state);
    if (link === undefined) return;
    this.flow.wroteToClient(link.send(data));
  }

  toUpstream(upstream: UpstreamStream, data: Buffer | string): void {
    this.flow.wroteToUpstream(upstream.send(data));
  }

  requireLink(): ClientLink {
    const link = linkOf(this.state);
    if (link === undefined) throw new InvariantError(`no client link in state ${this.state.name}`);
    return link;
  }

  /** Answers a stream-management request with `<failed/>` (XEP-0198); the log line carries the failure's key. */
  refuse(ns: SmNamespace, failure: SmFailure, previd?: string): void {
    this.log.info(
      { failed: failure.key, previd: previd === undefined ? undefined : shortId(previd) },
      previd === undefined ? 'stream management request refused' : 'resume failed',
    );
    this.toClient(renderFailed(ns, failure));
    this.deps.events.notify(this.log, 'smFailed', { sid: this.sid, failed: failure.key });
  }

  /**
   * Stanzas handed to this stream for a bind that did not take them (the stream ended first, the
   * server refused the bind or bound another account): the next session that binds their full JID
   * gets them (kept-stanzas.ts).
   */
  inheritedLost(inherited: readonly Buffer[]): void {
    const jid = this.inheritedFor;
    this.deps.lingering.kept.keep(jid ?? '', inherited, jid === undefined ? 0 : this.deps.settings.strandedMs, this.log);
  }

  /** The unacked queue is full: the session stops being resumable and the client is told (`resource-constraint`, README, Errors). */
  queueOverflow(sm: StreamManagement, overflowing: readonly Buffer[], why: string): void {
    this.log.warn({ code: ErrorCode.SM_QUEUE_OVERFLOW, why, queued: sm.queue.length }, 'unacked queue overflow; session ends');
    this.end({
      kind: 'queue-overflow',
      overflowing,
      error: new StreamError(ErrorCode.SM_QUEUE_OVERFLOW, 'resource-constraint', `too many unacknowledged stanzas (${why})`),
    });
  }

  /** A stanza for the client was sent or queued: counted for the summary line and the metrics. */
  private countedToClient(bytes: Buffer, queued: number): void {
    this.stats.toClient++;
    this.deps.meter.toClient(bytes.length);
    if (queued > this.stats.peakQueue) this.stats.peakQueue = queued;
  }

  /** The memory budget of all queues has room again: what waited for it goes on, as the state now allows. */
  private roomFreed(): void {
    const s = this.state;
    if (s.name === 'active' && s.sm !== undefined) this.delivery.sendBacklog(s, s.sm);
    else if (s.name === 'hibernating') this.delivery.queueBacklog(s.sm);
  }
}
