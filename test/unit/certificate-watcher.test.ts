import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CertificateWatcher } from '../../src/transport/certificate-watcher.js';

// Real directories under the system temp dir: the watcher is only worth what the kernel tells it.

const SETTLE_MS = 100;
const log = pino({ level: 'silent' });

let dir: string;
let watcher: CertificateWatcher | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'smacks-proxy-watch-'));
});

afterEach(async () => {
  watcher?.close();
  watcher = undefined;
  await rm(dir, { recursive: true, force: true });
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('CertificateWatcher', () => {
  it("sees certbot's renewal: the symlinks in live/ swapped to new files in archive/, reported once", async () => {
    const live = join(dir, 'live');
    const archive = join(dir, 'archive');
    await mkdir(live);
    await mkdir(archive);
    for (const name of ['fullchain1.pem', 'privkey1.pem', 'fullchain2.pem', 'privkey2.pem']) await writeFile(join(archive, name), name);
    await symlink('../archive/fullchain1.pem', join(live, 'fullchain.pem'));
    await symlink('../archive/privkey1.pem', join(live, 'privkey.pem'));
    let calls = 0;
    watcher = new CertificateWatcher([join(live, 'fullchain.pem'), join(live, 'privkey.pem')], () => calls++, log, SETTLE_MS);

    for (const name of ['fullchain', 'privkey']) {
      await symlink(`../archive/${name}2.pem`, join(live, `${name}.pem.tmp`));
      await rename(join(live, `${name}.pem.tmp`), join(live, `${name}.pem`));
    }
    await sleep(SETTLE_MS * 4);
    expect(calls).toBe(1);
  });

  it('sees a file written in place or renamed over, and ignores the other files of the directory', async () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    await writeFile(cert, 'a');
    await writeFile(key, 'a');
    let calls = 0;
    watcher = new CertificateWatcher([cert, key], () => calls++, log, SETTLE_MS);

    await writeFile(join(dir, 'unrelated.txt'), 'x');
    await sleep(SETTLE_MS * 3);
    expect(calls, 'another file of the directory').toBe(0);

    await writeFile(cert, 'b');
    await sleep(SETTLE_MS * 3);
    expect(calls, 'written in place').toBe(1);

    await writeFile(`${key}.new`, 'b');
    await rename(`${key}.new`, key);
    await sleep(SETTLE_MS * 3);
    expect(calls, 'renamed over').toBe(2);
  });

  it('reports nothing once closed', async () => {
    const cert = join(dir, 'cert.pem');
    await writeFile(cert, 'a');
    let calls = 0;
    watcher = new CertificateWatcher([cert], () => calls++, log, SETTLE_MS);
    await writeFile(cert, 'b');
    watcher.close();
    await sleep(SETTLE_MS * 3);
    expect(calls).toBe(0);
  });
});
