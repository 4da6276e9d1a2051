/**
 * What a session counts for the proxy's metrics as it relays; the metrics (metrics/proxy-metrics.ts)
 * read the sums when scraped. Called on the hot path, once per stanza: an implementation adds to
 * plain numbers and does nothing more.
 */
export interface SessionMeter {
  /** A stanza from the client, relayed to the legacy server or answered by the proxy. */
  fromClient(bytes: number): void;
  /** A stanza for the client, sent or queued while it is away. */
  toClient(bytes: number): void;
  /** An `<a/>` answered the outstanding `<r/>`, `ms` after it was sent. */
  ackRoundTrip(ms: number): void;
}
