import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { AdminServer, readAdminToken } from './admin/admin-server.js';
import { Readiness } from './admin/readiness.js';
import { Drain } from './admin/drain.js';
import { SessionAdmin } from './admin/session-admin.js';
import { Webhook } from './admin/webhook.js';
import { readSecretFile } from './config/secret-file.js';
import { ProxyMetrics } from './metrics/proxy-metrics.js';
import {
  domainKey,
  findDomain,
  type AdminConfig,
  type ListenerConfig,
  type ProxyConfig,
  type TlsConfig,
  type WebhookConfig,
} from './config/config.js';
import { ConfigError, ErrorCode, StreamError } from './errors.js';
import { SmEvents } from './session/events.js';
import type { FeaturesFindings } from './session/features.js';
import { BUILTIN_HOOKS } from './features/builtin-hooks.js';
import { clientStateIndication } from './features/client-state-indication.js';
import { pushNotifications } from './features/push-notifications.js';
import { sessionLimit } from './features/session-limit.js';
import { failedLoginBackoff } from './features/failed-login-backoff.js';
import { FailedLogins, type FailedLoginPolicy } from './session/failed-logins.js';
import { admit } from './session/admission.js';
import { SessionHooks } from './session/hooks.js';
import { LingeringUpstreams } from './session/lingering-upstream.js';
import { Session } from './session/session.js';
import type { SessionDeps, SessionSettings } from './session/session-deps.js';
import type { SessionMeter } from './session/session-meter.js';
import { SessionRegistry, type RegistryLimits } from './session/session-registry.js';
import { MemoryBudget } from './sm/memory-budget.js';
import { QueueShares, type ShareLimits } from './sm/queue-budget.js';
import type { ClientLink } from './transport/client-link.js';
import type { Listener } from './transport/listener.js';
import type { Server } from 'node:net';
import { StreamManagement } from './sm/stream-management.js';
import { disposeUnacked } from './session/unacked-disposal.js';
import type { EndedReason } from './sm/failures.js';
import type { HibernatedSession } from './session/hibernated-snapshot.js';
import { bare } from './xml/jid.js';
import { listenerKey, type RememberedEnd } from './upgrade/handoff-protocol.js';
import { Upgrade, type MovableSession, type UpgradeOutcome } from './upgrade/upgrade.js';
import type { ChildProcess } from 'node:child_process';
import { TcpListener } from './transport/tcp-listener.js';
import { WebSocketListener } from './transport/websocket-listener.js';
import { CertificateWatcher } from './transport/certificate-watcher.js';
import { addressKey, isLoopbackHost } from './transport/ip-range.js';
import { LiveCredentials } from './transport/live-credentials.js';
import { createTlsCredentials, warnExpiring } from './transport/tls-credentials.js';
import { probeUpstream } from './upstream/upstream-probe.js';
import { RetryingUpstream } from './upstream/retrying-upstream.js';
import { UpstreamLink, type ReleasedUpstream, type UpstreamStream, type UpstreamTarget } from './upstream/upstream-link.js';

/** How often the certificates' expiry is checked while the proxy runs (also at start-up and each reload). */
const EXPIRY_CHECK_INTERVAL_MS = 24 * 60 * 60 * 1000;
/** The config sections a reload compares (README, Reloading). */
const CONFIG_SECTIONS = [
  'listeners',
  'tls',
  'domains',
  'limits',
  'streamManagement',
  'clientStateIndication',
  'push',
  'shutdownGraceSeconds',
  'upgrade',
  'pidFile',
  'admin',
  'webhook',
  'log',
] as const;
/** The sections a reload leaves as they were at start-up (README, Reloading). */
const RESTART_SECTIONS: ReadonlySet<string> = new Set(['admin', 'webhook', 'log', 'pidFile']);

/** The connect timeout of an adopted session's upstream stream whose domain this config no longer serves (only its restarts would use it). */
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** At shutdown, how long the webhook may go on delivering the last events once the sessions are closed. */
const WEBHOOK_FLUSH_MS = 2000;

/** How far above `maxStanzaBytes` a WebSocket message may go before ws itself drops the connection. */
const WEBSOCKET_PAYLOAD_MARGIN_BYTES = 64 * 1024;

/** A bound listener, as reported after start. */
export interface BoundListener {
  readonly type: string;
  readonly host: string;
  readonly port: number;
}

