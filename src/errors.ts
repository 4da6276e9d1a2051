import { clipped } from './xml/sanitize.js';

/**
 * Typed errors with stable codes. Every failure the proxy reports carries one of the
 * `PROXY_ERR_…` codes below; the README lists them. What a peer sees for an error is decided in
 * one place, `src/xml/stream-error.ts`, from the subclass and its `condition`.
 */

/** Stable error codes. Never renumber or reuse one: operators grep logs for them. */
export const ErrorCode = {
  /** The config file could not be read or parsed as JSON. */
  CONFIG_READ: 'PROXY_ERR_CONFIG_READ',
  /** The config does not satisfy the schema; `problems` lists every violation by JSON pointer. */
  CONFIG_INVALID: 'PROXY_ERR_CONFIG_INVALID',
  /** A TLS certificate or key named in the config could not be loaded. */
  TLS_CREDENTIALS: 'PROXY_ERR_TLS_CREDENTIALS',
  /** A listener could not bind its address. */
  LISTEN: 'PROXY_ERR_LISTEN',
  /** The admin listener's token file (`admin.tokenFile`) could not be read or holds no token. */
  ADMIN_TOKEN: 'PROXY_ERR_ADMIN_TOKEN',
  /** The webhook's secret file (`webhook.secretFile`) could not be read or holds no secret. */
  WEBHOOK_SECRET: 'PROXY_ERR_WEBHOOK_SECRET',
  /** A webhook POST failed (HTTP error, timeout, refused connection): retried, or dropped after `maxAttempts` (log only). */
  WEBHOOK_DELIVERY: 'PROXY_ERR_WEBHOOK_DELIVERY',
  /** An upgrade's hand-off failed: the new process refused, exited or fell silent; the old one serves on (log only). */
  UPGRADE: 'PROXY_ERR_UPGRADE',

  /** Malformed XML (RFC 6120 §11.3): `not-well-formed`. */
  XML_NOT_WELL_FORMED: 'PROXY_ERR_XML_NOT_WELL_FORMED',
  /** DTD, comment, processing instruction or undeclared entity (RFC 6120 §11.1): `restricted-xml`. */
  XML_RESTRICTED: 'PROXY_ERR_XML_RESTRICTED',
  /** Bytes that are not UTF-8, or another declared encoding (RFC 6120 §11.6): `unsupported-encoding`. */
  XML_ENCODING: 'PROXY_ERR_XML_ENCODING',
  /** An element prefix that no declaration binds (RFC 6120 §11.2): `bad-namespace-prefix`. */
  XML_NAMESPACE_PREFIX: 'PROXY_ERR_XML_NAMESPACE_PREFIX',
  /** Wrong stream namespace or stream element (RFC 6120 §4.9.3.10): `invalid-namespace`. */
  XML_INVALID_NAMESPACE: 'PROXY_ERR_XML_INVALID_NAMESPACE',
  /** A stanza over `maxStanzaBytes`: `policy-violation` with `<stanza-too-big/>`. */
  STANZA_TOO_BIG: 'PROXY_ERR_STANZA_TOO_BIG',
  /** Elements nested deeper than `maxDepth`: `policy-violation`. */
  XML_TOO_DEEP: 'PROXY_ERR_XML_TOO_DEEP',
  /** Stream header with an unsupported version (RFC 6120 §4.9.3.25): `unsupported-version`. */
  UNSUPPORTED_VERSION: 'PROXY_ERR_UNSUPPORTED_VERSION',
  /** An element the proxy does not accept in the current phase: `not-authorized` or `policy-violation`. */
  UNEXPECTED_ELEMENT: 'PROXY_ERR_UNEXPECTED_ELEMENT',

  /** The stream's `to` names no configured domain: `host-unknown`. */
  HOST_UNKNOWN: 'PROXY_ERR_HOST_UNKNOWN',
  /** A client stayed unauthenticated or silent too long: `connection-timeout`. */
  CONNECTION_TIMEOUT: 'PROXY_ERR_CONNECTION_TIMEOUT',
  /** The TLS handshake with a client failed (logged; the socket is closed). */
  TLS_HANDSHAKE: 'PROXY_ERR_TLS_HANDSHAKE',
  /** A load balancer in `proxyProtocolFrom` sent no valid PROXY protocol header, or another address sent one (logged; the socket is closed). */
  PROXY_HEADER: 'PROXY_ERR_PROXY_HEADER',
  /** The proxy holds `maxSessions` bound sessions: a bind is answered with the `resource-constraint` stanza error. */
  TOO_MANY_SESSIONS: 'PROXY_ERR_TOO_MANY_SESSIONS',
  TOO_MANY_FROM_ADDRESS: 'PROXY_ERR_TOO_MANY_FROM_ADDRESS',
  /** `maxUnauthenticated` connections wait to log in: the one waiting longest is closed with `resource-constraint`. */
  UNAUTHENTICATED_EVICTED: 'PROXY_ERR_UNAUTHENTICATED_EVICTED',
  /** A WebSocket client sent more than 4 × `maxStanzaBytesPreAuth` bytes before SASL success: `policy-violation`. */
  PRE_AUTH_BYTES: 'PROXY_ERR_PRE_AUTH_BYTES',
  /** `maxUnauthenticatedPerAddress` reached for the client's address: `policy-violation`. */
  TOO_MANY_UNAUTHENTICATED_FROM_ADDRESS: 'PROXY_ERR_TOO_MANY_UNAUTHENTICATED_FROM_ADDRESS',

  /** The legacy server could not be reached or did not answer in time: `remote-connection-failed`. */
  UPSTREAM_CONNECT: 'PROXY_ERR_UPSTREAM_CONNECT',
  /** The legacy server closed or reset the upstream link: `remote-connection-failed`. */
  UPSTREAM_CLOSED: 'PROXY_ERR_UPSTREAM_CLOSED',
  /** The legacy server sent a stream error; it is relayed to the client as is. */
  UPSTREAM_STREAM_ERROR: 'PROXY_ERR_UPSTREAM_STREAM_ERROR',
  /** The upstream hop's STARTTLS negotiation failed: `remote-connection-failed`. */
  UPSTREAM_TLS: 'PROXY_ERR_UPSTREAM_TLS',

  /** The client acked more stanzas than were sent (XEP-0198 §6): `undefined-condition` + `<handled-count-too-high/>`. */
  SM_HANDLED_COUNT_TOO_HIGH: 'PROXY_ERR_SM_HANDLED_COUNT_TOO_HIGH',
  /** An `<a/>` or `<resume/>` whose `h` is not an xs:unsignedInt: `invalid-xml`. */
  SM_INVALID_H: 'PROXY_ERR_SM_INVALID_H',
  /** A hibernating session's unacked queue exceeded its limits, or all queues their memory budget: `resource-constraint`; the session ends. */
  SM_QUEUE_OVERFLOW: 'PROXY_ERR_SM_QUEUE_OVERFLOW',
  /** An attached client's unacked queue is at its limit: no stream error; reading from the legacy server waits for its acks. */
  SM_QUEUE_FULL: 'PROXY_ERR_SM_QUEUE_FULL',
  /** A newer connection resumed this session (XEP-0198 §5): `conflict`. */
  SM_TAKEOVER: 'PROXY_ERR_SM_TAKEOVER',
  /** A new login of the client bound this session's full JID instead of resuming: `conflict`; the queue goes to the new login. */
  SM_REPLACED: 'PROXY_ERR_SM_REPLACED',
  /** Stanzas that needed an answer reached an ended session after its stream to the legacy server was closed (log only). */
  LATE_STANZA_UNANSWERED: 'PROXY_ERR_LATE_STANZA_UNANSWERED',
  /** Stanzas kept for the next session of a full JID (kept-stanzas.ts) were dropped: none came in time, or the proxy stopped (log only). */
  KEPT_STANZAS_DROPPED: 'PROXY_ERR_KEPT_STANZAS_DROPPED',

  /** The legacy server refused a SASL exchange: logged with the client's address, the mechanism and the user name it shows; the failure is relayed. */
  SASL_FAILED: 'PROXY_ERR_SASL_FAILED',
  /** Too many failed logins from the client's address: SASL `<temporary-auth-failure/>` until the back-off ends. */
  LOGIN_BACKOFF: 'PROXY_ERR_LOGIN_BACKOFF',
  /** A SASL `<auth/>` whose authorization identity names another account (foreign-authzid.ts): SASL `<invalid-authzid/>`. */
  SASL_FOREIGN_AUTHZID: 'PROXY_ERR_SASL_FOREIGN_AUTHZID',

  /** The proxy is shutting down: `system-shutdown`. */
  SHUTDOWN: 'PROXY_ERR_SHUTDOWN',
  /** An operator ended the session through the admin listener: the chosen stream error (`policy-violation` by default). */
  KICKED: 'PROXY_ERR_KICKED',
  /** A bug: a state the code believed impossible: `internal-server-error`. */
  INVARIANT: 'PROXY_ERR_INVARIANT',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** RFC 6120 §4.9.3 stream error conditions the proxy emits or relays. */
export type StreamErrorCondition =
  | 'bad-format'
  | 'bad-namespace-prefix'
  | 'conflict'
  | 'connection-timeout'
  | 'host-gone'
  | 'host-unknown'
  | 'improper-addressing'
  | 'internal-server-error'
  | 'invalid-from'
  | 'invalid-namespace'
  | 'invalid-xml'
  | 'not-authorized'
  | 'not-well-formed'
  | 'policy-violation'
  | 'remote-connection-failed'
  | 'reset'
  | 'resource-constraint'
  | 'restricted-xml'
  | 'see-other-host'
  | 'system-shutdown'
  | 'undefined-condition'
  | 'unsupported-encoding'
  | 'unsupported-feature'
  | 'unsupported-stanza-type'
  | 'unsupported-version';

/** Base of every error the proxy raises on purpose. */
export class ProxyError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The config file is unreadable or invalid. `problems` holds one line per violation. */
export class ConfigError extends ProxyError {
  readonly problems: readonly string[];

  constructor(code: ErrorCode, message: string, problems: readonly string[] = [], options?: { cause?: unknown }) {
    super(code, message, options);
    this.problems = problems;
  }
}

/** Extra child of `<stream:error/>` in an application namespace (RFC 6120 §4.9.4). */
export interface AppCondition {
  readonly name: string;
  readonly xmlns: string;
  readonly attrs?: Readonly<Record<string, string>>;
}

/**
 * An error that ends an XML stream with a stream error (RFC 6120 §4.9). `text` is shown to the
 * peer, so it must never contain secrets or stanza content.
 */
export class StreamError extends ProxyError {
  readonly condition: StreamErrorCondition;
  readonly text: string | undefined;
  readonly appCondition: AppCondition | undefined;

  constructor(
    code: ErrorCode,
    condition: StreamErrorCondition,
    message: string,
    options?: { cause?: unknown; text?: string; appCondition?: AppCondition },
  ) {
    super(code, message, options);
    this.condition = condition;
    this.text = options?.text ?? message;
    this.appCondition = options?.appCondition;
  }
}

/** A failure on the upstream hop to the legacy server. */
export class UpstreamError extends StreamError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; text?: string }) {
    super(code, 'remote-connection-failed', message, options);
  }
}

/** A state the code holds impossible. Logged at error level; the peer sees `internal-server-error`. */
export class InvariantError extends StreamError {
  constructor(message: string) {
    super(ErrorCode.INVARIANT, 'internal-server-error', message, { text: 'internal error' });
  }
}

/** Wraps anything thrown into a ProxyError so every path below has a code to log. */
export function asProxyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new InvariantError(`unexpected error: ${message}`);
}

/** RFC 6120 §4.9.3.6 `host-unknown` for a stream whose `to` (as the client wrote it, clipped) names no served domain. */
export function hostUnknown(to: string | undefined): StreamError {
  return new StreamError(ErrorCode.HOST_UNKNOWN, 'host-unknown', `stream to '${clipped(to ?? '')}' names no domain this proxy serves`);
}
