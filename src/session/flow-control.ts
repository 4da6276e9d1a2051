/** What flow control pauses and resumes: a client link or an upstream stream. */
export interface Pausable {
  pause(): void;
  resume(): void;
}

/** Why reading from the client is paused. */
type ClientHold =
  /** The upstream socket did not take the last write: the legacy server reads slower than the client writes. */
  | 'upstream-full'
  /** The client's own socket is full: its requests (each `<r/>`, `<enable/>`) would be answered into it. */
  | 'client-full'
  /** A protocol wait: the session waits for the legacy server (connecting, a bind, the identity check). */
  | 'waiting';

/** Why reading from the legacy server is paused. */
type UpstreamHold =
  /** The client's socket is full. */
  | 'client-full'
  /** The unacked queue of an attached client is full: reading waits for the client's acks. */
  | 'queue-full'
  /** The memory budget of all queues is used up: reading waits for room, attached or hibernating. */
  | 'no-room';

/**
 * Backpressure and protocol waits of one session, in one place. A write that returns false pauses
 * the side that feeds it until `drain` (the ws and Node streams convention): the client's reads
 * while the upstream is full, both the upstream's and the client's reads while the client is full.
 * A full unacked queue pauses the upstream's reads until the client acks. Elements are never
 * dropped for it: paused reads leave them in the kernel's buffers, in order.
 */
export class FlowControl {
  private readonly clientHolds = new Set<ClientHold>();
  private readonly upstreamHolds = new Set<UpstreamHold>();

  constructor(
    private readonly client: () => Pausable | undefined,
    private readonly upstream: () => Pausable | undefined,
  ) {}

  /** A write to the client returned `accepted`. */
  wroteToClient(accepted: boolean): void {
    if (accepted) return;
    this.hold('client-full');
    this.holdUpstream('client-full');
  }

  /** A write to the legacy server returned `accepted`. */
  wroteToUpstream(accepted: boolean): void {
    if (!accepted) this.hold('upstream-full');
  }

  clientDrained(): void {
    this.release('client-full');
    this.releaseUpstream('client-full');
  }

  /** The unacked queue has no room for the next stanza to the client: the legacy server waits. */
  queueFull(): void {
    this.holdUpstream('queue-full');
  }

  /** The memory budget of all queues has no room for the next stanza to the client: the legacy server waits. */
  noRoom(): void {
    this.holdUpstream('no-room');
  }

  /** Acks, or room in the memory budget, let every stanza that waited into the queue. */
  queueHasRoom(): void {
    this.releaseUpstream('queue-full');
    this.releaseUpstream('no-room');
  }

  upstreamDrained(): void {
    this.release('upstream-full');
  }

  /** The session waits for the legacy server: what the client sends meanwhile stays unread. */
  waitForServer(): void {
    this.hold('waiting');
  }

  serverAnswered(): void {
    this.release('waiting');
  }

  /**
   * The client link is gone (hibernation, or taken over): its holds go with it, and the upstream
   * reads again, unless it waits for room in the memory budget.
   */
  clientGone(): void {
    this.clientHolds.clear();
    this.releaseUpstream('client-full');
    this.releaseUpstream('queue-full');
  }

  /** This session's upstream stream now belongs to another session (a renewal): it reads again, under that session's control. */
  upstreamHandedOver(): void {
    if (this.upstreamHolds.size === 0) return;
    this.upstreamHolds.clear();
    this.upstream()?.resume();
  }

  /** The session has a new upstream stream (a renewal): what holds reading from the old one holds it too. */
  upstreamChanged(): void {
    if (this.upstreamHolds.size > 0) this.upstream()?.pause();
  }

  /** The client link now belongs to another session (resumption): it reads again, under that session's control. */
  clientHandedOver(): void {
    if (this.clientHolds.size === 0) return;
    this.clientHolds.clear();
    this.client()?.resume();
  }

  private hold(reason: ClientHold): void {
    if (this.clientHolds.size === 0) this.client()?.pause();
    this.clientHolds.add(reason);
  }

  private release(reason: ClientHold): void {
    if (!this.clientHolds.delete(reason) || this.clientHolds.size > 0) return;
    this.client()?.resume();
  }

  private holdUpstream(reason: UpstreamHold): void {
    if (this.upstreamHolds.size === 0) this.upstream()?.pause();
    this.upstreamHolds.add(reason);
  }

  private releaseUpstream(reason: UpstreamHold): void {
    if (!this.upstreamHolds.delete(reason) || this.upstreamHolds.size > 0) return;
    this.upstream()?.resume();
  }
}