/** Optional seams, for tests and embedding. */
export interface ProxyOptions {
  /** Replaces how upstream links are opened (tests inject faults a real server cannot produce). */
  readonly connectUpstream?: (target: UpstreamTarget, log: Logger) => Promise<UpstreamLink>;
  /** Skip the start-up probe of each legacy server. */
  readonly skipProbe?: boolean;
  /** Replaces what sessions count for the metrics (the relay benchmark measures the metrics' cost against a meter that counts nothing). */
  readonly meter?: SessionMeter;
  readonly now?: () => number;
}

/**
 * The composition root: reads the config, builds the listeners, the session registry and the
 * shared memory budget, and owns start and stop. Nothing else reads the config.
 */
export class Proxy {
  /** Stream-management events for integrations (push, metrics). */
  readonly events = new SmEvents();
  readonly registry: SessionRegistry;
  /** The Prometheus metrics (served by the admin listener when configured). */
  readonly metrics: ProxyMetrics;
  private readonly readiness = new Readiness();
  private readonly drain: Drain;
  private admin: AdminServer | undefined;
  private webhook: Webhook | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  /** Domains whose legacy server is being probed now. */
  private readonly probing = new Set<string>();
  /** The config in effect: the start-up one, then each reload's (its `admin`, `webhook`, `log` and `pidFile` stay the start-up ones; `listeners` those in effect). */
  private config: ProxyConfig;
  /** What new sessions are made with; a reload replaces it, and sessions keep the one they started with. */
  private sessionDeps: SessionDeps;
  /** Every listener this process had, for shutdown: the ones accepting, and those an upgrade stopped. */
  private readonly listeners: Listener[] = [];
  /** The listeners accepting now, by `listenerKey` of their config. */
  private readonly accepting = new Map<string, Listener>();
  private readonly reportedFindings = new Set<string>();
  private readonly now: () => number;
  private credentials: LiveCredentials | undefined;
  /** The `tls` section in effect: the start-up config's, then each reload's. */
  private tlsConfig: TlsConfig;
  private certificateWatcher: CertificateWatcher | undefined;
  private expiryCheck: NodeJS.Timeout | undefined;
  /** Reloads run one after the other: a file change during a SIGHUP reload waits for it. */
  private reloading: Promise<void> = Promise.resolve();
  private stopping: Promise<void> | undefined;
  /** An upgrade's hand-off is under way: reloads change no listeners meanwhile. */
  private upgrading = false;

  constructor(
    config: ProxyConfig,
    private readonly log: Logger,
    private readonly options: ProxyOptions = {},
  ) {
    this.config = config;
    this.tlsConfig = config.tls;
    this.now = options.now ?? Date.now;
    this.registry = new SessionRegistry(registryLimits(config));
    // COMPAT(jabberd2 2.7): every upstream gets the one retry of RetryingUpstream; its condition
    // (internal-server-error before the server answered anything) is narrow enough for any server.
    const connectUpstream =
      options.connectUpstream ??
      ((target: UpstreamTarget, upstreamLog: Logger) =>
        RetryingUpstream.connect((t, l) => UpstreamLink.connect(t, l), target, upstreamLog));
    const failedLogins = new FailedLogins(failedLoginPolicy(config));
    const queueShares = new QueueShares(new MemoryBudget(config.streamManagement.globalQueueBytes), queueShareLimits(config));
    const registry = this.registry;
    this.metrics = new ProxyMetrics(
      {
        *sessions() {
          for (const session of registry.sessions()) yield session.summary();
        },
        queueBytes: () => ({
          used: queueShares.global.usedBytes,
          limit: queueShares.global.limitBytes,
          waiting: queueShares.waitingForRoom,
        }),
      },
      this.events,
    );
    this.drain = new Drain({
      sessions: () => this.registry.sessions(),
      stopAccepting: () => this.stopAccepting(),
      readiness: this.readiness,
      log: this.log.child({ component: 'admin' }),
    });
    this.sessionDeps = {
      settings: sessionSettings(config),
      registry: this.registry,
      events: this.events,
      queueShares,
      failedLogins,
      lingering: new LingeringUpstreams(),
      meter: options.meter ?? this.metrics,
      hooks: new SessionHooks([
        ...BUILTIN_HOOKS,
        failedLoginBackoff(failedLogins, this.now),
        sessionLimit(
          () => this.registry.boundCount,
          () => this.config.limits.maxSessions,
        ),
        clientStateIndication(() => this.config.clientStateIndication.enabled, this.now),
        ...pushNotifications(() => {
          const push = this.config.push;
          return {
            enabled: push.enabled,
            intervalMs: push.intervalSeconds * 1000,
            hibernationMs: push.hibernationSeconds * 1000,
            withSender: push.withSender,
            withBody: push.withBody,
          };
        }, this.now),
      ]),
      upstreamFor: (domain) => this.upstreamTarget(domain),
      connectUpstream: (target, upstreamLog) => this.timedConnect(connectUpstream, target, upstreamLog),
      reportFindings: (domain, findings) => this.reportFindings(domain, findings),
      now: this.now,
    };
  }

