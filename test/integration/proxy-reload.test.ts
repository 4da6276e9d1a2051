/**
 * The proxy's listeners across reloads (README "Reloading"), in this process on 127.0.0.1: two
 * SIGHUPs close together leave the listeners of the second, and an upgrade under way freezes them.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { Proxy } from '../../src/proxy.js';
import { findFreePort } from '../support/server-process.js';

const proxies: Proxy[] = [];
afterEach(async () => {
  for (const proxy of proxies.splice(0)) await proxy.stop();
});

function config(listeners: { type: string; port: number }[]) {
  return parseConfig(
    {
      listeners: listeners.map((listener) => ({ ...listener, host: '127.0.0.1' })),
      tls: { selfSigned: true },
      domains: { localhost: { upstream: { host: '127.0.0.1', port: 1, connectTimeoutSeconds: 1 } } },
      shutdownGraceSeconds: 0,
    },
    process.cwd(),
  );
}

describe('Proxy: listeners across reloads', () => {
  it('two reloads close together leave the listeners of the second', async () => {
    const [a, b] = [await findFreePort(), await findFreePort()];
    const proxy = new Proxy(config([{ type: 'directtls', port: a }]), pino({ level: 'silent' }), { skipProbe: true });
    proxies.push(proxy);
    await proxy.start();
    const added = proxy.reload(
      config([
        { type: 'directtls', port: a },
        { type: 'starttls', port: b },
      ]),
    );
    const back = proxy.reload(config([{ type: 'directtls', port: a }]));
    await Promise.all([added, back]);
    expect([...proxy.listeningSockets().keys()]).toEqual([`directtls 127.0.0.1:${a}`]);
  });
});
