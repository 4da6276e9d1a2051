import type { StreamError, UpstreamError } from '../errors.js';
import type { EndedReason } from '../sm/failures.js';
import type { ScannedElement } from '../xml/stream-scanner.js';
import type { ClientLink } from '../transport/client-link.js';
import { toRfc6120StreamError } from '../xml/legacy-stream-error.js';

/** Why a session ends (`Session.end`). */
export type EndCause =
  /** The client closed, or the link ended without hibernation, or the legacy server answered our close. */
  | { readonly kind: 'closed' }
  /** A hibernation ran out (XEP-0198 §5). */
  | { readonly kind: 'expired' }
  /** The proxy stops while the session hibernates. */
  | { readonly kind: 'shutdown' }
  /** The proxy ends the stream with a stream error (bad input, limits, timeouts, shutdown of an attached session). */
  | { readonly kind: 'stream-error'; readonly error: StreamError }
  /** The unacked queue of a hibernating session overflowed (or the memory budget of all queues ran out). */
  | { readonly kind: 'queue-overflow'; readonly error: StreamError; readonly overflowing: readonly Buffer[] }
  /** The legacy server ended the user's stream with a stream error: relayed (RFC 6120 names). */
  | { readonly kind: 'upstream-error'; readonly element: ScannedElement }
  /** The legacy server's connection failed or closed. */
  | { readonly kind: 'upstream-lost'; readonly error: UpstreamError }
  /** An operator drains the proxy (admin listener): an attached client's connection is dropped without a stream close, so that it reconnects elsewhere. */
  | { readonly kind: 'drained' }
  /**
   * The session a connection resumes is in the other process of an upgrade (resumption.ts
   * `elsewhere`): its connection is dropped without a stream close, so that it reconnects there.
   */
  | { readonly kind: 'moved' }
  /** An operator ended the session (admin listener): `error` goes to an attached client. */
  | { readonly kind: 'kicked'; readonly error: StreamError }
  /** A stranded session's queue went to the stream its client came back on (resumption.ts `takeQueue`). */
  | { readonly kind: 'queue-handed-over'; readonly handedOver: number }
  /**
   * A new login of its client bound the session's full JID instead of resuming: its queue went to
   * that login; `error` (`conflict`) goes to an attached client.
   */
  | { readonly kind: 'replaced'; readonly error: StreamError; readonly handedOver: number };

/**
 * What each ending does (the client side is in `end`'s switch): the reason remembered for a late
 * `<resume/>` and logged, whether the unacked stanzas can still be answered through the user's
 * upstream stream (README, What it does), and whether that stream is closed or dropped.
 */
export const HOW_TO_END: Readonly<
  Record<EndCause['kind'], { readonly reason: EndedReason; readonly unacked: 'answer' | 'lost'; readonly upstream: 'close' | 'destroy' }>
> = {
  closed: { reason: 'closed', unacked: 'answer', upstream: 'close' },
  expired: { reason: 'expired', unacked: 'answer', upstream: 'close' },
  shutdown: { reason: 'shutdown', unacked: 'answer', upstream: 'close' },
  'stream-error': { reason: 'error', unacked: 'answer', upstream: 'close' },
  'queue-overflow': { reason: 'queue-overflow', unacked: 'answer', upstream: 'close' },
  'upstream-error': { reason: 'upstream-lost', unacked: 'lost', upstream: 'close' },
  'upstream-lost': { reason: 'upstream-lost', unacked: 'lost', upstream: 'destroy' },
  kicked: { reason: 'kicked', unacked: 'answer', upstream: 'close' },
  drained: { reason: 'drained', unacked: 'answer', upstream: 'close' },
  moved: { reason: 'moved', unacked: 'answer', upstream: 'close' },
  'queue-handed-over': { reason: 'upstream-lost', unacked: 'answer', upstream: 'close' },
  replaced: { reason: 'replaced', unacked: 'answer', upstream: 'close' },
};

/** What the client of a session that ends is told, per cause (README, Errors): the other half of HOW_TO_END. */
export function tellClient(link: ClientLink, cause: EndCause): void {
  switch (cause.kind) {
    case 'stream-error':
    case 'upstream-lost':
    case 'queue-overflow':
    case 'kicked':
    case 'replaced':
      link.fail(cause.error);
      return;
    case 'upstream-error':
      link.send(toRfc6120StreamError(cause.element.bytes));
      link.close();
      return;
    case 'closed':
      link.close();
      return;
    case 'drained':
      // Like a network cut: the client reconnects at once, through the load balancer, to another node.
      link.destroy('drained');
      return;
    case 'moved':
      link.destroy('the session is in the other process of an upgrade');
      return;
    case 'expired':
    case 'shutdown':
    case 'queue-handed-over':
      // Hibernating or stranded: no client link.
      return;
  }
}