  /**
   * Loads the certificates, binds every listener, and probes the legacy servers (in the background).
   * `inherited`: listening sockets the previous process handed over (an upgrade), by `listenerKey`;
   * a listener of this config takes its own over instead of binding, and one no listener takes is closed.
   */
  async start(inherited: ReadonlyMap<string, Server> = new Map()): Promise<BoundListener[]> {
    await this.prepare();
    const domains = Object.keys(this.config.domains);
    const bound: BoundListener[] = [];
    const admin = this.config.admin;
    for (const listenerConfig of this.config.listeners) {
      const key = listenerKey(listenerConfig);
      bound.push({ type: listenerConfig.type, ...(await this.startListener(listenerConfig, inherited.get(key))) });
    }
    for (const [key, server] of inherited) {
      if (this.accepting.has(key) || (admin !== undefined && key === adminKey(admin))) continue;
      this.log.warn({ listener: key }, 'upgrade: a listener of the previous process is not in this config; it is closed');
      server.close();
    }
    this.readiness.listenersBound();
    if (admin !== undefined) bound.push({ type: 'admin', ...(await this.startAdmin(admin, inherited.get(adminKey(admin)))) });
    if (this.config.webhook !== undefined) await this.startWebhook(this.config.webhook);
    for (const [domain, { upstream }] of Object.entries(this.config.domains)) {
      if (upstream.security !== 'plain' || isLoopbackHost(upstream.host)) continue;
      this.log.warn(
        { domain, upstream: `${upstream.host}:${upstream.port}` },
        'plain hop to a legacy server off this host: logins and messages cross the network unencrypted; use "security": "starttls" or "tls"',
      );
    }
    if (this.options.skipProbe !== true) {
      for (const domain of domains) void this.probe(domain);
    }
    return bound;
  }

  /**
   * Loads the certificates (and starts watching them): what `start` does before it binds, done
   * first by a new process of an upgrade, before it asks for the listening sockets (README, Upgrading).
   */
  async prepare(): Promise<void> {
    if (this.credentials !== undefined) return;
    const tlsLog = this.log.child({ component: 'tls' });
    const credentials = new LiveCredentials(await createTlsCredentials(this.tlsConfig, Object.keys(this.config.domains), tlsLog));
    this.credentials = credentials;
    this.watchCertificates();
    this.expiryCheck = setInterval(() => warnExpiring(credentials.entries, tlsLog, Date.now()), EXPIRY_CHECK_INTERVAL_MS);
    this.expiryCheck.unref();
  }

  private async startListener(config: ListenerConfig, inherited?: Server): Promise<{ host: string; port: number }> {
    const listener = this.createListener(config, this.credentials!);
    this.listeners.push(listener);
    this.accepting.set(listenerKey(config), listener);
    return listener.listen(inherited);
  }

  // --- an upgrade's hand-off (upgrade/upgrade.ts; README, Upgrading) ---

  /** Hands the listeners and every session that can move to `next`, a new process of the proxy that was just started. */
  async upgrade(next: ChildProcess): Promise<UpgradeOutcome> {
    const { resumesPerSecond, windowSeconds } = this.config.upgrade;
    // After the listener changes of reloads already under way; none starts until the hand-off is over.
    await this.reloading;
    this.upgrading = true;
    try {
      const log = this.log.child({ component: 'upgrade' });
      return await new Upgrade(this, { resumesPerSecond, windowMs: windowSeconds * 1000 }, log, this.now).run(next);
    } finally {
      this.upgrading = false;
    }
  }

  listeningSockets(): ReadonlyMap<string, Server> {
    const sockets = new Map([...this.accepting].map(([key, listener]) => [key, listener.server]));
    const admin = this.config.admin;
    if (this.admin !== undefined && admin !== undefined) sockets.set(adminKey(admin), this.admin.server);
    return sockets;
  }

  stopAccepting(): void {
    for (const listener of this.accepting.values()) void listener.stopAccepting();
    this.accepting.clear();
  }

  /** Stops accepting, on the admin listener too: the new process of an upgrade serves both. */
  handListenersOver(): void {
    this.stopAccepting();
    this.admin?.stopAccepting();
  }

  async acceptAgain(): Promise<void> {
    const binds = [...this.config.listeners.map((config) => () => this.startListener(config)), async () => this.admin?.listen()];
    for (const bind of binds) {
      try {
        await bind();
      } catch (err) {
        this.log.error({ code: ErrorCode.LISTEN, err: (err as Error).message }, 'upgrade failed and a listener cannot bind again');
      }
    }
  }

