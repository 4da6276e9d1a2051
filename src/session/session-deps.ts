import type { Logger } from 'pino';
import type { QueueShares } from '../sm/queue-budget.js';
import type { SmSettings, StreamManagement } from '../sm/stream-management.js';
import type { ClientLink } from '../transport/client-link.js';
import type { UpstreamStream, UpstreamTarget } from '../upstream/upstream-link.js';
import type { SmEvents } from './events.js';
import type { FeaturesFindings } from './features.js';
import type { SessionHooks } from './hooks.js';
import type { SessionRegistry } from './session-registry.js';
import type { FailedLogins } from './failed-logins.js';
import type { HibernatedSession } from './hibernated-snapshot.js';
import type { LingeringUpstreams } from './lingering-upstream.js';
import type { SessionMeter } from './session-meter.js';

/** Limits and timings a session applies, in the units the code uses. Built from the config. */
export interface SessionSettings extends SmSettings {
  readonly maxStanzaBytes: number;
  readonly maxStanzaBytesPreAuth: number;
  /** An unauthenticated (or unbound) client is closed with `connection-timeout` after this. */
  readonly authTimeoutMs: number;
  /** Whitespace keepalive on the upstream link once bound, when it was idle that long. */
  readonly upstreamKeepaliveMs: number;
  /** `bounce` answers unacked stanzas at expiry; `drop` discards them quietly. */
  readonly expiryPolicy: 'bounce' | 'drop';
  /** How long a stranded session waits for its client, from the end of its upstream stream (its hibernation time when longer). */
  readonly strandedMs: number;
}

/**
 * What every session shares; the composition root (proxy.ts) builds it once. A session keeps a
 * reference to it for its whole life, so nothing per-connection belongs here (a hibernating
 * session must not pin the client link it lost).
 */
export interface SessionDeps {
  readonly settings: SessionSettings;
  readonly registry: SessionRegistry;
  readonly events: SmEvents;
  /** The memory of all unacked queues, and each account's and client address's share of it. */
  readonly queueShares: QueueShares;
  /** Failed logins per client address, for the back-off (failed-logins.ts). */
  readonly failedLogins: FailedLogins;
  /** The upstream streams of ended sessions, read until the legacy server closed them (lingering-upstream.ts). */
  readonly lingering: LingeringUpstreams;
  /** Counts what sessions relay, for the metrics (session-meter.ts). */
  readonly meter: SessionMeter;
  /** The features' hooks every session runs, in order (hooks.ts). */
  readonly hooks: SessionHooks;
  /** The upstream for a domain the client named, or undefined if it is not served. */
  readonly upstreamFor: (domain: string) => UpstreamTarget | undefined;
  readonly connectUpstream: (target: UpstreamTarget, log: Logger) => Promise<UpstreamStream>;
  /** Called once when the upstream advertises channel binding (the operator must hear it). */
  readonly reportFindings: (domain: string, findings: FeaturesFindings) => void;
  readonly now: () => number;
}

/** What one session starts from: its id, the client link that opened it, and its logger. */
export interface SessionStart {
  readonly sid: string;
  readonly link: ClientLink;
  /** What the per-address limits count the client as (ip-range.ts `addressKey`). */
  readonly addressKey: string;
  readonly log: Logger;
}

/** A hibernated session another process of the proxy handed over (an upgrade), with its upstream stream taken over already. */
export interface AdoptedSession {
  readonly session: HibernatedSession;
  /** The adopted stream, paused: the session installs its handler, then reads. */
  readonly upstream: UpstreamStream;
  /** The session's state under this process's limits (`StreamManagement.restore`). */
  readonly sm: StreamManagement;
  readonly log: Logger;
}
