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

/**
 * Backpressure and protocol waits of one session, in one place. A write that returns false pauses
 * the side that feeds it until `drain` (the ws and Node streams convention): the client's reads
 * while the upstream is full, both the upstream's and the client's reads while the client is full.
 * Elements are never dropped for it: paused reads leave them in the kernel's buffers, in order.
 */
export class FlowControl {
  private readonly clientHolds = new Set<ClientHold>();
  private upstreamPaused = false;

  constructor(
    private readonly client: () => Pausable | undefined,
    private readonly upstream: () => Pausable | undefined,
  ) {}

  /** A write to the client returned `accepted`. */
  wroteToClient(accepted: boolean): void {
    if (accepted) return;
    this.hold('client-full');
    const upstream = this.upstream();
    if (upstream !== undefined && !this.upstreamPaused) {
      this.upstreamPaused = true;
      upstream.pause();
    }
  }

  /** A write to the legacy server returned `accepted`. */
  wroteToUpstream(accepted: boolean): void {
    if (!accepted) this.hold('upstream-full');
  }

  clientDrained(): void {
    this.release('client-full');
    this.resumeUpstream();
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

  /** The client link is gone (hibernation, or taken over): its holds go with it, and the upstream reads again. */
  clientGone(): void {
    this.clientHolds.clear();
    this.resumeUpstream();
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

  private resumeUpstream(): void {
    if (!this.upstreamPaused) return;
    this.upstreamPaused = false;
    this.upstream()?.resume();
  }
}
