/** The latest probe of one domain's legacy server (upstream-probe.ts). */
export interface ProbeOutcome {
  readonly up: boolean;
  readonly atMs: number;
  /** Why it failed, when it did. */
  readonly error?: string;
}

/** What `GET /readyz` answers (README, Metrics and health). */
export interface ReadinessReport {
  readonly ready: boolean;
  /** Every client listener is bound. */
  readonly listening: boolean;
  /** The proxy is shutting down: a load balancer should send no one here. */
  readonly stopping: boolean;
  /** An operator drains the proxy (drain.ts): the same for the load balancer. */
  readonly draining: boolean;
  /** Per served domain: whether its legacy server answered the latest probe; `up: null` before the first. */
  readonly domains: Readonly<Record<string, { readonly up: boolean | null; readonly checkedAt?: string; readonly error?: string }>>;
}

/**
 * Whether the proxy can serve users now: its listeners are bound, it is not stopping, and each
 * served domain's legacy server answered its latest probe. The proxy probes at start-up, after a
 * reload adds a domain, and every `admin.probeIntervalSeconds`; this keeps the results.
 */
export class Readiness {
  private readonly probes = new Map<string, ProbeOutcome>();
  private listening = false;
  private stopping = false;
  private draining = false;

  listenersBound(): void {
    this.listening = true;
  }

  stopStarted(): void {
    this.stopping = true;
  }

  drainStarted(): void {
    this.draining = true;
  }

  /** Records a probe; returns whether the domain's state changed (first result, or up ↔ down), for the log. */
  probed(domain: string, outcome: ProbeOutcome): boolean {
    const before = this.probes.get(domain);
    this.probes.set(domain, outcome);
    return before === undefined || before.up !== outcome.up;
  }

  /** A domain a reload removed. */
  forget(domain: string): void {
    this.probes.delete(domain);
  }

  report(domains: readonly string[]): ReadinessReport {
    const entries = domains.map((domain) => {
      const probe = this.probes.get(domain);
      if (probe === undefined) return [domain, { up: null }] as const;
      const checkedAt = new Date(probe.atMs).toISOString();
      return [domain, probe.error === undefined ? { up: probe.up, checkedAt } : { up: probe.up, checkedAt, error: probe.error }] as const;
    });
    const allUp = entries.every(([, entry]) => entry.up === true);
    return {
      ready: this.listening && !this.stopping && !this.draining && allUp,
      listening: this.listening,
      stopping: this.stopping,
      draining: this.draining,
      domains: Object.fromEntries(entries),
    };
  }
}
