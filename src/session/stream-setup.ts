import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS, type SmNamespace } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { FeaturesPhase } from './features.js';
import { SaslIdentity, type SaslAttempt } from './sasl-identity.js';
import { bare } from '../xml/jid.js';

/** A `<resume/>` waiting for its client's account to be known. */
export interface ResumeRequest {
  readonly ns: SmNamespace;
  readonly previd: string;
  readonly h: number;
}

/** Where the setup is: the client authenticates, then binds, or resumes another session. */
export type SetupPhaseName = SetupPhase['name'];

type SetupPhase =
  /** Relaying SASL; the exchange is watched for the account it names. */
  | { readonly name: 'authenticating'; readonly sasl: SaslIdentity }
  /** SASL succeeded; the client may bind, or resume another session. */
  | {
      readonly name: 'authenticated';
      /** The account the successful SASL exchange named, when it names one for sure (SaslIdentity). */
      readonly saslJid: string | undefined;
      /** Set when a failed resume bound a resource for the identity check (XEP-0198 §5). */
      readonly boundJid: string | undefined;
      /** A stranded session's queue, taken by a failed resume: the client's next bind gets it (resumption.ts `takeQueue`). */
      readonly inherited: readonly Buffer[];
      /** The restarted stream's features have reached the client: a `<resumed/>` may follow them. */
      readonly featuresRelayed: boolean;
      /**
       * The client's bind request, forwarded and not answered yet: only the answer to this id
       * binds the session, and what the client pipelines behind it (an `<enable/>`) waits for it.
       */
      readonly pendingBind: PendingBind | undefined;
    }
  /** A `<resume/>` waits for the account to be known; what the client sends meanwhile is held. */
  | {
      readonly name: 'resuming';
      readonly request: ResumeRequest;
      readonly held: ScannedElement[];
      readonly saslJid: string | undefined;
      readonly boundJid: string | undefined;
      readonly inherited: readonly Buffer[];
      /** The SASL exchange confirmed the account; the answer waits for the restarted stream's features. */
      readonly awaitingFeatures: boolean;
    };

/** A client's bind request on its way to the legacy server. */
interface PendingBind {
  readonly id: string;
  /** What the client sent behind it, handled once it is answered. */
  readonly held: ScannedElement[];
  /** Stanzas an ended session of the same full JID received behind its close, for this one (lingering-upstream.ts). */
  inherited: readonly Buffer[];
}

/** What stream setup does through its session: the writes, the waits, and the moments that change the session. */
export interface SetupPort {
  toClient(data: Buffer | string): void;
  toServer(data: Buffer | string): void;
  /** The legacy server answered a SASL exchange with `<failure/>` (RFC 6120 §6.4.5); it is relayed after this. */
  saslFailed(condition: string, attempt: SaslAttempt | undefined): void;
  /** RFC 6120 §6.4.6: SASL succeeded, after its `<success/>` reached the client; both streams restart. */
  saslSucceeded(): void;
  /** The setup waits for the legacy server's answer: what the client sends meanwhile stays unread. */
  waitForServer(): void;
  serverAnswered(): void;
  /**
   * The client asks to bind `resource` (undefined: the server chooses) for `account` (the SASL
   * exchange's, when known): live resumable sessions of that full JID end first, and `send`
   * writes the request once no ended session of that full JID lingers, with the stanzas kept for
   * it (their queues, what reached their streams behind the close, what the server never read).
   */
  beforeBind(resource: string | undefined, account: string | undefined, send: (inherited: readonly Buffer[]) => void): void;
  /**
   * The client's resource is bound to `jid`: the session becomes active, handles `held` (what the
   * client pipelined behind its bind, an `<enable/>` among it), then sends `inherited` to the client
   * before anything from the legacy server.
   */
  bound(jid: string, inherited: readonly Buffer[], held: readonly ScannedElement[]): void;
  /** The legacy server refused the bind: stanzas inherited for it reach no one. */
  inheritedLost(inherited: readonly Buffer[]): void;
  /** Elements held while the setup waited, to be handled again, in order, as if they arrived now. */
  redeliver(held: readonly ScannedElement[]): void;
  /**
   * The account `request` comes from is known; `undefined` when the legacy server refused the
   * identity bind. `byBind`: the server told it by binding a resource on this stream (which may
   * have replaced the session being resumed), not the SASL exchange; `boundJid` is the full JID it bound.
   */
  identityKnown(request: ResumeRequest, bareJid: string | undefined, byBind: boolean, boundJid?: string): void;
}

/**
 * The client stream from the legacy server's first features to bind (RFC 6120 §6, §7): SASL and
 * bind are relayed unchanged and watched, so that the proxy learns the full JID from the server's
 * own answer, and a `<resume/>` learns which account it comes from (XEP-0198 §5: "the server MUST
 * verify that the resuming entity is the same as the original entity"): from the SASL exchange
 * when it names the account for sure, else from a throwaway bind on this temporary stream.
 */
