import type { TransportKind } from '../transport/client-link.js';

/**
 * A live session as plain data, for the metrics (read when scraped) and the admin listener's
 * session list (README, Metrics and health). Never carries stanzas or credentials.
 */
export interface SessionSummary {
  readonly sid: string;
  /** The full JID, once bound. */
  readonly jid: string | undefined;
  /** The state name (session-state.ts), or the stream setup's phase while negotiating. */
  readonly state: string;
  /** The attached client's transport and address; undefined while hibernating. */
  readonly transport: TransportKind | undefined;
  readonly remote: string | undefined;
  /** When the session was opened, and when its hibernation began (while it hibernates). */
  readonly sinceMs: number;
  readonly hibernatingSinceMs: number | undefined;
  readonly smEnabled: boolean;
  readonly resumable: boolean;
  /** Stanzas in its unacked queue. */
  readonly queued: number;
}
