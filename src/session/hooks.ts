import type { Logger } from 'pino';
import type { Element } from '../xml/element.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { FeaturesPhase } from './features.js';

/**
 * The extension points of a session, in the manner of Prosody's filters: a feature (a refusal,
 * the ping answer while the client is away, CSI, push) is a {@link SessionHook} that the
 * composition root lists once, not a branch in the session's state machine. Every session runs
 * the same hooks in the listed order. What reacts to a session rather than changing what flows
 * subscribes to the session events (events.ts) instead.
 *
 * What a hook may do is narrow on purpose:
 * - `fromClient` sees each element from the client that the session would relay (not the
 *   stream-management nonzas, which are the proxy's own) and may answer it locally instead;
 * - `toClient` sees each stanza from the legacy server for the client, before stream management
 *   counts and queues it, and may pass it, change it, or drop it; a dropped stanza was never sent,
 *   so counts and queues stay exact;
 * - `replay` may rewrite a stanza resent after `<resumed/>` (never drop one: it is counted already);
 * - `hold` is asked, only while the client is held back ({@link SessionHandle.holdBack}), whether a
 *   live stanza that passed `toClient` may wait; what waits is the session's (client-delivery.ts), so
 *   it keeps one order and one budget with the unacked queue: a stanza that is not held releases
 *   everything held before it, and expiry, bounces and queue limits see held stanzas as unacked ones;
 * - `bound` learns that the session is bound (to read what a feature keeps on the legacy server),
 *   `hibernated` that its client is away, with what the client has not acknowledged;
 * - `advertise` adds features to the stream features the client sees;
 * - `handedOff` writes what the feature keeps for a hibernating session that an upgrade hands to
 *   the next process, as plain JSON data, and `adopted` reads it back there;
 * - `upstreamRenewed` learns that the session goes on over a new upstream stream (its legacy
 *   server restarted while the client was away): the server knows nothing of what the client told
 *   it on the old one;
 * - through {@link SessionHandle.sendUpstream} a hook speaks to the legacy server on the user's behalf.
 */
export interface SessionHook {
  /** For logs and tests: the concept the hook implements. */
  readonly name: string;
  /** The phases whose client elements `fromClient` sees; every phase when absent. */
  readonly phases?: readonly ClientPhase[];
  /**
   * The stanzas `fromClient` sees (and no nonza); every element when absent. A hook that needs only
   * presence and iqs costs the client's messages nothing.
   */
  readonly fromClientKinds?: readonly StanzaKind[];
  fromClient?(element: ScannedElement, phase: ClientPhase, session: SessionHandle): FromClientVerdict;
  /** The deliveries whose stanzas `toClient` sees; both when absent. */
  readonly deliveries?: readonly Delivery[];
  /** The kinds of stanza `toClient` sees; all three when absent (a hook that needs only iqs costs messages nothing). */
  readonly kinds?: readonly StanzaKind[];
  /** Returns the bytes to deliver (`bytes` itself, or changed ones), or `undefined` to drop the stanza. */
  toClient?(bytes: Buffer, delivery: Delivery, session: SessionHandle): Buffer | undefined;
  /**
   * `undefined` delivers the stanza now (after whatever is held, in order); a verdict holds it. The
   * first hook that holds decides; held stanzas are released without running the hooks again.
   */
  hold?(bytes: Buffer, session: SessionHandle): HoldVerdict | undefined;
  /** Returns the bytes to resend; `sentAtMs` is when the stanza was first sent or queued. */
  replay?(bytes: Buffer, sentAtMs: number, session: SessionHandle): Buffer;
  /** Called once, when the session is bound (its bind result is on its way to the client). */
  bound?(session: SessionHandle): void;
  /**
   * Called when the session starts to hibernate, with the stanzas the client has not acknowledged
   * (sent before the link was lost, or held back): what the user may never have seen. The bytes
   * are the queue's own: read them, do not keep them.
   */
  hibernated?(session: SessionHandle, unacked: readonly Buffer[]): void;
  /** Feature elements to add to the legacy server's features (`offered`, as it sent them) in `phase`. */
  advertise?(phase: FeaturesPhase, offered: Element): readonly Element[];
  /**
   * An upgrade hands the hibernating session to the next process (README, Upgrading): what this
   * feature keeps for it, as plain JSON data, or `undefined` for nothing.
   */
  handedOff?(session: SessionHandle): unknown;
  /**
   * The session came from the previous process, hibernating, with what the hook of this name wrote
   * in `handedOff` there (another version of the proxy may have written it: check what it holds).
   */
  adopted?(session: SessionHandle, carried: unknown): void;
  /**
   * The session now runs over a new upstream stream, bound to the same full JID, and its client
   * resumes: what the client told the legacy server on the old stream is told again through
   * {@link SessionHandle.sendUpstream}, before `<resumed/>` and anything the client sends after it.
   */
  upstreamRenewed?(session: SessionHandle): void;
}