export class StreamSetup {
  private phase: SetupPhase;

  /**
   * @param identityBindId the id of the proxy's own identity-check bind request: unique to the
   *   session, and never one a client would choose.
   */
  constructor(
    domain: string,
    private readonly identityBindId: string,
    private readonly port: SetupPort,
  ) {
    this.phase = { name: 'authenticating', sasl: new SaslIdentity(domain) };
  }

  get phaseName(): SetupPhaseName {
    return this.phase.name;
  }

  /** While a `<resume/>` waits for the account to be known: the SM-ID it resumes. */
  get resuming(): string | undefined {
    return this.phase.name === 'resuming' ? this.phase.request.previd : undefined;
  }

  /** Which features the legacy server sends now: before SASL success, or after the restart. */
  get featuresPhase(): FeaturesPhase {
    return this.phase.name === 'authenticating' ? 'pre-auth' : 'post-auth';
  }

  /** Stanzas inherited for a bind that has not happened: lost if the session ends now. */
  get unclaimed(): readonly Buffer[] {
    const p = this.phase;
    if (p.name === 'authenticating') return [];
    return [...p.inherited, ...(p.name === 'authenticated' ? (p.pendingBind?.inherited ?? []) : [])];
  }

  /** Holds `element` while the setup waits for the legacy server (a bind, an identity check); true if held. */
  hold(element: ScannedElement): boolean {
    const p = this.phase;
    if (p.name === 'resuming') {
      p.held.push(element);
      return true;
    }
    if (p.name === 'authenticated' && p.pendingBind !== undefined) {
      p.pendingBind.held.push(element);
      return true;
    }
    return false;
  }

  /** A client element for the legacy server (not a stream-management nonza, not answered by a hook). */
  fromClient(element: ScannedElement): void {
    const p = this.phase;
    if (p.name === 'authenticating') p.sasl.fromClient(element);
    if (p.name === 'authenticated') {
      const bindId = bindRequestId(element);
      if (bindId !== undefined && p.boundJid !== undefined) {
        // A failed resume bound a resource already; XEP-0198 §5 lets the client bind after it: answered with that one.
        this.port.toClient(
          `<iq type='result' id='${escapeXml(bindId)}'><bind xmlns='${NS.bind}'><jid>${escapeXml(p.boundJid)}</jid></bind></iq>`,
        );
        this.phase = { ...p, inherited: [] };
        this.port.bound(p.boundJid, p.inherited, []);
        return;
      }
      if (bindId !== undefined) {
        const pendingBind: PendingBind = { id: bindId, held: [], inherited: p.inherited };
        this.phase = { ...p, inherited: [], pendingBind };
        this.port.waitForServer();
        this.port.beforeBind(requestedResource(element), p.saslJid, (inherited) => {
          if (this.phase.name !== 'authenticated' || this.phase.pendingBind !== pendingBind) {
            this.port.inheritedLost([...pendingBind.inherited, ...inherited]);
            return;
          }
          pendingBind.inherited = [...pendingBind.inherited, ...inherited];
          this.port.toServer(element.bytes);
        });
        return;
      }
    }
    this.port.toServer(element.bytes);
  }

  /** An element from the legacy server other than a stream error or features (the session relays those). */
  fromServer(element: ScannedElement): void {
    const p = this.phase;
    if (p.name === 'authenticating' && element.ns === NS.sasl) {
      if (element.localName === 'success') {
        this.port.toClient(element.bytes);
        this.phase = {
          name: 'authenticated',
          saslJid: p.sasl.bareJid,
          boundJid: undefined,
          inherited: [],
          featuresRelayed: false,
          pendingBind: undefined,
        };
        this.port.saslSucceeded();
        return;
      }
      if (element.localName === 'failure') {
        const condition = parseElement(element.bytes).getChildElements()[0]?.name ?? 'not-authorized';
        this.port.saslFailed(condition, p.sasl.onFailure());
      }
    }
    if (element.localName === 'iq' && p.name !== 'authenticating' && this.onBindAnswer(p, element)) return;
    this.port.toClient(element.bytes);
  }

  /** The session relayed the legacy server's features to the client. */
  featuresRelayed(): void {
    const p = this.phase;
    if (p.name === 'authenticated') this.phase = { ...p, featuresRelayed: true };
    else if (p.name === 'resuming' && p.awaitingFeatures) {
      this.phase = { ...p, awaitingFeatures: false };
      this.port.identityKnown(p.request, p.saslJid, false);
    }
  }

