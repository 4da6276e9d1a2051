import type { Resolver } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import type { ProxyConfig } from '../config/config.js';

/** One line of `smacks-proxy --check dns`: `error` would send clients elsewhere; `warning` may. */
export interface DnsFinding {
  readonly level: 'ok' | 'warning' | 'error';
  readonly text: string;
}

/** RFC 6120 §3.2.1 (STARTTLS, default port 5222) and XEP-0368 (direct TLS), by the listener type that serves each. */
const SERVICES = [
  { service: '_xmpp-client._tcp', listener: 'starttls', fallbackPort: 5222 },
  { service: '_xmpps-client._tcp', listener: 'directtls', fallbackPort: undefined },
] as const;

/** Lookups that mean "no such record" rather than a failed lookup. */
const NO_RECORD = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * The client SRV records of every served domain, checked against the proxy's listeners, in the
 * manner of `prosodyctl check dns`: each record must point at a port where a listener of the right
 * kind listens, its target must have an address, and (a warning only: NAT and load balancers
 * differ) one of those addresses should be this host's.
 */
export async function checkDns(config: ProxyConfig, resolver: Resolver, localAddresses = hostAddresses()): Promise<DnsFinding[]> {
  const findings: DnsFinding[] = [];
  for (const domain of Object.keys(config.domains)) {
    for (const { service, listener, fallbackPort } of SERVICES) {
      const ports = new Set(config.listeners.filter((l) => l.type === listener).map((l) => l.port));
      const name = `${service}.${domain}`;
      let records;
      try {
        records = await resolver.resolveSrv(name);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (!NO_RECORD.has(code)) {
          findings.push({ level: 'error', text: `${name}: the lookup failed (${code || (err as Error).message})` });
        } else if (ports.size > 0) {
          const fallback =
            fallbackPort === undefined
              ? 'clients will not find the direct TLS port'
              : `clients fall back to ${domain}:${fallbackPort}${ports.has(fallbackPort) ? ', where a STARTTLS listener is' : ', where no STARTTLS listener is'}`;
          findings.push({
            level: fallbackPort !== undefined && ports.has(fallbackPort) ? 'ok' : 'warning',
            text: `${name}: no SRV record; ${fallback}`,
          });
        }
        continue;
      }
      for (const record of records) {
        const where = `${name} → ${record.name}:${record.port}`;
        // RFC 2782: a target of "." says the service is decidedly not available.
        if (record.name === '' || record.name === '.') {
          findings.push({ level: ports.size > 0 ? 'warning' : 'ok', text: `${name}: "." says the service is not offered` });
          continue;
        }
        if (!ports.has(record.port)) {
          const have = ports.size === 0 ? `there is no ${listener} listener` : `the ${listener} listeners are on ${[...ports].join(', ')}`;
          findings.push({ level: 'error', text: `${where}: ${have}` });
          continue;
        }
        const addresses = await targetAddresses(resolver, record.name);
        if (addresses.length === 0) {
          findings.push({ level: 'error', text: `${where}: ${record.name} has no A or AAAA record` });
        } else if (!addresses.some((address) => localAddresses.has(address))) {
          findings.push({
            level: 'warning',
            text: `${where}: ${record.name} is ${addresses.join(', ')}, none of them this host's (fine behind NAT or a load balancer)`,
          });
        } else {
          findings.push({ level: 'ok', text: `${where}: a ${listener} listener, on this host (${addresses.join(', ')})` });
        }
      }
    }
  }
  return findings;
}

/** The A and AAAA records of `name`; empty when it has none (or the lookups failed). */
export async function targetAddresses(resolver: Resolver, name: string): Promise<string[]> {
  const lookups = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  return lookups.flatMap((lookup) => (lookup.status === 'fulfilled' ? lookup.value : []));
}

function hostAddresses(): Set<string> {
  return new Set(
    Object.values(networkInterfaces())
      .flat()
      .flatMap((entry) => (entry === undefined ? [] : [entry.address])),
  );
}
