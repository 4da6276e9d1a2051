import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';
import type { StreamManagement } from '../sm/stream-management.js';
import type { AckClock } from './ack-clock.js';
import type { FlowControl } from './flow-control.js';
import { HeldStanzas } from './held-stanzas.js';
import type { SessionHandle, SessionHooks, StanzaKind } from './hooks.js';
import { parseElement } from '../xml/element.js';

/** What delivery needs of a session: its hooks, limits and flow control, and where counted stanzas go. */
export interface DeliveryPort {
  readonly hooks: SessionHooks;
  readonly handle: SessionHandle;
  readonly limits: { readonly maxQueueStanzas: number; readonly maxQueueBytes: number };
  readonly flow: FlowControl;
  now(): number;
  log(): Logger;
  /** Writes to the client link. */
  send(bytes: Buffer): void;
  /** A stanza was sent or queued for the client (the summary line, the metrics, the queue's peak). */
  counted(bytes: Buffer, queued: number): void;
  /** The unacked queue cannot take `overflowing` (the first of them refused): the session ends. */
  overflow(sm: StreamManagement, overflowing: readonly Buffer[], why: string): void;
  /** Calls `retry` once `need` bytes of the memory budget of all queues are free (queue-budget.ts); returns a cancel. */
  whenRoom(need: number, retry: () => void): () => void;
  /** The memory budget has room again: the session offers what waited, as its state allows ({@link sendBacklog}, {@link queueBacklog}). */
  roomFreed(): void;
}

/** The attached client's stream management, as the session's active state holds it. */
export interface Attached {
  readonly sm: StreamManagement | undefined;
  readonly clock: AckClock | undefined;
}

/**
 * The way from the legacy server to an attached client, in one order: the session hooks (which may
 * change, drop or hold a stanza), what they hold back (held-stanzas.ts), the unacked queue, and the
 * backlog of stanzas that found the queue full. Everything not yet sent stays in this order when
 * the client link changes or the session ends ({@link takeUnsent}).
 */
export class ClientDelivery {
  /** What hooks held back from the attached client; its `holding` is per client link. */
  readonly held = new HeldStanzas();
  /**
   * Stanzas for the client that found the unacked queue full, or the memory budget of all queues
   * used up: reading from the legacy server is paused until the client's acks (or other sessions)
   * make room, and these go first, in order. At most what one read from the legacy server held,
   * plus what was held when it was released.
   */
  private readonly backlog: Buffer[] = [];
  /** Stops the wait for room in the memory budget, while one is asked for. */
  private stopWaiting: (() => void) | undefined;
  /**
   * Stanzas handed to a new login wait in `held`, and every later stanza behind them, until the
   * client enables stream management ({@link awaitEnable}): then they are counted and kept until
   * acknowledged.
   */
  private awaitingEnable = false;

  constructor(private readonly port: DeliveryPort) {}

  /** A stanza from the legacy server for the attached client. */
  toClient(s: Attached, relayed: Buffer, kind: StanzaKind): void {
    const { hooks, handle } = this.port;
    const bytes = hooks.toClient(relayed, kind, 'live', handle);
    if (bytes === undefined) return;
    if (this.awaitingEnable) {
      this.waitForEnable(s, bytes, kind);
      return;
    }
    const verdict = this.held.holding ? hooks.hold(bytes, handle) : undefined;
    if (verdict !== undefined) {
      this.held.hold(verdict.bytes ?? bytes, verdict.key);
      // Held stanzas count against the queue's own limits: a hold buffer that reaches them goes out.
      const queue = s.sm?.queue;
      const { maxQueueStanzas, maxQueueBytes } = this.port.limits;
      if (this.held.length + (queue?.length ?? 0) >= maxQueueStanzas || this.held.bytes + (queue?.bytes ?? 0) >= maxQueueBytes) {
        this.release(s);
      }
      return;
    }
    if (this.held.length > 0) {
      // Behind what is held, and answered with it should the queue overflow on the way.
      this.held.hold(bytes, undefined);
      this.release(s);
      return;
    }
    this.deliver(s, bytes);
  }

  /** XEP-0352 `<inactive/>` (on) and `<active/>` (off: what is held goes out now, `s` being the attached client's). */
  holdBack(s: Attached | undefined, on: boolean): void {
    this.held.holding = on;
    if (!on && s !== undefined) this.release(s);
  }

  /** From now on the stanzas handed to this login ({@link handedOver}), and what comes behind them, wait until {@link stopAwaitingEnable}. */
  awaitEnable(): void {
    this.awaitingEnable = true;
  }