  sessions(): Iterable<Session> {
    return this.registry.sessions();
  }

  rememberedEnded(): RememberedEnd[] {
    return this.registry.rememberedEnded(this.now()).map(([smId, ended]) => ({ smId, ...ended }));
  }

  /** The previous process of an upgrade will hand these sessions over (registry `expectArrivals`). */
  expectArrivals(smIds: readonly string[]): void {
    this.registry.expectArrivals(smIds);
  }

  /** The hand-off is over, or failed (registry `forgetElsewhere`). */
  handOffOver(): void {
    this.registry.forgetElsewhere();
  }

  rememberEnded(sessions: readonly RememberedEnd[]): void {
    for (const { smId, ...ended } of sessions) this.registry.endResumable(smId, ended);
  }

  canMove(session: MovableSession): boolean {
    const domain = session.domain;
    return domain !== undefined && findDomain(this.config, domain)?.upstream.security === 'plain';
  }

  /**
   * A hibernated session the previous process handed over, with its upstream socket (undefined when
   * that closed on the way): it goes on hibernating here. One that does not fit this process's
   * queue limits ends as at expiry, its queue answered through its upstream stream.
   */
  adopt(session: HibernatedSession, released: ReleasedUpstream | undefined): void {
    const log = this.log.child({ sid: session.sid, jid: session.jid });
    const queued = session.sm.queue.entries.map((entry) => entry.bytes);
    // One that cannot go on here ends as it would have there: a late <resume/> learns so, with its h.
    const ended = (reason: EndedReason): void =>
      this.registry.endResumable(session.sm.id, {
        h: session.sm.h,
        bareJid: bare(session.jid),
        domain: session.domain,
        reason,
        endedAtMs: this.now(),
      });
    if (released === undefined) {
      log.warn(
        { code: ErrorCode.UPGRADE, lost: queued.length },
        'upgrade: a session came without its upstream stream, which had closed; its queue is lost',
      );
      ended('upstream-lost');
      return;
    }
    const target = this.upstreamTarget(session.domain) ?? {
      domain: session.domain,
      host: released.socket.remoteAddress ?? '',
      port: released.socket.remotePort ?? 0,
      security: 'plain',
      connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
      rejectUnauthorized: true,
    };
    const upstream = UpstreamLink.adopt(released, target, log);
    const deps = this.sessionDeps;
    const sm = StreamManagement.restore(session.sm, deps.settings, deps.queueShares.forSession(bare(session.jid), session.addressKey));
    if (sm instanceof StreamManagement) {
      const adopted = new Session(deps, { session, upstream, sm, log });
      // Stopping already (SIGTERM during the hand-off): it ends with the others.
      if (this.stopping !== undefined) adopted.shutdown();
      return;
    }
    log.warn(
      { code: ErrorCode.SM_QUEUE_OVERFLOW, queued: queued.length, limit: `${sm.reason} ${sm.limit}` },
      'upgrade: a handed-over session does not fit this process queue limits; it ends as at expiry',
    );
    disposeUnacked(queued, deps.settings.expiryPolicy, { upstream, jid: session.jid }, log);
    upstream.close();
    upstream.resume();
    ended('queue-overflow');
  }

  /** The admin listener (README, Metrics and health), and the periodic probes its `/readyz` reports. */
  private async startAdmin(config: AdminConfig, inherited: Server | undefined): Promise<{ host: string; port: number }> {
    const log = this.log.child({ component: 'admin' });
    const token = config.tokenFile === undefined ? undefined : await readAdminToken(config.tokenFile);
    if (token === undefined && !isLoopbackHost(config.host)) {
      log.warn({ host: config.host }, 'admin listener off loopback without admin.tokenFile: anyone who reaches it reads the metrics');
    }
    this.metrics.includeProcessMetrics();
    this.admin = new AdminServer({
      host: config.host,
      port: config.port,
      token,
      registry: this.metrics.registry,
      readiness: () => this.readiness.report(Object.keys(this.config.domains)),
      sessions: new SessionAdmin(() => this.registry.sessions()),
      drain: (ratePerSecond) => this.drain.start(ratePerSecond),
      log,
    });
    const address = await this.admin.listen(inherited);
    log.info({ address: `${address.host}:${address.port}` }, 'admin listener ready');
    if (this.options.skipProbe !== true) {
      this.probeTimer = setInterval(() => {
        for (const domain of Object.keys(this.config.domains)) void this.probe(domain);
      }, config.probeIntervalSeconds * 1000);
      this.probeTimer.unref();
    }
    return address;
  }