/** Where the session is when a client element arrives: before SASL success, before bind, bound. */
export type ClientPhase = 'authenticating' | 'authenticated' | 'active';

/** `live`: the client is attached; `queued`: the session hibernates and the stanza waits for a resume. */
export type Delivery = 'live' | 'queued';

/** RFC 6120 §8: the three stanzas. */
export type StanzaKind = 'message' | 'presence' | 'iq';

/** A from-client hook's decision: `undefined` relays the element; otherwise the hook answered it. */
export type FromClientVerdict =
  | undefined
  /** Answered with a stanza, delivered like one from the legacy server (counted by stream management). */
  | { readonly kind: 'answer-stanza'; readonly stanza: string }
  /** Answered with a nonza (a `<failure/>`); with `thenClose`, the session then ends, for that reason. */
  | { readonly kind: 'answer-nonza'; readonly nonza: string; readonly thenClose?: string }
  /** Acted on by the hook; there is nothing to answer (a XEP-0352 `<inactive/>`). */
  | { readonly kind: 'consumed' };

/** A stanza waits; one held earlier under the same `key` is superseded (dropped, never sent). */
export interface HoldVerdict {
  readonly key?: string;
  /** What waits in place of the stanza's bytes (stamped with the time it arrived, say); the stanza itself when absent. */
  readonly bytes?: Buffer;
}

/** What a hook may know of its session and do through it. */
export interface SessionHandle {
  readonly sid: string;
  /** What the per-address limits count the client as (ip-range.ts `addressKey`). */
  readonly addressKey: string;
  /** The domain the client's stream named, once it named one the proxy serves. */
  readonly domain: string | undefined;
  /** The full JID, once bound. */
  readonly jid: string | undefined;
  /** While the session hibernates: when its client link was lost (epoch ms); otherwise `undefined`. */
  readonly awaySinceMs: number | undefined;
  /** The session's logger (carries the JID once bound). */
  readonly log: Logger;
  /** Writes on the user's upstream stream, on the user's behalf; nothing happens once that stream is gone. */
  sendUpstream(data: string): void;
  /**
   * Whether the legacy server's stream features after authentication (as it sent them, before the
   * proxy's changes) hold an element `name` in namespace `ns`.
   */
  serverOffers(name: string, ns: string): boolean;
  /**
   * While the session hibernates: it now expires `ms` from now, or its own hibernation time (the
   * XEP-0198 `max` it was given) from now if that is longer. A push feature keeps a phone's
   * session longer (mod_cloud_notify does the same).
   */
  hibernateFor(ms: number): void;
  /**
   * On: from now on the `hold` hooks are asked about each live stanza. Off: what is held goes to the
   * client at once, in order, before anything the client sends next is handled (XEP-0352 §5.1).
   * Every client link starts with it off, a resumed one too (XEP-0352 §5.2).
   */
  holdBack(on: boolean): void;
  /** What is held goes to the client now, in order; holding goes on if it was on. */
  releaseHeld(): void;
}

/**
 * The ordered hooks, split once by kind, phase and delivery, so that a session calls only hooks
 * that have something to say: on the hot path (a bound client's stanzas, live stanzas to it) the
 * built-in hooks cost one call per client element and none per stanza to the client.
 */
export class SessionHooks {
  private readonly fromClientHooks: Readonly<Record<ClientPhase, Readonly<Record<StanzaKind | 'nonza', readonly SessionHook[]>>>>;
  private readonly toClientHooks: Readonly<Record<Delivery, Readonly<Record<StanzaKind, readonly SessionHook[]>>>>;
  private readonly replayHooks: readonly SessionHook[];
  private readonly holdHooks: readonly SessionHook[];
  private readonly boundHooks: readonly SessionHook[];
  private readonly hibernatedHooks: readonly SessionHook[];
  private readonly advertisers: readonly SessionHook[];
  private readonly carriers: readonly SessionHook[];
  private readonly renewers: readonly SessionHook[];