  /** Whether stanzas wait for the client's `<enable/>` ({@link awaitEnable}). */
  get waitingForEnable(): boolean {
    return this.awaitingEnable;
  }

  /**
   * A stanza handed to this login (a replaced session's queue, kept stanzas): through the hooks as
   * a live one, and, while the login's `<enable/>` is awaited, it waits, whatever it is.
   */
  handedOver(s: Attached, relayed: Buffer, kind: StanzaKind): void {
    if (!this.awaitingEnable) {
      this.toClient(s, relayed, kind);
      return;
    }
    const bytes = this.port.hooks.toClient(relayed, kind, 'live', this.port.handle);
    if (bytes !== undefined) this.held.hold(bytes, undefined);
  }

  /** The client enabled stream management, or was waited for long enough: what waits goes out, in order. */
  stopAwaitingEnable(s: Attached): void {
    if (!this.awaitingEnable) return;
    this.awaitingEnable = false;
    this.release(s);
  }

  /** What is held goes out now, in order; `holding` stays as it is. */
  releaseHeld(s: Attached): void {
    if (this.held.length > 0) this.release(s);
  }

  /** The client acked (or resumed, or room freed): the stanzas that waited go out, in order, as far as the queue has room. */
  sendBacklog(s: Attached, sm: StreamManagement): void {
    if (this.backlog.length === 0) return;
    for (let bytes = this.backlog.shift(); bytes !== undefined; bytes = this.backlog.shift()) {
      const queued = this.enqueue(s, sm, bytes);
      if (queued === 'ended') return;
      if (queued !== 'queued') {
        this.backlog.unshift(bytes);
        return;
      }
      this.port.counted(bytes, sm.queue.length);
      this.port.send(bytes);
    }
    this.port.flow.queueHasRoom();
  }

  /**
   * A new client link took over (a resume): it starts active (XEP-0352 §5.2), and what the old link
   * held goes out after the replay, behind what waited for room.
   */
  linkChanged(): void {
    this.held.holding = false;
    this.awaitingEnable = false;
    this.backlog.push(...this.held.take());
  }

  /** Everything not yet sent, in order (what waited for room, then what was held), for the end; empties both. */
  takeUnsent(): Buffer[] {
    this.held.holding = false;
    this.awaitingEnable = false;
    this.stopWaitingForRoom();
    return [...this.backlog.splice(0), ...this.held.take()];
  }

  /** Whether stanzas wait for room in the memory budget of all queues (a hibernating session's cannot move with it). */
  get waitingForRoom(): boolean {
    return this.stopWaiting !== undefined;
  }

  /**
   * The client left (hibernation): what waited for room and what was held go to the unacked queue,
   * in order, as far as the memory budget has room.
   */
  clientLeft(sm: StreamManagement): 'queued' | 'waiting' | 'ended' {
    this.held.holding = false;
    this.awaitingEnable = false;
    this.backlog.push(...this.held.take());
    return this.queueBacklog(sm);
  }

  /**
   * A stanza for the hibernating client: to the queue behind whatever waits for room. A queue (or
   * share) over its limit ends the session with the stanza answered; a used-up memory budget of all
   * queues makes it wait for room instead (README, Limits and abuse).
   */
  queueWhileAway(sm: StreamManagement, bytes: Buffer): 'queued' | 'waiting' | 'ended' {
    this.backlog.push(bytes);
    return this.queueBacklog(sm);
  }

  /** What waits goes to the hibernating client's queue, in order, as far as there is room. */
  queueBacklog(sm: StreamManagement): 'queued' | 'waiting' | 'ended' {
    if (this.stopWaiting !== undefined) return 'waiting';
    for (let bytes = this.backlog.shift(); bytes !== undefined; bytes = this.backlog.shift()) {
      const pushed = sm.queue.offer(bytes, this.port.now());
      if (pushed.ok) {
        this.port.counted(bytes, sm.queue.length);
        continue;
      }
      if (pushed.reason === 'global' && bytes.length <= pushed.limit) {
        this.backlog.unshift(bytes);
        this.waitForRoom(bytes.length);
        return 'waiting';
      }
      this.port.overflow(sm, [bytes, ...this.backlog.splice(0)], `${pushed.reason} limit ${pushed.limit}`);
      return 'ended';
    }
    this.port.flow.queueHasRoom();
    return 'queued';
  }

  /** The legacy server's stream waits until `need` bytes of the memory budget are free; then the session offers the backlog again. */
  private waitForRoom(need: number): void {
    this.port.flow.noRoom();
    if (this.stopWaiting !== undefined) return;
    this.stopWaiting = this.port.whenRoom(need, () => {
      this.stopWaiting = undefined;
      this.port.roomFreed();
    });
  }