  /** The webhook of the SM events (README, Webhook). */
  private async startWebhook(config: WebhookConfig): Promise<void> {
    const log = this.log.child({ component: 'webhook' });
    const secret = await readSecretFile(config.secretFile, '/webhook/secretFile', ErrorCode.WEBHOOK_SECRET);
    const url = new URL(config.url);
    if (url.protocol === 'http:' && !isLoopbackHost(url.hostname.replace(/^\[(.*)\]$/, '$1'))) {
      log.warn({ url: url.origin }, 'webhook over plain http:// off this host: the events and their JIDs cross the network unencrypted');
    }
    this.webhook = new Webhook(
      {
        url: config.url,
        secret,
        events: config.events,
        maxQueue: config.maxQueue,
        timeoutMs: config.timeoutSeconds * 1000,
        maxAttempts: config.maxAttempts,
        outcome: (outcome) => this.metrics.webhookOutcome(outcome),
        log,
        now: this.now,
      },
      this.events,
    );
    log.info({ url: url.origin, events: config.events }, 'webhook ready');
  }

  /** Opens an upstream link, timed for the metrics under the domain's configured name. */
  private async timedConnect(
    connect: (target: UpstreamTarget, log: Logger) => Promise<UpstreamStream>,
    target: UpstreamTarget,
    log: Logger,
  ): Promise<UpstreamStream> {
    // Metrics labels are the configured names, however the client spelt the domain.
    const domain = domainKey(target.domain);
    const startedMs = performance.now();
    try {
      const upstream = await connect(target, log);
      this.metrics.upstreamConnected(domain, (performance.now() - startedMs) / 1000);
      return upstream;
    } catch (err) {
      this.metrics.upstreamConnectFailed(domain);
      throw err;
    }
  }

