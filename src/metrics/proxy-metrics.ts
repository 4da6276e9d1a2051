import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SmEvents } from '../session/events.js';
import type { SessionMeter } from '../session/session-meter.js';
import type { SessionSummary } from '../session/session-summary.js';

/** What the metrics read when scraped: the live sessions, and the memory of all unacked queues. */
export interface MetricsSources {
  sessions(): Iterable<SessionSummary>;
  readonly queueBytes: () => { readonly used: number; readonly limit: number; readonly waiting: number };
}

/** Seconds; ack round trips of a mobile client range from tens of ms to the `maxAckDelaySeconds` deadline. */
const ACK_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Seconds; hibernations last from a radio hand-over (seconds) to the hibernation time (minutes). */
const HIBERNATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600];
/** Seconds; a connect to the legacy server includes TCP, TLS when configured, and nothing else. */
const CONNECT_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10];

/**
 * The proxy's Prometheus metrics (README, Metrics), in a registry of their own. What the hot path
 * counts are plain numbers (the {@link SessionMeter} methods) read when scraped; sessions by state
 * and queue sizes are read from the sessions when scraped; everything else follows the session
 * events. Labels are fixed sets (states, reasons, error codes, configured domains): never a JID
 * or an address.
 */
export class ProxyMetrics implements SessionMeter {
  readonly registry = new Registry();
  private readonly traffic = { fromClient: 0, fromClientBytes: 0, toClient: 0, toClientBytes: 0 };
  private readonly ackRoundTrips: Histogram;
  private readonly sessionsOpened: Counter;
  private readonly clientErrors: Counter<'code'>;
  private readonly upstreamConnects: Counter<'domain' | 'outcome'>;
  private readonly upstreamConnectSeconds: Histogram<'domain'>;
  private readonly upstreamUp: Gauge<'domain'>;
  private readonly webhookEvents: Counter<'outcome'>;
  private processMetrics = false;