  private stopWaitingForRoom(): void {
    this.stopWaiting?.();
    this.stopWaiting = undefined;
  }

  /**
   * A live stanza while the stanzas handed to this login wait for its `<enable/>`: it waits behind
   * them (kept under a CSI hook's key while the client is inactive, XEP-0352), except an answer to
   * one of the client's own requests, which a client may wait for before it enables (an RFC 3921
   * `<session/>`, say). What waits stays within what the queue could take once enabled; beyond
   * that, everything goes out now, uncounted.
   */
  private waitForEnable(s: Attached, bytes: Buffer, kind: StanzaKind): void {
    if (kind === 'iq') {
      const type = parseElement(bytes).attrs.type as string | undefined;
      if (type === 'result' || type === 'error') {
        this.deliver(s, bytes);
        return;
      }
    }
    const verdict = this.held.holding ? this.port.hooks.hold(bytes, this.port.handle) : undefined;
    this.held.hold(verdict?.bytes ?? bytes, verdict?.key);
    const { maxQueueStanzas, maxQueueBytes } = this.port.limits;
    if (this.held.length > maxQueueStanzas || this.held.bytes > maxQueueBytes) {
      this.awaitingEnable = false;
      this.release(s);
    }
  }

  /**
   * What was held goes to the client, in order, through stream management, one at a time: should
   * the queue overflow on the way, what is still held is answered with the stanza that overflowed.
   */
  private release(s: Attached): void {
    if (this.awaitingEnable) return;
    for (let bytes = this.held.shift(); bytes !== undefined; bytes = this.held.shift()) {
      if (!this.deliver(s, bytes)) return;
    }
  }

  /**
   * A stanza the hooks passed: counted, queued and sent, or behind the backlog while the unacked
   * queue is full. False when it ended the session (the queue overflowed).
   */
  private deliver(s: Attached, bytes: Buffer): boolean {
    const sm = s.sm;
    if (sm !== undefined) {
      // Order is kept: while stanzas wait for room in the queue, every later one waits behind them.
      if (this.backlog.length > 0) {
        this.backlog.push(bytes);
        return true;
      }
      const queued = this.enqueue(s, sm, bytes);
      if (queued === 'ended') return false;
      if (queued !== 'queued') {
        this.port
          .log()
          .info(
            { code: ErrorCode.SM_QUEUE_FULL, queued: sm.queue.length, limit: queued === 'no-room' ? 'global' : 'own' },
            queued === 'no-room'
              ? 'memory budget of all queues used up; reading from the legacy server waits for room'
              : 'unacked queue full; reading from the legacy server waits for the client to ack',
          );
        this.backlog.push(bytes);
        return true;
      }
      s.clock?.check();
    }
    this.port.counted(bytes, sm?.queue.length ?? 0);
    this.port.send(bytes);
    return true;
  }

  /**
   * Puts a stanza for the attached client in the unacked queue. A queue at its own limit (stanzas
   * or bytes) does not end a live session (README, Limits and abuse): the caller keeps the stanza
   * at the head of the backlog, the legacy server's stream is read no further, and the client is
   * asked for an ack. The memory budget of all queues used up does not end it either: the same,
   * until other sessions (or this one's acks) make room. Only a stanza larger than the queue (or
   * its share) may ever hold ends the session, with the stanza, the backlog and what is held answered.
   */
  private enqueue(s: Attached, sm: StreamManagement, bytes: Buffer): 'queued' | 'full' | 'no-room' | 'ended' {
    if (this.stopWaiting !== undefined) return 'no-room';
    const pushed = sm.queue.offer(bytes, this.port.now());
    if (pushed.ok) return 'queued';
    if (pushed.reason === 'global' && bytes.length <= pushed.limit) {
      this.waitForRoom(bytes.length);
      s.clock?.check();
      return 'no-room';
    }
    // A stanza that does not fit an empty queue never will (the legacy server may send more than maxQueueBytes at once),
    // nor one larger than the whole memory budget (after a reload lowered it).
    if (sm.queue.length === 0 || pushed.reason === 'global') {
      // In order: this stanza, what waited behind it, what is still held behind those.
      this.port.overflow(sm, [bytes, ...this.backlog.splice(0), ...this.held.take()], `${pushed.reason} limit ${pushed.limit}`);
      return 'ended';
    }
    this.port.flow.queueFull();
    s.clock?.check();
    return 'full';
  }
}
