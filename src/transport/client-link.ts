import type { StreamError } from '../errors.js';
import type { ScannedElement, ScannerLimits, StreamHeader } from '../xml/stream-scanner.js';
import type { StreamHeaderAttrs } from '../xml/stream-header.js';
import type { Endpoint } from './proxy-protocol.js';

/** The transports a client can reach the proxy over. */
export type TransportKind = 'starttls' | 'directtls' | 'websocket';

/** How a client link ended, as the session needs to know it (XEP-0198 §5 "unfinished stream"). */
export type LinkEnd =
  /** The client closed its stream (`</stream:stream>` or RFC 7395 `<close/>`): never hibernate. */
  | { readonly kind: 'clean' }
  /** The transport went away without a stream close: a resumable session hibernates. */
  | { readonly kind: 'lost'; readonly reason: string }
  /** The proxy closed it (stream error, shutdown, takeover). */
  | { readonly kind: 'local'; readonly reason: string };

/**
 * What a client link reports. A link calls exactly one handler at a time; the session that owns
 * the link installs it, and on resumption the resumed session installs its own.
 */
export interface ClientLinkHandler {
  /** A stream header after TLS (the first one, and each restart after SASL success). */
  onStreamOpen(header: StreamHeader): void;
  /** A complete top-level element, in order. */
  onElement(element: ScannedElement): void;
  /** The client closed its stream cleanly. */
  onStreamClose(): void;
  /** The client broke a protocol rule the link enforces; the session must end the stream with it. */
  onProtocolError(error: StreamError): void;
  /** The transport is gone. Called once. */
  onEnd(end: LinkEnd): void;
  /** The link's write buffer drained after `send` returned false. */
  onDrain(): void;
}

/**
 * One client connection, whatever the transport: the session code never asks which one it is.
 * Writing is always in whole elements; the link adds what its framing needs (RFC 7395 namespaces
 * on WebSocket, for instance).
 */
/** The two ends of a client connection as the proxy knows them. */
export interface LinkEndpoints {
  readonly client: Endpoint;
  readonly listener: Endpoint;
}

export interface ClientLink {
  readonly transport: TransportKind;
  /** `address:port` of the client, for logs. */
  readonly remote: string;
  /**
   * The client's IP address, for per-address limits: the TCP peer, or for WebSocket behind a
   * trusted reverse proxy the client it names (X-Forwarded-For / Forwarded).
   */
  readonly address: string;
  /**
   * The client and the listener address it reached, for a PROXY protocol header to the legacy
   * server (proxy-protocol.ts). The client's port is 0 when a reverse proxy named only its address.
   */
  readonly endpoints: LinkEndpoints;
  /** Installs the receiver of this link's events (see ClientLinkHandler). */
  setHandler(handler: ClientLinkHandler): void;
  /** Answers the client's stream header (RFC 6120 §4.7). */
  sendHeader(attrs: StreamHeaderAttrs): void;
  /** Writes one complete element. Returns false when the caller should pause its source until onDrain. */
  send(element: Buffer | string): boolean;
  /** Sends the stream error (with a header first if none was sent, RFC 6120 §4.9.1.2), closes the stream and the transport. */
  fail(error: StreamError): void;
  /** Closes the stream cleanly (`</stream:stream>`) and then the transport. */
  close(): void;
  /** Drops the transport at once, without a stream close (a takeover of a dead link). */
  destroy(reason: string): void;
  /** The next thing the client sends is a new stream header (RFC 6120 §6.4.6 restart after SASL success). */
  expectRestart(): void;
  /** Applies new scanner limits (the stanza limit grows after authentication). */
  setLimits(limits: Partial<ScannerLimits>): void;
  /** Stops reading from the client (backpressure from the upstream side). */
  pause(): void;
  /** Reads from the client again. */
  resume(): void;
  /** True once the link has ended (no more writes possible). */
  readonly ended: boolean;
}
