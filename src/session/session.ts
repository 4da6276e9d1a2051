import type { Logger } from 'pino';
import { ErrorCode, InvariantError, StreamError, UpstreamError, type StreamErrorCondition } from '../errors.js';
import type { ResumeCandidate } from '../sm/resumption.js';
import type { ClientLink, ClientLinkHandler, LinkEnd } from '../transport/client-link.js';
import type { ReleasedUpstream, UpstreamHandler, UpstreamStream } from '../upstream/upstream-link.js';
import { parseElement } from '../xml/element.js';
import { NS, isSmNamespace, isStanza } from '../xml/namespaces.js';
import { sanitizeForLog } from '../xml/sanitize.js';
import { stanzaKindOf } from '../xml/stanza-bytes.js';
import type { ScannedElement, StreamHeader } from '../xml/stream-scanner.js';
import { handOverQueue, probeUpstream, resumeCandidate, takeOver, yieldToLogin } from './client-return.js';
import type { HibernatedSession } from './hibernated-snapshot.js';
import { hibernate, hibernateFor, onUpstreamWhileHibernating, outliveUpstream, upstreamLost } from './hibernation.js';
import type { ClientPhase, SessionHandle, StanzaKind } from './hooks.js';
import { SessionCore } from './session-core.js';
import type { AdoptedSession, SessionDeps, SessionStart } from './session-deps.js';
import { closeSession, drainSession, kickSession, shutdownSession } from './session-end.js';
import { adopted, handOff, snapshot } from './session-handoff.js';
import type { ResumeHandOver } from './session-registry.js';
import { isBound, linkOf, smOf, upstreamOf, type State, type StateName } from './session-state.js';
import type { SessionSummary } from './session-summary.js';
import { onSmNonza } from './sm-requests.js';
import type { SetupPhaseName } from './stream-setup.js';
import { armAuthTimer, headerAttrs, openUpstream, relayFeatures } from './session-setup.js';

/** RFC 6120 §4.9.3 stream errors that say the legacy server goes away, not that it refuses this session. */
const SERVER_GOING_AWAY: ReadonlySet<string> = new Set(['system-shutdown', 'reset', 'internal-server-error', 'connection-timeout']);

/**
 * One client stream and its upstream stream to the legacy server. Relays SASL and binding
 * unchanged, forwards every other element as its original bytes, and does XEP-0198 itself.
 *
 * This class is the state machine (session-state.ts): it dispatches what the client link and the
 * upstream stream deliver, as the state allows, and hands the work to one part per concept, which
 * share the session's state through its {@link SessionCore}: stream setup (session-setup.ts),
 * stream-management requests (sm-requests.ts), a `<resume/>` on this connection
 * (resume-request.ts), the client coming back to this session (client-return.ts), hibernation
 * (hibernation.ts), the hand-off to another process (session-handoff.ts) and the one way to end
 * (session-end.ts). Features reach the session only through hooks (hooks.ts).
 */
export class Session implements SessionHandle {
  readonly sid: string;
  readonly addressKey: string;
  private readonly core: SessionCore;

  /**
   * A session for a client link that just opened, or for a hibernated session another process of
   * the proxy handed over (an upgrade, README "Upgrading"): that one goes on hibernating here.
   */
  constructor(deps: SessionDeps, start: SessionStart | AdoptedSession) {
    const from = 'link' in start ? start : start.session;
    this.sid = from.sid;
    this.addressKey = from.addressKey;
    const wiring = {
      clientHandler: (link: ClientLink) => this.clientHandler(link),
      upstreamHandler: (upstream: UpstreamStream) => this.upstreamHandler(upstream),
      fromClient: (element: ScannedElement) => this.onClientElement(element),
    };
    const presenceShown = 'link' in start ? false : start.session.presenceShown;
    const core = new SessionCore(deps, wiring, {
      session: this,
      log: start.log,
      presenceShown,
    });
    this.core = core;
    deps.registry.add(this, this.addressKey);
    if ('link' in start) {
      core.state = { name: 'opening', link: start.link, authTimer: armAuthTimer(core) };
      start.link.setHandler(this.clientHandler(start.link));
      this.log.debug('session opened');
      return;
    }
    core.state = adopted(core, start);
    deps.hooks.adopted(this, start.session.features);
    start.upstream.resume();
  }

  private get state(): State {
    return this.core.state;
  }

