/** The settings of the failed-login back-off (config `limits`; README, Limits and abuse). */
export interface FailedLoginPolicy {
  /** Failed logins from one address before its logins are refused for a while; 0 = never refused. */
  readonly maxFailedLogins: number;
  /** The first refusal lasts this long; each further failure doubles it, up to {@link MAX_BACKOFF_MS}. */
  readonly backoffMs: number;
}

/** The longest an address is refused logins for. */
const MAX_BACKOFF_MS = 60 * 60 * 1000;
/** Addresses remembered at most; beyond, the one whose last failure is oldest is forgotten. */
const MAX_ADDRESSES = 100_000;

interface Failures {
  count: number;
  lastMs: number;
}

/**
 * Failed SASL logins per client address (ip-range.ts `addressKey`), for a back-off in the manner
 * of Prosody's mod_limit_auth: behind the proxy, the legacy server sees every client at the
 * proxy's own address, so its per-address protections (ejabberd's mod_fail2ban) would lock every
 * user out; the proxy counts per client instead. After `maxFailedLogins` failures, each within
 * `backoffMs` (plus the refusal in force) of the one before, the address's logins are refused for
 * `backoffMs`, doubled by each further failure. Memory is bounded: quiet addresses are forgotten.
 */
export class FailedLogins {
  /** Insertion-ordered by last failure: the first entry is the quietest. */
  readonly #byAddress = new Map<string, Failures>();

  constructor(private policy: FailedLoginPolicy) {}

  /** A new policy (a config reload), for every address at once, counts kept. */
  setPolicy(policy: FailedLoginPolicy): void {
    this.policy = policy;
  }

  failed(addressKey: string, nowMs: number): void {
    this.#forgetQuiet(nowMs);
    const previous = this.#byAddress.get(addressKey);
    const count = previous !== undefined && nowMs - previous.lastMs <= this.#memoryMs(previous.count) ? previous.count + 1 : 1;
    this.#byAddress.delete(addressKey);
    this.#byAddress.set(addressKey, { count, lastMs: nowMs });
    if (this.#byAddress.size > MAX_ADDRESSES) this.#byAddress.delete(this.#byAddress.keys().next().value!);
  }

  /** How long logins from `addressKey` are still refused, in ms; 0 when they are not. */
  refusedFor(addressKey: string, nowMs: number): number {
    const failures = this.#byAddress.get(addressKey);
    if (failures === undefined) return 0;
    return Math.max(0, failures.lastMs + this.#refusalMs(failures.count) - nowMs);
  }

  #refusalMs(count: number): number {
    const { maxFailedLogins, backoffMs } = this.policy;
    if (maxFailedLogins === 0 || count < maxFailedLogins) return 0;
    return Math.min(MAX_BACKOFF_MS, backoffMs * 2 ** Math.min(count - maxFailedLogins, 32));
  }

  /** How long after its last failure an address's count is kept: the refusal in force, then one more back-off. */
  #memoryMs(count: number): number {
    return this.#refusalMs(count) + this.policy.backoffMs;
  }

  #forgetQuiet(nowMs: number): void {
    for (const [addressKey, failures] of this.#byAddress) {
      if (nowMs - failures.lastMs <= this.#memoryMs(failures.count)) return;
      this.#byAddress.delete(addressKey);
    }
  }
}
