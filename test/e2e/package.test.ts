import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../support/server-process.js';

// The production install of the README (Deploying, step 4): `npm pack` of a built checkout, then `npm install --omit=dev` of the tarball into /opt/smacks-proxy, here a temp dir.
// What is installed must run: --check, and a start and stop, with no development dependency.

const execFileAsync = promisify(execFile);
const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const NPM_TIMEOUT_MS = 120_000;
const packageJson = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

describe('the packed and installed proxy', () => {
  let dir: string;
  let installed: string;

  beforeAll(
    async () => {
      dir = await mkdtemp(join(tmpdir(), 'smacks-package-'));
      // --ignore-scripts: `npm test` has built dist/ already, and prepack's rebuild would rewrite the
      // dist/src/cli.js that other test files run meanwhile.
      const { stdout } = await execFileAsync('npm', ['pack', '--ignore-scripts', '--pack-destination', dir, '--silent'], {
        cwd: REPO_ROOT,
        timeout: NPM_TIMEOUT_MS,
      });
      const tarball = join(dir, stdout.trim().split('\n').pop()!);
      const prefix = join(dir, 'opt');
      await execFileAsync('npm', ['install', '--prefix', prefix, '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline', tarball], {
        timeout: NPM_TIMEOUT_MS,
      });
      installed = join(prefix, 'node_modules');
    },
    2 * NPM_TIMEOUT_MS + 10_000,
  );

  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('holds the built code and the runtime dependencies only', async () => {
    expect(existsSync(join(installed, 'smacks-proxy', 'dist', 'src', 'cli.js'))).toBe(true);
    expect(existsSync(join(installed, '.bin', 'smacks-proxy'))).toBe(true);
    const names = await readdir(installed);
    for (const dependency of Object.keys(packageJson.dependencies)) expect(names, dependency).toContain(dependency);
    for (const devDependency of Object.keys(packageJson.devDependencies)) {
      expect(existsSync(join(installed, devDependency)), `${devDependency} (a development dependency)`).toBe(false);
    }
  });

  it('checks a config, starts, listens and stops on SIGTERM', async () => {
    const port = await findFreePort();
    const config = join(dir, 'proxy.config.json');
    await writeFile(
      config,
      JSON.stringify({
        listeners: [{ type: 'directtls', host: '127.0.0.1', port }],
        tls: { selfSigned: true },
        domains: { localhost: { upstream: { host: '127.0.0.1', port: await findFreePort(), connectTimeoutSeconds: 1 } } },
        log: { format: 'json' },
      }),
    );
    const cli = join(installed, 'smacks-proxy', 'dist', 'src', 'cli.js');
    const check = await execFileAsync(process.execPath, [cli, '--check', config], { timeout: 30_000 });
    expect(check.stderr).toContain('valid');

    const child = spawn(process.execPath, [cli, config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    const exited = new Promise<number | null>((resolveExit) => child.once('close', (code) => resolveExit(code)));
    const deadline = Date.now() + 20_000;
    while (!output.includes('"listening"') && Date.now() < deadline && child.exitCode === null) {
      await new Promise((resolveWait) => setTimeout(resolveWait, 50));
    }
    expect(output, output).toContain('"msg":"listening"');
    child.kill('SIGTERM');
    expect(await exited, output).toBe(0);
  }, 60_000);
});
