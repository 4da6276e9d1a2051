/**
 * A real client library through the proxy: libstrophe (Debian 12's libstrophe 0.12, the library
 * under profanity; `pkg-config --modversion libstrophe` gives the version, compiled into the client
 * and printed with each test) with its own XEP-0198 support (0.12 enables it by itself after
 * binding, and resumes when given the old connection's xmpp_sm_state_t), driven by
 * test/e2e/clients/strophe_client.c, which this file compiles with gcc into a temporary directory.
 * Verified against every legacy server under test, over STARTTLS and direct TLS: login (the SASL
 * mechanism libstrophe picks is printed), `<enable resume='true'/>`, a chat both ways, an abrupt
 * cut of the client's connection, the client's own reconnect and `<resumed/>`, the messages sent
 * meanwhile received once, in order, with a delay stamp, and nothing duplicated at either end (see
 * clients/resume-scenario.ts).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll } from 'vitest';
import { ChildClient } from '../support/child-client.js';
import { describeRealClientResumption } from './clients/resume-scenario.js';

const run = promisify(execFile);
const SOURCE = new URL('./clients/strophe_client.c', import.meta.url).pathname;

let buildDir: string | undefined;
let binary: string | undefined;

beforeAll(async () => {
  const version = (await run('pkg-config', ['--modversion', 'libstrophe'])).stdout.trim();
  const flags = (await run('pkg-config', ['--cflags', '--libs', 'libstrophe'])).stdout.trim().split(/\s+/);
  buildDir = await mkdtemp(join(tmpdir(), 'strophe-client-'));
  const output = join(buildDir, 'strophe_client');
  await run('gcc', [
    '-std=c11',
    '-Wall',
    '-Wextra',
    '-Werror',
    '-O1',
    `-DLIBSTROPHE_VERSION="${version}"`,
    '-o',
    output,
    SOURCE,
    ...flags,
  ]).catch((err: Error & { stderr?: string }) => {
    throw new Error(`compiling ${SOURCE} against libstrophe ${version} failed: ${err.message}\n${err.stderr ?? ''}`);
  });
  binary = output;
});

afterAll(async () => {
  if (buildDir !== undefined) await rm(buildDir, { recursive: true, force: true });
});

describeRealClientResumption({
  library: 'libstrophe',
  start: (params) => {
    if (binary === undefined) throw new Error('the libstrophe client was not built');
    return ChildClient.start('libstrophe client', binary, [
      '--jid',
      params.jid,
      '--password',
      params.password,
      '--host',
      params.host,
      '--port',
      String(params.port),
      '--tls',
      params.tls === 'directtls' ? 'direct' : 'starttls',
      '--reconnect-delay-ms',
      String(params.reconnectDelayMs),
    ]);
  },
});
