/**
 * Reloading as routine (README "Reloading"): the built CLI in front of a real legacy server, a
 * user's session exchanging messages with a contact on the legacy server while the operator sends
 * SIGHUP a hundred times and the certificate is renewed ten times (files renamed over, as certbot
 * does). Nothing the two send may be lost, duplicated or reordered, the session never notices,
 * and each renewal reaches the next TLS handshake.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { certificate, handshake, renameOver } from '../support/certificates.js';
import { CliProcess, cliWorkDir } from '../support/cli-process.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { USERS } from '../support/proxy-fixture.js';
import { RawClient } from '../support/raw-client.js';
import { bodies, collectMessages } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';

const RELOADS = 100;
const RENEWALS = 10;

const scratch = cliWorkDir('smacks-proxy-reload-');

describeEachLegacyServer((kind) => {
  let server: LegacyServer;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
  });

  afterAll(async () => {
    await server?.stop();
  });

  it(`a session goes on across ${RELOADS} reloads and ${RENEWALS} certificate renewals: nothing lost, each renewal served at once`, async () => {
    const dir = await mkdtemp(join(scratch(), `${kind}-`));
    const files = { cert: join(dir, 'fullchain.pem'), key: join(dir, 'privkey.pem') };
    const first = await certificate();
    await writeFile(files.cert, first.cert);
    await writeFile(files.key, first.key);
    const path = join(dir, 'proxy.config.json');
    // Each reload changes a limit, so that each one applies something while the session runs.
    const writeConfig = (reload: number) =>
      writeFile(
        path,
        JSON.stringify({
          listeners: [{ type: 'directtls', host: '127.0.0.1', port: 0 }],
          tls: { certificates: [files] },
          domains: { [server.domain]: { upstream: { host: server.host, port: server.c2sPort, connectTimeoutSeconds: 2 } } },
          limits: { maxUnauthenticated: 1000 + reload },
        }),
      );
    await writeConfig(0);
    const cli = new CliProcess([path], { cwd: dir });
    const listening = await cli.expectLog('listening', () => true, 15_000);
    const port = Number(listening.port);

    const user = await RawClient.connect({ host: '127.0.0.1', port, transport: 'directtls', domain: server.domain });
    const userJid = await user.login(USERS.alice.username, USERS.alice.password, { resource: `reload-${kind}` });
    expect((await user.enableSm({ resume: true })).name).toBe('enabled');
    const contact = await RawClient.connectPlain({ host: server.host, port: server.c2sPort, domain: server.domain });
    await contact.openStream();
    const contactJid = await contact.login(USERS.bob.username, USERS.bob.password, { resource: `reload-${kind}` });

    let served = first.fingerprint256;
    for (let i = 1; i <= RELOADS; i++) {
      contact.sendMessage(userJid, `in ${i}`);
      user.sendMessage(contactJid, `out ${i}`);
      await writeConfig(i);
      process.kill(cli.pid, 'SIGHUP');
      await waitUntil(() => cli.logLines.filter((line) => line.msg === 'config reloaded').length === i, `reload ${i}`);
      if (i % (RELOADS / RENEWALS) === 0) {
        const renewed = await certificate();
        await renameOver(files.key, renewed.key);
        await renameOver(files.cert, renewed.cert);
        await waitUntil(
          async () => {
            const { socket, fingerprint256 } = await handshake(port, 'localhost');
            socket.destroy();
            return fingerprint256 === renewed.fingerprint256;
          },
          `renewal ${i / (RELOADS / RENEWALS)} served`,
          5_000,
          100,
        );
        served = renewed.fingerprint256;
      }
    }
    expect(cli.logLines.filter((line) => line.msg === 'config reloaded').map((line) => line.changed)).toEqual(
      Array.from({ length: RELOADS }, () => ['limits']),
    );
    expect(bodies(await collectMessages(user, RELOADS, 'what the contact sent'))).toEqual(
      Array.from({ length: RELOADS }, (_, i) => `in ${i + 1}`),
    );
    expect(bodies(await collectMessages(contact, RELOADS, 'what the user sent'))).toEqual(
      Array.from({ length: RELOADS }, (_, i) => `out ${i + 1}`),
    );
    // Everything the user sent was handled by the proxy, on the stream it started with.
    expect(await user.ackRequest()).toBe(RELOADS);
    expect(user.isClosed).toBe(false);
    await user.expectNone((el) => el.is('message'), 'a message twice', 300);
    await contact.expectNone((el) => el.is('message'), 'a message twice', 300);
    const { socket, fingerprint256 } = await handshake(port, 'localhost');
    socket.destroy();
    expect(fingerprint256).toBe(served);
    user.drop();
    contact.drop();
  }, 60_000);
});