  constructor(sources: MetricsSources, events: SmEvents) {
    const registers = [this.registry];
    const traffic = this.traffic;
    new Gauge({
      name: 'smacks_sessions',
      help: 'Live sessions by state (opening, connecting, authenticating, authenticated, resuming, active, hibernating, stranded) and whether stream management is enabled',
      labelNames: ['state', 'sm'],
      registers,
      collect() {
        this.reset();
        for (const session of sources.sessions()) this.inc({ state: session.state, sm: String(session.smEnabled) });
      },
    });
    new Gauge({
      name: 'smacks_unacked_stanzas',
      help: 'Stanzas in the unacked queues of all sessions',
      registers,
      collect() {
        let queued = 0;
        for (const session of sources.sessions()) queued += session.queued;
        this.set(queued);
      },
    });
    new Gauge({
      name: 'smacks_unacked_bytes',
      help: 'Bytes in the unacked queues of all sessions (what streamManagement.globalQueueBytes limits)',
      registers,
      collect() {
        this.set(sources.queueBytes().used);
      },
    });
    new Gauge({
      name: 'smacks_unacked_bytes_limit',
      help: 'streamManagement.globalQueueBytes in effect',
      registers,
      collect() {
        this.set(sources.queueBytes().limit);
      },
    });
    new Gauge({
      name: 'smacks_sessions_waiting_for_room',
      help: 'Sessions whose stanzas wait because globalQueueBytes is used up (their legacy server stream is not read meanwhile)',
      registers,
      collect() {
        this.set(sources.queueBytes().waiting);
      },
    });
    new Counter({
      name: 'smacks_stanzas_total',
      help: 'Stanzas relayed, by direction (to_client counts those queued for an absent client too)',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'from_client' }, traffic.fromClient);
        this.inc({ direction: 'to_client' }, traffic.toClient);
      },
    });
    new Counter({
      name: 'smacks_stanza_bytes_total',
      help: 'Bytes of the stanzas relayed, by direction',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'from_client' }, traffic.fromClientBytes);
        this.inc({ direction: 'to_client' }, traffic.toClientBytes);
      },
    });
    this.ackRoundTrips = new Histogram({
      name: 'smacks_ack_round_trip_seconds',
      help: "Time from the proxy's <r/> to the client's <a/>",
      buckets: ACK_BUCKETS,
      registers,
    });
    this.sessionsOpened = new Counter({ name: 'smacks_sessions_opened_total', help: 'Client connections that became sessions', registers });
    this.clientErrors = new Counter({
      name: 'smacks_client_errors_total',
      help: 'Client connections refused or ended by the proxy with an error, by code (README, Errors): limits, bad input, TLS handshakes',
      labelNames: ['code'],
      registers,
    });
    this.upstreamConnects = new Counter({
      name: 'smacks_upstream_connects_total',
      help: 'Connections opened to the legacy server, by domain and outcome (ok, failed)',
      labelNames: ['domain', 'outcome'],
      registers,
    });
    this.upstreamConnectSeconds = new Histogram({
      name: 'smacks_upstream_connect_seconds',
      help: 'Time to connect to the legacy server (TCP, and TLS when configured), by domain',
      labelNames: ['domain'],
      buckets: CONNECT_BUCKETS,
      registers,
    });
    this.upstreamUp = new Gauge({
      name: 'smacks_upstream_up',
      help: "1 when the last probe of the domain's legacy server succeeded, 0 when it failed",
      labelNames: ['domain'],
      registers,
    });
    this.webhookEvents = new Counter({
      name: 'smacks_webhook_events_total',
      help: 'Webhook events by outcome: delivered (a 2xx answer), failed (refused for good, or out of attempts), dropped (pushed out of a full queue)',
      labelNames: ['outcome'],
      registers,
    });
    this.follow(events);
  }

  /** Counts the session events (events.ts): endings, resumptions, hibernations, refusals. */
  private follow(events: SmEvents): void {
    const registers = [this.registry];
    const ended = new Counter({
      name: 'smacks_sessions_ended_total',
      help: 'Sessions ended, by reason',
      labelNames: ['reason'],
      registers,
    });
    const atEnd = new Counter({
      name: 'smacks_stanzas_at_end_total',
      help: "Stanzas for the client that were never delivered when its session ended, by outcome: bounced (an error to the sender), dropped (no answer needed, or expiryPolicy drop), lost (the legacy server had ended the stream), handed_over (to a new session of the same client: a login of the resource, a failed resume's bind, or bound again behind the close), unanswerable (arrived after the close), unread (counted as bounced or answered late first: answered on a stream the legacy server ended without reading the answers; kept for the resource's next login)",
      labelNames: ['outcome'],
      registers,
    });
    const resumed = new Counter({
      name: 'smacks_resumptions_total',
      help: 'Successful resumptions, by what was resumed: a hibernating session, or one whose old connection was still attached (taken over)',
      labelNames: ['from'],
      registers,
    });
    const failed = new Counter({
      name: 'smacks_sm_failures_total',
      help: 'Stream management requests answered with <failed/>, by key (README, Errors); resume-* keys are failed resumptions',
      labelNames: ['key'],
      registers,
    });
    const hibernations = new Counter({ name: 'smacks_hibernations_total', help: 'Hibernations started', registers });
    const hibernationSeconds = new Histogram({
      name: 'smacks_hibernation_seconds',
      help: 'How long hibernations lasted, resumed or not',
      buckets: HIBERNATION_BUCKETS,
      registers,
    });
    const hibernationsEnded = new Counter({
      name: 'smacks_hibernations_ended_total',
      help: 'Hibernations ended, by reason (resumed, expired, …)',
      labelNames: ['reason'],
      registers,
    });
    const ackDelayed = new Counter({
      name: 'smacks_ack_delayed_total',
      help: 'Acks overdue (maxAckDelaySeconds): the connection was treated as dead',
      registers,
    });
    const queuedWhileAway = new Counter({
      name: 'smacks_stanzas_queued_while_hibernating_total',
      help: 'Stanzas queued for a hibernating session (push triggers)',
      registers,
    });
    events.on('sessionEnded', (event) => {
      ended.inc({ reason: event.reason });
      if (event.code !== undefined) this.clientErrors.inc({ code: event.code });
      const { unacked, late } = event;
      atEnd.inc({ outcome: 'bounced' }, unacked.bounced + (late?.answered ?? 0));
      atEnd.inc({ outcome: 'dropped' }, unacked.dropped + (late?.dropped ?? 0));
      atEnd.inc({ outcome: 'lost' }, unacked.lost);
      atEnd.inc({ outcome: 'handed_over' }, unacked.handedOver + (late?.handedOver ?? 0));
      atEnd.inc({ outcome: 'unanswerable' }, late?.unanswerable ?? 0);
      atEnd.inc({ outcome: 'unread' }, late?.unread ?? 0);
    });
    events.on('resumed', (event) => resumed.inc({ from: event.tookOver ? 'attached' : 'hibernating' }));
    events.on('smFailed', (event) => failed.inc({ key: event.failed }));
    events.on('hibernationStarted', () => hibernations.inc());
    events.on('hibernationEnded', (event) => {
      hibernationsEnded.inc({ reason: event.reason });
      hibernationSeconds.observe(event.hibernatedMs / 1000);
    });
    events.on('ackDelayed', () => ackDelayed.inc());
    events.on('stanzaQueuedWhileHibernating', () => queuedWhileAway.inc());
  }

  /** Adds prom-client's process and Node.js metrics (CPU, memory, event loop lag, GC); once, when they are served. */
  includeProcessMetrics(): void {
    if (this.processMetrics) return;
    this.processMetrics = true;
    collectDefaultMetrics({ register: this.registry });
  }

  // --- SessionMeter: plain numbers on the hot path ---

  fromClient(bytes: number): void {
    this.traffic.fromClient++;
    this.traffic.fromClientBytes += bytes;
  }

  toClient(bytes: number): void {
    this.traffic.toClient++;
    this.traffic.toClientBytes += bytes;
  }

  ackRoundTrip(ms: number): void {
    this.ackRoundTrips.observe(ms / 1000);
  }

  // --- what the composition root reports ---

  sessionOpened(): void {
    this.sessionsOpened.inc();
  }

  /** A connection refused or dropped before a session ended it (admission limits, TLS handshakes, refusals before TLS). */
  clientError(code: string): void {
    this.clientErrors.inc({ code });
  }

  upstreamConnected(domain: string, seconds: number): void {
    this.upstreamConnects.inc({ domain, outcome: 'ok' });
    this.upstreamConnectSeconds.observe({ domain }, seconds);
  }

  upstreamConnectFailed(domain: string): void {
    this.upstreamConnects.inc({ domain, outcome: 'failed' });
  }

  /** The result of the latest probe of a domain's legacy server (readiness.ts). */
  upstreamProbed(domain: string, up: boolean): void {
    this.upstreamUp.set({ domain }, up ? 1 : 0);
  }

  webhookOutcome(outcome: 'delivered' | 'failed' | 'dropped'): void {
    this.webhookEvents.inc({ outcome });
  }

  /** A domain removed by a reload: its probe result goes. */
  upstreamForgotten(domain: string): void {
    this.upstreamUp.remove({ domain });
  }
}