  private get deps(): SessionDeps {
    return this.core.deps;
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
    return this.core.bareJid;
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
      sinceMs: this.core.startedMs,
      hibernatingSinceMs: s.name === 'hibernating' || s.name === 'stranded' ? s.sinceMs : undefined,
      smEnabled: sm !== undefined,
      resumable: sm?.resumable ?? false,
      queued: sm?.queue.length ?? 0,
    };
  }

  // --- what hooks see (hooks.ts) ---

  get domain(): string | undefined {
    return this.core.domainName;
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
    return this.core.log;
  }

  sendUpstream(data: string): void {
    const upstream = upstreamOf(this.state);
    if (upstream !== undefined && !upstream.ended) this.core.toUpstream(upstream, data);
  }

  serverOffers(name: string, ns: string): boolean {
    return this.core.serverFeatures?.getChild(name, ns) !== undefined;
  }

  hibernateFor(ms: number): void {
    hibernateFor(this.core, ms);
  }

  holdBack(on: boolean): void {
    const s = this.state;
    this.core.delivery.holdBack(s.name === 'active' ? s : undefined, on);
  }

  releaseHeld(): void {
    const s = this.state;
    if (s.name === 'active') this.core.delivery.releaseHeld(s);
  }

  // --- what the registry, the proxy and an upgrade ask of a session ---

  /** What a `<resume/>` of this session with `h` would find (the registry asks, for decideResume). */
  resumeCandidate(h: number): ResumeCandidate {
    return resumeCandidate(this.core, h);
  }

  /** A round trip on this hibernating session's upstream stream (client-return.ts); `undefined` in any other state. */
  probeUpstream(): Promise<void> | undefined {
    return probeUpstream(this.core);
  }

  /** A resume of this session was accepted: it takes the client's link (client-return.ts). */
  takeOver(handOver: ResumeHandOver): void {
    takeOver(this.core, handOver);
  }

  /** Elements the client pipelined after `<resume/>` (Monal), delivered after the replay. */
  acceptHeld(held: readonly ScannedElement[]): void {
    for (const element of held) this.core.guard(() => this.onClientElement(element));
  }

  /** The client of this stranded session came back on another stream: its queue goes there (client-return.ts). */
  handOverQueue(h: number): Buffer[] {
    return handOverQueue(this.core, h);
  }

  /** A new login of this session's client binds its full JID: its queue goes to that login (client-return.ts). */
  yieldToLogin(): Buffer[] {
    return yieldToLogin(this.core);
  }

  /** A hibernating session as plain data (session-handoff.ts); undefined in any other state. */
  snapshot(): HibernatedSession | undefined {
    return snapshot(this.core);
  }

  /** Takes this session out of the proxy for another process (an upgrade; session-handoff.ts). */
  handOff(): { session: HibernatedSession; upstream: ReleasedUpstream; link: ClientLink | undefined } | undefined {
    return handOff(this.core);
  }

  /** Ends the session with a stream error to the client (the session, not only the socket). */
  fail(error: StreamError): void {
    this.core.fail(error);
  }

  /** An operator ends the session (session-end.ts). */
  kick(condition: StreamErrorCondition): void {
    kickSession(this.core, condition);
  }

  /** The proxy is drained (session-end.ts). */
  drain(): void {
    drainSession(this.core);
  }

  /** Proxy shutdown (RFC 6120 §4.9.3.20 `system-shutdown`). */
  shutdown(): void {
    shutdownSession(this.core);
  }

  // --- client side ---

  /**
   * Events from `link` reach the session only while it is the session's link: after a takeover
   * the old connection "must no longer deliver anything" (a stanza or a stream close still in
   * flight on it must not touch the resumed session).
   */
  private clientHandler(link: ClientLink): ClientLinkHandler {
    const current = (): boolean => linkOf(this.state) === link;
    const guard = (action: () => void): void => this.core.guard(action);
    return {
      onStreamOpen: (header) => current() && guard(() => this.onClientStreamOpen(header)),
      onElement: (element) => current() && guard(() => this.onClientElement(element)),
      onStreamClose: () => current() && guard(() => this.onClientStreamClose()),
      onProtocolError: (error) => current() && guard(() => this.fail(error)),
      onEnd: (end) => current() && guard(() => this.onClientEnd(end)),
      onDrain: () => {
        if (current()) this.core.flow.clientDrained();
      },
    };
  }

  private onClientStreamOpen(header: StreamHeader): void {
    const s = this.state;
    if (s.name === 'opening') {
      openUpstream(this.core, s, header);
      return;
    }
    if (s.name === 'negotiating' && s.setup.phaseName !== 'authenticating') {
      // RFC 6120 §6.4.6: after SASL success the client restarts the stream; so does the hop.
      s.upstream.sendHeader(headerAttrs(header));
    }
  }

  private onClientElement(element: ScannedElement): void {
    const core = this.core;
    if (core.traceXml) this.log.trace({ fromClient: sanitizeForLog(element) }, 'element');
    const s = core.state;
    switch (s.name) {
      case 'connecting':
        s.held.push(element);
        return;
      case 'active': {
        const stanza = isStanza(element);
        if (!stanza && isSmNamespace(element.ns)) {
          onSmNonza(core, element, element.ns);
          return;
        }
        if (stanza) {
          core.stats.fromClient++;
          core.deps.meter.fromClient(element.bytes.length);
          core.presence.observe(element.localName, element.bytes);
        }
        if (!this.answeredByHook(element, 'active')) core.toUpstream(s.upstream, element.bytes);
        // README, What it does: a client stanza counts as handled once written to the upstream socket (or answered).
        if (stanza) s.sm?.inbound.handled();
        return;
      }
      case 'negotiating':
        if (s.setup.hold(element)) return;
        if (isSmNamespace(element.ns)) {
          onSmNonza(core, element, element.ns);
          return;
        }
        if (this.answeredByHook(element, s.setup.phaseName === 'authenticating' ? 'authenticating' : 'authenticated')) return;
        s.setup.fromClient(element);
        return;
      case 'opening':
        // The scanner only delivers elements after a stream header.
        throw new InvariantError('client element before the stream header');
      case 'hibernating':
      case 'stranded':
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
      this.core.toClient(verdict.nonza);
      if (verdict.thenClose !== undefined) closeSession(this.core, verdict.thenClose);
      return true;
    }
    const s = this.state;
    if (s.name === 'active') {
      const stanza = Buffer.from(verdict.stanza);
      this.core.delivery.toClient(s, stanza, stanzaKindOf(stanza));
    } else this.core.toClient(verdict.stanza);
    return true;
  }

  private onClientStreamClose(): void {
    const s = this.state;
    // XEP-0198 (since v1.5.2) recommends an `<a/>` just before a graceful close: the peer trims its
    // queue. What it did not ack is answered as at expiry (XEP-0198 §5), by `endSession`.
    if (s.name === 'active' && s.sm !== undefined) this.core.toClient(s.sm.ackElement());
    closeSession(this.core, 'client closed the stream');
  }

  private onClientEnd(end: LinkEnd): void {
    this.core.flow.clientGone();
    const s = this.state;
    if (s.name === 'active' && end.kind !== 'clean' && s.sm !== undefined && s.sm.resumable) {
      hibernate(this.core, s, end.kind === 'lost' ? end.reason : `link closed: ${end.reason}`);
      return;
    }
    if (s.name === 'closed') return;
    this.log.debug({ end: end.kind }, 'client link ended');
    closeSession(this.core, `client link ended (${end.kind})`);
  }

  // --- upstream side ---

  private upstreamHandler(upstream: UpstreamStream): UpstreamHandler {
    const current = (): boolean => upstreamOf(this.state) === upstream;
    const guard = (action: () => void): void => this.core.guard(action);
    return {
      onStreamOpen: (header) => guard(() => this.onUpstreamStreamOpen(upstream, header)),
      onElement: (element) => guard(() => this.onUpstreamElement(upstream, element)),
      onStreamClose: () => guard(() => this.onUpstreamStreamClose(upstream)),
      onFailure: (error) =>
        guard(() => {
          if (current()) upstreamLost(this.core, error);
        }),
      onEnd: (clean) =>
        guard(() => {
          if (!current()) return;
          upstreamLost(
            this.core,
            new UpstreamError(ErrorCode.UPSTREAM_CLOSED, clean ? 'legacy server closed the stream' : 'legacy server connection lost', {
              text: 'legacy server connection lost',
            }),
          );
        }),
      onDrain: () => {
        if (current()) this.core.flow.upstreamDrained();
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
    const core = this.core;
    if (core.traceXml) this.log.trace({ fromUpstream: sanitizeForLog(element) }, 'element');
    const s = core.state;
    if (upstreamOf(s) !== upstream) return;
    if (s.name === 'active' && isStanza(element)) {
      core.delivery.toClient(s, element.bytes, element.localName as StanzaKind);
      return;
    }
    if (s.name === 'hibernating') {
      onUpstreamWhileHibernating(core, s, element);
      return;
    }
    if (element.localName === 'error' && element.ns === NS.stream) {
      // Only the server going away is outlived; a conflict (another session took the resource), a
      // policy violation or a kick is the server's word on this session and is told as it is.
      const condition = parseElement(element.bytes).getChildElements()[0]?.name ?? '';
      if (SERVER_GOING_AWAY.has(condition) && outliveUpstream(core, s, `stream error ${condition}`)) return;
      this.log.info({ code: ErrorCode.UPSTREAM_STREAM_ERROR }, 'legacy server sent a stream error; relayed');
      core.end({ kind: 'upstream-error', element });
      return;
    }
    const setup = s.name === 'negotiating' ? s.setup : undefined;
    if (element.localName === 'features' && element.ns === NS.stream) {
      relayFeatures(core, setup, element);
      return;
    }
    if (setup !== undefined) setup.fromServer(element);
    else core.toClient(element.bytes);
  }

  private onUpstreamStreamClose(upstream: UpstreamStream): void {
    if (upstreamOf(this.state) !== upstream) return;
    // The legacy server ended the user's stream: the session ends, and so does the client's.
    upstreamLost(
      this.core,
      new UpstreamError(ErrorCode.UPSTREAM_CLOSED, 'legacy server closed the stream', { text: 'legacy server closed the stream' }),
    );
  }
}