  constructor(hooks: readonly SessionHook[]) {
    const fromClient = hooks.filter((hook) => hook.fromClient !== undefined);
    const toClient = hooks.filter((hook) => hook.toClient !== undefined);
    const askedIn = (phase: ClientPhase): Record<StanzaKind | 'nonza', SessionHook[]> => {
      const inPhase = fromClient.filter((hook) => hook.phases?.includes(phase) ?? true);
      const about = (kind: StanzaKind | 'nonza'): SessionHook[] =>
        inPhase.filter((hook) => hook.fromClientKinds === undefined || (kind !== 'nonza' && hook.fromClientKinds.includes(kind)));
      return { message: about('message'), presence: about('presence'), iq: about('iq'), nonza: about('nonza') };
    };
    const askedFor = (delivery: Delivery): Record<StanzaKind, SessionHook[]> => {
      const forDelivery = toClient.filter((hook) => hook.deliveries?.includes(delivery) ?? true);
      const ofKind = (kind: StanzaKind): SessionHook[] => forDelivery.filter((hook) => hook.kinds?.includes(kind) ?? true);
      return { message: ofKind('message'), presence: ofKind('presence'), iq: ofKind('iq') };
    };
    this.fromClientHooks = {
      authenticating: askedIn('authenticating'),
      authenticated: askedIn('authenticated'),
      active: askedIn('active'),
    };
    this.toClientHooks = { live: askedFor('live'), queued: askedFor('queued') };
    this.replayHooks = hooks.filter((hook) => hook.replay !== undefined);
    this.holdHooks = hooks.filter((hook) => hook.hold !== undefined);
    this.boundHooks = hooks.filter((hook) => hook.bound !== undefined);
    this.hibernatedHooks = hooks.filter((hook) => hook.hibernated !== undefined);
    this.advertisers = hooks.filter((hook) => hook.advertise !== undefined);
    this.carriers = hooks.filter((hook) => hook.handedOff !== undefined || hook.adopted !== undefined);
    this.renewers = hooks.filter((hook) => hook.upstreamRenewed !== undefined);
  }

  /** The first hook that answers decides; `undefined` when every hook lets the element through. */
  fromClient(element: ScannedElement, phase: ClientPhase, session: SessionHandle): FromClientVerdict {
    const hooks = this.fromClientHooks[phase];
    const name = element.localName;
    const asked = name === 'message' || name === 'presence' || name === 'iq' ? hooks[name] : hooks.nonza;
    for (const hook of asked) {
      const verdict = hook.fromClient?.(element, phase, session);
      if (verdict !== undefined) return verdict;
    }
    return undefined;
  }

  /** Each hook sees what the one before it passed on; a drop ends the chain. */
  toClient(bytes: Buffer, kind: StanzaKind, delivery: Delivery, session: SessionHandle): Buffer | undefined {
    let current: Buffer | undefined = bytes;
    for (const hook of this.toClientHooks[delivery][kind]) {
      current = hook.toClient?.(current, delivery, session);
      if (current === undefined) return undefined;
    }
    return current;
  }

  replay(bytes: Buffer, sentAtMs: number, session: SessionHandle): Buffer {
    let current = bytes;
    for (const hook of this.replayHooks) current = hook.replay?.(current, sentAtMs, session) ?? current;
    return current;
  }

  hold(bytes: Buffer, session: SessionHandle): HoldVerdict | undefined {
    for (const hook of this.holdHooks) {
      const verdict = hook.hold?.(bytes, session);
      if (verdict !== undefined) return verdict;
    }
    return undefined;
  }

  bound(session: SessionHandle): void {
    for (const hook of this.boundHooks) hook.bound?.(session);
  }

  /** Whether any hook wants {@link hibernated}: the session then collects the unacked stanzas for it. */
  get wantHibernated(): boolean {
    return this.hibernatedHooks.length > 0;
  }

  hibernated(session: SessionHandle, unacked: readonly Buffer[]): void {
    for (const hook of this.hibernatedHooks) hook.hibernated?.(session, unacked);
  }

  advertise(phase: FeaturesPhase, offered: Element): Element[] {
    return this.advertisers.flatMap((hook) => hook.advertise?.(phase, offered) ?? []);
  }

  /** What each hook keeps for `session`, by hook name, for the next process. */
  handedOff(session: SessionHandle): Record<string, unknown> {
    const carried: Record<string, unknown> = {};
    for (const hook of this.carriers) {
      const data = hook.handedOff?.(session);
      if (data !== undefined) carried[hook.name] = data;
    }
    return carried;
  }

  upstreamRenewed(session: SessionHandle): void {
    for (const hook of this.renewers) hook.upstreamRenewed?.(session);
  }

  /** Gives each hook what the hook of its name wrote in the previous process; a hook that wrote nothing is not called. */
  adopted(session: SessionHandle, carried: Readonly<Record<string, unknown>>): void {
    for (const hook of this.carriers) {
      if (Object.hasOwn(carried, hook.name)) hook.adopted?.(session, carried[hook.name]);
    }
  }
}
