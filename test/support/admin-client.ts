import parsePrometheusTextFormat, { type PrometheusFamily, type PrometheusSample } from 'parse-prometheus-text-format';

/** One answer of the admin listener. */
export interface AdminAnswer {
  readonly status: number;
  readonly contentType: string | null;
  readonly body: string;
}

/** `GET path` on the admin listener at 127.0.0.1:`port`, with `token` as a bearer token when given. */
export async function adminGet(port: number, path: string, token?: string): Promise<AdminAnswer> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  return { status: response.status, contentType: response.headers.get('content-type'), body: await response.text() };
}

/** A scrape of `/metrics`, parsed by a Prometheus text-format parser, with lookups by name and labels. */
export class Scrape {
  private constructor(readonly families: readonly PrometheusFamily[]) {}

  static async of(port: number, token: string | undefined): Promise<Scrape> {
    const answer = await adminGet(port, '/metrics', token);
    if (answer.status !== 200) throw new Error(`GET /metrics: HTTP ${answer.status}: ${answer.body}`);
    return new Scrape(parsePrometheusTextFormat(answer.body));
  }

  family(name: string): PrometheusFamily {
    const family = this.families.find((f) => f.name === name);
    if (family === undefined) throw new Error(`no metric ${name} in the scrape`);
    return family;
  }

  /** The value of the counter or gauge sample of `name` whose labels include `labels`; 0 when there is none yet. */
  value(name: string, labels: Record<string, string> = {}): number {
    const sample = this.sample(name, labels);
    return sample === undefined ? 0 : Number(sample.value);
  }

  /** The observation count of a histogram; 0 when there is no sample yet. */
  count(name: string, labels: Record<string, string> = {}): number {
    const sample = this.sample(name, labels);
    return sample === undefined ? 0 : Number(sample.count);
  }

  private sample(name: string, labels: Record<string, string>): PrometheusSample | undefined {
    return this.family(name).metrics.find((m) => Object.entries(labels).every(([key, value]) => m.labels?.[key] === value));
  }
}
