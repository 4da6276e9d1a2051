import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// The README's systemd unit is what operators copy: systemd's own analysis rates it (offline, from
// the file; Debian's systemd package, which test/support/ensure-test-deps.sh installs).

const README = fileURLToPath(new URL('../../README.md', import.meta.url));
const UNIT_HEADER = '# /etc/systemd/system/smacks-proxy.service';

async function readmeUnit(): Promise<string> {
  const readme = await readFile(README, 'utf8');
  const start = readme.indexOf(UNIT_HEADER);
  expect(start, 'the README has the systemd unit').toBeGreaterThan(-1);
  return readme.slice(start, readme.indexOf('```', start));
}

describe("the README's systemd unit", () => {
  it('reloads with SIGHUP, follows an upgrade by its PID file, waits for the network, and keeps the one capability it needs', async () => {
    const unit = await readmeUnit();
    for (const line of [
      'Wants=network-online.target',
      'ExecReload=/bin/kill -HUP $MAINPID',
      'CapabilityBoundingSet=CAP_NET_BIND_SERVICE',
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      // An upgrade's new process writes its PID there (README, Upgrading); systemd follows it.
      'PIDFile=/run/smacks-proxy/smacks-proxy.pid',
      'RuntimeDirectory=smacks-proxy',
    ]) {
      expect(unit.split('\n')).toContain(line);
    }
    // V8's JIT needs writable executable memory: this would stop Node at start-up.
    expect(unit).not.toMatch(/^MemoryDenyWriteExecute=yes/m);
  });

  it('is rated below 2.5 by systemd-analyze security', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'smacks-proxy-unit-'));
    try {
      const path = join(dir, 'smacks-proxy.service');
      await writeFile(path, await readmeUnit());
      // --threshold is on systemd's 0-100 scale: exit status 1 above it.
      const { stdout } = await promisify(execFile)('systemd-analyze', ['security', '--offline=true', '--threshold=25', path]);
      expect(stdout).toMatch(/Overall exposure level for smacks-proxy\.service: [0-2]\.\d/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
