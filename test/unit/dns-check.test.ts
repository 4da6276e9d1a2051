import type { Resolver } from 'node:dns/promises';
import { describe, expect, it } from 'vitest';
import { checkDns } from '../../src/admin/dns-check.js';
import { parseConfig } from '../../src/config/config.js';

// The findings a live DNS server (test/e2e/cli.test.ts, dnsmasq) does not easily give: a failed
// lookup, a "." target, a target off this host.

const config = parseConfig(
  {
    listeners: [{ type: 'starttls', host: '::', port: 5222 }],
    tls: { selfSigned: true },
    domains: { 'example.org': { upstream: { host: '127.0.0.1' } } },
  },
  '/',
);

function resolver(srv: Record<string, { name: string; port: number }[] | string>): Resolver {
  const fail = (code: string) => Object.assign(new Error(code), { code });
  return {
    resolveSrv: async (name: string) => {
      const answer = srv[name];
      if (answer === undefined) throw fail('ENOTFOUND');
      if (typeof answer === 'string') throw fail(answer);
      return answer.map((record) => ({ ...record, priority: 5, weight: 0 }));
    },
    resolve4: async (name: string) => (name === 'xmpp.example.org' ? ['198.51.100.7'] : Promise.reject(fail('ENODATA'))),
    resolve6: async () => Promise.reject(fail('ENODATA')),
  } as unknown as Resolver;
}

describe('checkDns', () => {
  it('says when a lookup fails, a target of "." declines the service, and a target is not this host', async () => {
    expect(await checkDns(config, resolver({ '_xmpp-client._tcp.example.org': 'ETIMEOUT' }), new Set(['127.0.0.1']))).toEqual([
      { level: 'error', text: '_xmpp-client._tcp.example.org: the lookup failed (ETIMEOUT)' },
    ]);
    expect(await checkDns(config, resolver({ '_xmpp-client._tcp.example.org': [{ name: '.', port: 0 }] }), new Set())).toEqual([
      { level: 'warning', text: '_xmpp-client._tcp.example.org: "." says the service is not offered' },
    ]);
    expect(
      await checkDns(
        config,
        resolver({ '_xmpp-client._tcp.example.org': [{ name: 'xmpp.example.org', port: 5222 }] }),
        new Set(['127.0.0.1']),
      ),
    ).toEqual([
      {
        level: 'warning',
        text: "_xmpp-client._tcp.example.org → xmpp.example.org:5222: xmpp.example.org is 198.51.100.7, none of them this host's (fine behind NAT or a load balancer)",
      },
    ]);
  });
});
