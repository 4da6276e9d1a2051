/**
 * Debian's dnsmasq as an authoritative-enough DNS server on loopback, for `--check dns`: it answers
 * the SRV and address records it is given, and NXDOMAIN for anything else under `localDomains`
 * (`--local`), so that a missing record looks as it does on the Internet. Foreground, no upstream
 * servers, no hosts file, as root without dropping privileges; stopped by the test.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HOST, findFreePort, spawnSupervised, tail, waitForListening } from './server-process.js';

export interface SrvRecord {
  /** `_xmpp-client._tcp.example.org` */
  readonly name: string;
  readonly target: string;
  readonly port: number;
}

export interface Dnsmasq {
  /** `127.0.0.1:<port>`, for `--dns-server`. */
  readonly server: string;
  stop(): Promise<void>;
}

export async function startDnsmasq(options: {
  srv: readonly SrvRecord[];
  addresses: Readonly<Record<string, string>>;
  localDomains: readonly string[];
}): Promise<Dnsmasq> {
  const dir = mkdtempSync(join(tmpdir(), 'smacks-dnsmasq-'));
  const port = await findFreePort();
  const consoleFile = join(dir, 'console.log');
  const args = [
    '--no-daemon',
    `--port=${port}`,
    `--listen-address=${HOST}`,
    '--bind-interfaces',
    '--no-resolv',
    '--no-hosts',
    '--conf-file=/dev/null',
    '--user=root',
    '--pid-file=',
    ...options.localDomains.map((domain) => `--local=/${domain}/`),
    ...options.srv.map(({ name, target, port: srvPort }) => `--srv-host=${name},${target},${srvPort},5,0`),
    ...Object.entries(options.addresses).map(([name, address]) => `--host-record=${name},${address}`),
  ];
  const server = spawnSupervised('/usr/sbin/dnsmasq', args, { dir, consoleFile });
  // dnsmasq also listens on TCP: that it accepts there means it answers on UDP too.
  await waitForListening(port, {
    timeoutMs: 10_000,
    name: 'dnsmasq',
    describe: () => `--- console (${consoleFile}) ---\n${tail(consoleFile)}`,
    failed: () => {
      const spawnError = server.spawnError();
      if (spawnError !== undefined) return new Error(`could not run dnsmasq (Debian's dnsmasq-base package): ${spawnError.message}`);
      return server.hasExited() ? new Error(`dnsmasq exited during start-up: ${tail(consoleFile)}`) : undefined;
    },
  });
  return { server: `${HOST}:${port}`, stop: () => server.stop() };
}
