import { ErrorCode, StreamError } from '../errors.js';

/** The limits on new connections (config `limits`; README, Limits and abuse). */
export interface AdmissionLimits {
  /** Sessions from one address, bound or not; 0 = no limit. */
  readonly maxSessionsPerAddress: number;
  /** Connections not yet bound or resumed, in all. */
  readonly maxUnauthenticated: number;
  /** Connections not yet bound or resumed from one address; 0 = no limit. */
  readonly maxUnauthenticatedPerAddress: number;
}

/** What the registry counts when a connection arrives; "from the address" as ip-range.ts `addressKey` counts. */
export interface AdmissionCounts {
  readonly pending: number;
  readonly pendingFromAddress: number;
  readonly fromAddress: number;
}

export type Admission =
  /** A new session; with `evictOldest`, the connection waiting longest to log in is closed first to make room. */
  { readonly kind: 'admit'; readonly evictOldest: boolean } | { readonly kind: 'refuse'; readonly error: StreamError };

/**
 * Whether a new client connection gets a session. The per-address limits refuse the newcomer
 * (RFC 6120 §4.9.3.14 `policy-violation`, with the policy in the text): they are the address's own
 * doing. The limit on connections waiting to log in, in all, never refuses: the one that waited
 * longest makes room, so a flood of connections that never authenticate cannot keep a user who
 * does (a resume included) out. `maxSessions` is not checked here but at bind (session-limit.ts),
 * so that unauthenticated connections never count against it.
 */
export function admit(counts: AdmissionCounts, limits: AdmissionLimits): Admission {
  const perAddress = limits.maxUnauthenticatedPerAddress;
  if (perAddress > 0 && counts.pendingFromAddress >= perAddress) {
    return {
      kind: 'refuse',
      error: new StreamError(
        ErrorCode.TOO_MANY_UNAUTHENTICATED_FROM_ADDRESS,
        'policy-violation',
        `${perAddress} connections from your address are logging in already (maxUnauthenticatedPerAddress)`,
      ),
    };
  }
  const sessions = limits.maxSessionsPerAddress;
  if (sessions > 0 && counts.fromAddress >= sessions) {
    return {
      kind: 'refuse',
      error: new StreamError(
        ErrorCode.TOO_MANY_FROM_ADDRESS,
        'policy-violation',
        `${sessions} sessions from your address are open already (maxSessionsPerAddress)`,
      ),
    };
  }
  return { kind: 'admit', evictOldest: counts.pending >= limits.maxUnauthenticated };
}