  /**
   * A `<resume/>` of a session of `sessionAccount` (its bare JID, if bound; live or remembered) after SASL success:
   * finds out which account this stream authenticated as, then {@link SetupPort.identityKnown}.
   * Only in the `authenticated` phase. `resource`: the session's own, when its upstream stream is
   * gone (a legacy server restart): the check binds that resource, so that this stream can become
   * the session's (resumption.ts `renewUpstream`).
   */
  resume(request: ResumeRequest, sessionAccount: string | undefined, resource?: string): void {
    const p = this.phase;
    if (p.name !== 'authenticated') return;
    // The SASL exchange named exactly the hibernated session's account: confirmed with no second
    // resource, which a server allowing one resource per account would trade for the session. A
    // stream that bound a resource already has the server's own answer, which comes first.
    const confirmedBySasl = resource === undefined && p.boundJid === undefined && p.saslJid !== undefined && p.saslJid === sessionAccount;
    this.phase = {
      name: 'resuming',
      request,
      held: [],
      saslJid: p.saslJid,
      boundJid: p.boundJid,
      inherited: p.inherited,
      awaitingFeatures: confirmedBySasl && !p.featuresRelayed,
    };
    this.port.waitForServer();
    if (confirmedBySasl) {
      // XEP-0198 §5: the client resumes "where it would otherwise bind", so `<resumed/>` belongs
      // after the restarted stream's header and features; a pipelined `<resume/>` waits for them.
      if (p.featuresRelayed) this.port.identityKnown(request, p.saslJid, false);
      return;
    }
    if (p.boundJid !== undefined) {
      this.port.identityKnown(request, bare(p.boundJid), true, p.boundJid);
      return;
    }
    const bind =
      resource === undefined ? `<bind xmlns='${NS.bind}'/>` : `<bind xmlns='${NS.bind}'><resource>${escapeXml(resource)}</resource></bind>`;
    this.port.toServer(`<iq type='set' id='${this.identityBindId}'>${bind}</iq>`);
  }

  /**
   * The resume was refused: the stream is authenticated again, and what the client sent meanwhile
   * is handled. `inherited`: a stranded session's queue, for the client's next bind.
   */
  resumeRefused(inherited: readonly Buffer[] = []): void {
    const p = this.phase;
    if (p.name !== 'resuming') return;
    this.phase = {
      name: 'authenticated',
      saslJid: p.saslJid,
      boundJid: p.boundJid,
      inherited: [...p.inherited, ...inherited],
      featuresRelayed: true,
      pendingBind: undefined,
    };
    this.port.serverAnswered();
    this.port.redeliver(p.held);
  }

  /** The resume succeeded: what the client sent after `<resume/>` goes to the resumed session. */
  resumeAccepted(): readonly ScannedElement[] {
    const p = this.phase;
    return p.name === 'resuming' ? p.held : [];
  }

  /**
   * Learns the full JID from the answer to the client's own bind request (matched by id, and
   * from the server itself: no `from`), or consumes the answer to the identity-check bind.
   */
  private onBindAnswer(p: Exclude<SetupPhase, { name: 'authenticating' }>, element: ScannedElement): boolean {
    const expectedId = p.name === 'resuming' ? this.identityBindId : p.pendingBind?.id;
    if (expectedId === undefined) return false;
    const iq = parseElement(element.bytes);
    if (iq.attrs.id !== expectedId || iq.attrs.from !== undefined) return false;
    const jid = iq.attrs.type === 'result' ? (iq.getChild('bind', NS.bind)?.getChildText('jid') ?? undefined) : undefined;
    if (p.name === 'resuming') {
      this.phase = { ...p, boundJid: jid };
      this.port.identityKnown(p.request, jid === undefined ? undefined : bare(jid), true, jid);
      return true;
    }
    this.port.toClient(element.bytes);
    const held = p.pendingBind?.held ?? [];
    const inherited = p.pendingBind?.inherited ?? [];
    // A refused bind leaves the stream authenticated; the client may try again.
    this.phase = { ...p, pendingBind: undefined };
    this.port.serverAnswered();
    if (jid !== undefined) {
      this.port.bound(jid, inherited, held);
      return true;
    }
    if (inherited.length > 0) this.port.inheritedLost(inherited);
    this.port.redeliver(held);
    return true;
  }
}

/** The id of a client `<iq type='set'><bind/></iq>` (RFC 6120 §7.6), or undefined for anything else. */
function bindRequestId(element: ScannedElement): string | undefined {
  if (element.localName !== 'iq' || !element.bytes.includes(NS.bind)) return undefined;
  const iq = parseElement(element.bytes);
  if (iq.attrs.type !== 'set' || iq.getChild('bind', NS.bind) === undefined) return undefined;
  return (iq.attrs.id as string | undefined) ?? '';
}

/** The resource a bind request asks for (RFC 6120 §7.7.2.2), or undefined when it leaves the choice to the server. */
function requestedResource(element: ScannedElement): string | undefined {
  const resource = parseElement(element.bytes).getChild('bind', NS.bind)?.getChildText('resource') ?? undefined;
  return resource === undefined || resource === '' ? undefined : resource;
}