  /**
   * Applies a re-read config file (SIGHUP; README, Reloading): domains, limits, stream management
   * and the shutdown grace take effect for what starts from now on (which keys reach existing
   * sessions: README), listeners added or removed (`reloadListeners`), the certificates loaded
   * again; `admin`, `webhook`, `log` and `pidFile` wait for an upgrade or a restart and are named
   * at warn when they changed. Never throws: certificates that cannot be loaded leave
   * the ones in use in place.
   */
  reload(next: ProxyConfig): Promise<void> {
    const changed = CONFIG_SECTIONS.filter((key) => JSON.stringify(next[key]) !== JSON.stringify(this.config[key]));
    const waiting = changed.filter((key) => RESTART_SECTIONS.has(key));
    if (waiting.length > 0) {
      this.log.warn({ sections: waiting }, 'config reloaded: these sections changed and take effect at the next upgrade or restart');
    }
    const before = this.config;
    this.config = {
      ...next,
      listeners: before.listeners,
      admin: before.admin,
      webhook: before.webhook,
      log: before.log,
      pidFile: before.pidFile,
    };
    this.tlsConfig = next.tls;
    this.sessionDeps = { ...this.sessionDeps, settings: sessionSettings(this.config) };
    this.sessionDeps.queueShares.global.setLimit(this.config.streamManagement.globalQueueBytes);
    this.sessionDeps.queueShares.setLimits(queueShareLimits(this.config));
    this.registry.setLimits(registryLimits(this.config));
    this.sessionDeps.failedLogins.setPolicy(failedLoginPolicy(this.config));
    const added = Object.keys(this.config.domains).filter((domain) => findDomain(before, domain) === undefined);
    const removed = Object.keys(before.domains).filter((domain) => findDomain(this.config, domain) === undefined);
    for (const domain of removed) {
      this.readiness.forget(domain);
      this.metrics.upstreamForgotten(domain);
    }
    this.log.info({ changed, domainsAdded: added, domainsRemoved: removed }, 'config reloaded');
    if (this.options.skipProbe !== true) {
      for (const domain of added) void this.probe(domain);
    }
    // In turn with the other reloads, and compared with the listeners in effect when its turn comes:
    // two SIGHUPs close together must leave the second one's listeners.
    this.reloading = this.reloading
      .then(async () => {
        if (JSON.stringify(next.listeners) === JSON.stringify(this.config.listeners)) return;
        this.config = { ...this.config, listeners: await this.reloadListeners(next.listeners) };
      })
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'config reloaded: the listeners could not be changed'));
    return this.reloadCertificates('SIGHUP');
  }

  /**
   * The listeners of a reloaded config (README, Reloading): one added is bound, one removed stops
   * accepting (its connections go on); one changed in place (same type and address, other
   * settings), or replaced by another type on its address, waits for the next upgrade or restart,
   * since its port cannot be bound twice. Returns the listeners in effect.
   */
  private async reloadListeners(next: readonly ListenerConfig[]): Promise<ListenerConfig[]> {
    const current = this.config.listeners;
    const closed = (): boolean => this.stopping !== undefined || this.upgrading || (this.accepting.size === 0 && current.length > 0);
    if (closed()) {
      // Stopping, drained, or upgrading: the listeners are this process's to give up, not to change.
      this.log.warn('config reloaded: listeners not changed, this process is stopping, drained or upgrading');
      return [...current];
    }
    const sameAddress = (a: ListenerConfig, b: ListenerConfig): boolean => a.port !== 0 && a.port === b.port && a.host === b.host;
    const wanted = new Map(next.map((config) => [listenerKey(config), config]));
    const effective: ListenerConfig[] = [];
    const report = { added: [] as string[], removed: [] as string[], waiting: [] as string[], failed: [] as string[] };
    for (const config of current) {
      const key = listenerKey(config);
      const want = wanted.get(key);
      if (want === undefined && !next.some((other) => sameAddress(other, config))) {
        void this.accepting.get(key)?.stopAccepting();
        this.accepting.delete(key);
        report.removed.push(key);
        continue;
      }
      effective.push(config);
      if (want === undefined || JSON.stringify(want) !== JSON.stringify(config)) report.waiting.push(key);
    }
    for (const [key, config] of wanted) {
      if (current.some((old) => listenerKey(old) === key || sameAddress(old, config))) continue;
      // Checked again at each bind: a stop, drain or upgrade may have begun meanwhile.
      if (closed()) break;
      try {
        await this.startListener(config);
        effective.push(config);
        report.added.push(key);
      } catch (err) {
        this.log.error(
          { code: ErrorCode.LISTEN, listener: key, err: (err as Error).message },
          'config reloaded: a new listener cannot bind',
        );
        report.failed.push(key);
      }
    }
    this.log.info(report, 'listeners reloaded');
    return effective;
  }

  private reloadCertificates(trigger: 'SIGHUP' | 'file change'): Promise<void> {
    this.reloading = this.reloading.then(() => this.loadCertificatesAgain(trigger));
    return this.reloading;
  }

  private async loadCertificatesAgain(trigger: 'SIGHUP' | 'file change'): Promise<void> {
    const live = this.credentials;
    if (live === undefined || this.stopping !== undefined) return;
    const log = this.log.child({ component: 'tls' });
    let next;
    try {
      next = await createTlsCredentials(this.tlsConfig, Object.keys(this.config.domains), log);
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
      log.error({ code: ErrorCode.TLS_CREDENTIALS, trigger, problems }, 'certificate reload failed; the certificates in use stay');
      return;
    }
    // Checked again: the proxy may have begun to stop while the files were read.
    if (this.stopping !== undefined) return;
    const before = new Set(live.entries.map((entry) => entry.fingerprint256));
    const changed = next.entries
      .filter((entry) => !before.has(entry.fingerprint256))
      .map(({ source, certFile, fingerprint256, validTo }) => ({ source, cert: certFile, fingerprint256, validTo: validTo.toISOString() }));
    live.replace(next);
    this.watchCertificates();
    log.info(
      { trigger, changed },
      changed.length === 0 ? 'certificates reloaded; none changed' : 'certificates reloaded; new handshakes get the new ones',
    );
  }

  /** Watches the certificate and key files of the `tls` section in effect (README, Reloading). */
  private watchCertificates(): void {
    this.certificateWatcher?.close();
    const files = this.tlsConfig.certificates.flatMap((certificate) => [certificate.cert, certificate.key]);
    this.certificateWatcher =
      files.length === 0
        ? undefined
        : new CertificateWatcher(files, () => void this.reloadCertificates('file change'), this.log.child({ component: 'tls' }));
  }

  private createListener(config: ListenerConfig, credentials: LiveCredentials): Listener {
    const common = {
      host: config.host,
      port: config.port,
      credentials,
      // Before authentication; the session raises maxStanzaBytes after SASL success.
      limits: () => ({ maxStanzaBytes: this.config.limits.maxStanzaBytesPreAuth, maxDepth: this.config.limits.maxDepth }),
      log: this.log.child({ listener: `${config.type}:${config.port}` }),
      onLink: (link: ClientLink, log: Logger) => this.onLink(link, log),
      refused: (code: ErrorCode) => this.metrics.clientError(code),
      newSid,
    };
    if (config.type === 'websocket') {
      return new WebSocketListener({
        ...common,
        tls: config.tls,
        path: config.path,
        allowedOrigins: config.allowedOrigins,
        pingIntervalMs: config.pingIntervalSeconds * 1000,
        trustedProxies: config.trustedProxies,
        proxyProtocolFrom: config.proxyProtocolFrom,
        // RFC 7395 framing: one element per message. ws closes with 1009 on its own, before the
        // proxy could send a stream error; so it only stops what is far over the limit, and the
        // scanner refuses a stanza over maxStanzaBytes with policy-violation + stanza-too-big.
        maxPayloadBytes: this.config.limits.maxStanzaBytes + WEBSOCKET_PAYLOAD_MARGIN_BYTES,
      });
    }
    return new TcpListener({
      ...common,
      type: config.type,
      proxyProtocolFrom: config.proxyProtocolFrom,
      isServedDomain: (domain) => findDomain(this.config, domain) !== undefined,
    });
  }

  /**
   * Stops listening and ends every session: `<system-shutdown/>` to attached clients, hibernating
   * sessions expire (their unacked stanzas are answered), upstream streams close cleanly. After
   * `shutdownGraceSeconds` whatever is left is destroyed.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.log.info({ sessions: this.registry.size }, 'shutting down');
    this.readiness.stopStarted();
    this.drain.stop();
    this.certificateWatcher?.close();
    clearInterval(this.expiryCheck);
    clearInterval(this.probeTimer);
    const clientsGone = Promise.all(this.listeners.map((listener) => listener.stopAccepting()));
    for (const session of [...this.registry.sessions()]) session.shutdown();
    // Ended sessions' upstream streams answer late stanzas until the legacy server closed them.
    const lingering = this.sessionDeps.lingering;
    const closing = Promise.all([clientsGone, lingering.idle()]);
    const graceMs = this.config.shutdownGraceSeconds * 1000;
    const timedOut = await Promise.race([closing.then(() => false), delay(graceMs).then(() => true)]);
    if (timedOut) this.log.warn({ graceMs, lingering: lingering.count }, 'connections still open after the grace period; destroying them');
    for (const listener of this.listeners) listener.destroyAll();
    lingering.destroyAll();
    await closing;
    lingering.kept.dropAll(this.log);
    // The sessions' last events (hibernationEnded at shutdown) get a moment to reach the webhook.
    if (this.webhook !== undefined) await Promise.race([this.webhook.idle(), delay(WEBHOOK_FLUSH_MS)]);
    const undelivered = this.webhook?.stop() ?? 0;
    if (undelivered > 0) this.log.warn({ code: ErrorCode.WEBHOOK_DELIVERY, undelivered }, 'webhook events left undelivered at shutdown');
    // Last: /readyz says 503 to load balancers for as long as sessions are being ended.
    await this.admin?.close();
    this.log.info('stopped');
  }

  private onLink(link: ClientLink, log: Logger): void {
    if (this.stopping !== undefined) {
      this.metrics.clientError(ErrorCode.SHUTDOWN);
      link.fail(new StreamError(ErrorCode.SHUTDOWN, 'system-shutdown', 'the proxy is shutting down'));
      return;
    }
    const limits = this.config.limits;
    const key = addressKey(link.address, limits.ipv6PrefixLength);
    const counts = {
      pending: this.registry.pendingCount,
      pendingFromAddress: this.registry.pendingFrom(key),
      fromAddress: this.registry.countFrom(key),
    };
    const admission = admit(counts, limits);
    if (admission.kind === 'refuse') {
      log.warn(
        { code: admission.error.code, address: link.address, err: admission.error.message },
        'per-address limit reached; connection refused',
      );
      this.metrics.clientError(admission.error.code);
      link.fail(admission.error);
      return;
    }
    if (admission.evictOldest) {
      const oldest = this.registry.oldestPending();
      oldest?.log.info(
        { code: ErrorCode.UNAUTHENTICATED_EVICTED, limit: limits.maxUnauthenticated },
        'too many connections logging in; the longest waiting one makes room',
      );
      oldest?.fail(
        new StreamError(
          ErrorCode.UNAUTHENTICATED_EVICTED,
          'resource-constraint',
          'too many connections are logging in; yours waited longest',
        ),
      );
    }
    this.metrics.sessionOpened();
    new Session(this.sessionDeps, { sid: (log.bindings().sid as string | undefined) ?? newSid(), link, addressKey: key, log });
  }

  private upstreamTarget(domain: string): UpstreamTarget | undefined {
    const entry = findDomain(this.config, domain);
    if (entry === undefined) return undefined;
    const upstream = entry.upstream;
    return {
      domain,
      host: upstream.host,
      port: upstream.port,
      security: upstream.security,
      connectTimeoutMs: upstream.connectTimeoutSeconds * 1000,
      rejectUnauthorized: upstream.rejectUnauthorized,
      serverName: upstream.serverName,
      proxyProtocol: upstream.proxyProtocol === 'off' ? undefined : upstream.proxyProtocol,
    };
  }

  private async probe(domain: string): Promise<void> {
    const target = this.upstreamTarget(domain);
    // One probe per domain at a time: a slow one must not overwrite a newer result when it ends.
    if (target === undefined || this.probing.has(domain)) return;
    this.probing.add(domain);
    try {
      await this.probeOnce(domain, target);
    } finally {
      this.probing.delete(domain);
    }
  }

  private async probeOnce(domain: string, target: UpstreamTarget): Promise<void> {
    const log = this.log.child({ domain, upstream: `${target.host}:${target.port}` });
    const result = await probeUpstream(target, log);
    // A probe that ends after a reload removed the domain, or after the stop began, reports nothing.
    if (this.stopping !== undefined || findDomain(this.config, domain) === undefined) return;
    const outcome = result.ok ? { up: true, atMs: this.now() } : { up: false, atMs: this.now(), error: result.error };
    this.metrics.upstreamProbed(domain, outcome.up);
    // Logged when the state changes: the periodic probes of the admin listener repeat silently.
    if (!this.readiness.probed(domain, outcome)) return;
    if (!result.ok) {
      log.warn(
        { code: ErrorCode.UPSTREAM_CONNECT, err: result.error },
        'legacy server probe failed; clients will get remote-connection-failed until it answers',
      );
      return;
    }
    log.info({ mechanisms: result.mechanisms }, 'legacy server reachable');
    this.reportFindings(domain, result.findings);
  }

  /**
   * README, Security: -PLUS mechanisms or XEP-0440 channel-binding types on the hop are said loudly.
   * Clients that pin them will see a downgrade; the README explains the fix (a plaintext hop).
   */
  private reportFindings(domain: string, findings: FeaturesFindings): void {
    if (findings.channelBindingMechanisms.length === 0 && !findings.channelBindingTypes) return;
    if (this.reportedFindings.has(domain)) return;
    this.reportedFindings.add(domain);
    this.log.warn(
      { domain, mechanisms: findings.channelBindingMechanisms, channelBindingTypes: findings.channelBindingTypes },
      'legacy server advertises SASL channel binding, which cannot work through a TLS-terminating proxy: clients that use it will fail to authenticate (see README, Security)',
    );
  }
}

function newSid(): string {
  return randomBytes(6).toString('base64url');
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** What a session applies, in the units the code uses. */
function sessionSettings(config: ProxyConfig): SessionSettings {
  const sm = config.streamManagement;
  return {
    maxStanzaBytes: config.limits.maxStanzaBytes,
    maxStanzaBytesPreAuth: config.limits.maxStanzaBytesPreAuth,
    authTimeoutMs: config.limits.authTimeoutSeconds * 1000,
    hibernationMs: sm.hibernationSeconds * 1000,
    maxHibernationMs: sm.maxHibernationSeconds * 1000,
    maxUnackedStanzas: sm.maxUnackedStanzas,
    maxAckDelayMs: sm.maxAckDelaySeconds * 1000,
    ackRequestIntervalMs: sm.ackRequestIntervalSeconds * 1000,
    maxQueueStanzas: sm.maxQueueStanzas,
    maxQueueBytes: sm.maxQueueBytes,
    expiryPolicy: sm.expiryPolicy,
    strandedMs: sm.strandedSeconds * 1000,
    upstreamKeepaliveMs: sm.upstreamKeepaliveSeconds * 1000,
  };
}

function registryLimits(config: ProxyConfig): RegistryLimits {
  return {
    rememberEndedMs: config.streamManagement.rememberExpiredSeconds * 1000,
    maxRememberedEnded: config.streamManagement.maxRememberedExpired,
  };
}

function queueShareLimits(config: ProxyConfig): ShareLimits {
  return {
    perAccountBytes: config.streamManagement.maxQueueBytesPerAccount,
    perAddressBytes: config.streamManagement.maxQueueBytesPerAddress,
  };
}

function failedLoginPolicy(config: ProxyConfig): FailedLoginPolicy {
  return { maxFailedLogins: config.limits.maxFailedLogins, backoffMs: config.limits.failedLoginBackoffSeconds * 1000 };
}

/** The name the admin listener's socket travels under in an upgrade's hand-off. */
function adminKey(admin: AdminConfig): string {
  return listenerKey({ type: 'admin', host: admin.host, port: admin.port });
}
