/**
 * An upgrade with session hand-off (README "Upgrading"), as an operator does it: the built CLI runs
 * in front of a real legacy server, SIGUSR2 starts a new process from the code on disk, the
 * listening sockets and every session's upstream socket move to it, and the old process exits.
 * A contact connected to the legacy server directly watches: it must see no presence change, and
 * every message it sends arrives once, in order, at the users of the proxy, who resume at the new
 * process without logging in again.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CliProcess, cliWorkDir } from '../support/cli-process.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startLegacyServer, type LegacyServer, type LegacyUser } from '../support/legacy-server.js';
import { USERS } from '../support/proxy-fixture.js';
import { RawClient, type RawTransport } from '../support/raw-client.js';
import { bodies, collectMessages, subscribe } from '../support/sm-steps.js';
import { waitUntil } from '../support/wait.js';
import { findFreePort } from '../support/server-process.js';

/** How long the CLI may take to bind its listeners, and a new process to take over. */
const START_TIMEOUT_MS = 15_000;

const scratch = cliWorkDir('smacks-proxy-upgrade-');

let fileCounter = 0;

describeEachLegacyServer((kind) => {
  let server: LegacyServer;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
  });

  afterAll(async () => {
    await server?.stop();
  });

  /** The proxy config: a listener of each transport, the admin listener, the legacy server, a PID file. */
  function proxyConfig(adminPort: number): Record<string, unknown> {
    return {
      listeners: [
        { type: 'starttls', host: '127.0.0.1', port: 0 },
        { type: 'directtls', host: '127.0.0.1', port: 0 },
        { type: 'websocket', host: '127.0.0.1', port: 0, tls: true },
      ],
      tls: { selfSigned: true },
      domains: { [server.domain]: { upstream: { host: server.host, port: server.c2sPort, connectTimeoutSeconds: 2 } } },
      shutdownGraceSeconds: 1,
      pidFile: join(scratch(), `proxy-${fileCounter}.pid`),
      upgrade: { resumesPerSecond: 50, windowSeconds: 1 },
      // A fixed port: the new process must take the old one's socket over, not bind another.
      admin: { host: '127.0.0.1', port: adminPort },
      // Debug: the test waits for 'stanza queued while hibernating'.
      log: { level: 'debug' },
    };
  }

  async function startCli(
    config: Record<string, unknown>,
  ): Promise<{ cli: CliProcess; path: string; ports: Record<RawTransport, number> }> {
    const path = join(scratch(), `config-${++fileCounter}.json`);
    await writeFile(path, JSON.stringify(config));
    const cli = new CliProcess([path], { cwd: scratch() });
    await waitUntil(
      () => cli.hasExited || cli.logLines.some((l) => l.msg === 'admin listener ready'),
      'the listeners bound',
      START_TIMEOUT_MS,
    );
    if (cli.hasExited) throw new Error(`the proxy did not start; ${cli.describe()}`);
    const ports = { starttls: 0, directtls: 0, websocket: 0 };
    for (const line of cli.logLines.filter((l) => l.msg === 'listening')) ports[line.type as RawTransport] = Number(line.port);
    return { cli, path, ports };
  }

  async function loginThroughProxy(port: number, transport: RawTransport, user: LegacyUser, resource: string) {
    const client = await RawClient.connect({ host: '127.0.0.1', port, transport, domain: server.domain });
    const jid = await client.login(user.username, user.password, { resource });
    const enabled = await client.enableSm({ resume: true });
    if (enabled.name !== 'enabled') throw new Error(`stream management refused: ${enabled.toString()}`);
    client.presence();
    return { client, jid, smId: String(enabled.attrs.id) };
  }

  /** The contact, on the legacy server itself: it sees what the legacy server sees of the proxy's users. */
  async function contactOnLegacyServer(resource: string) {
    const client = await RawClient.connectPlain({ host: server.host, port: server.c2sPort, domain: server.domain });
    await client.openStream();
    const jid = await client.login(USERS.carol.username, USERS.carol.password, { resource });
    client.presence();
    return { client, jid };
  }

  async function resumeAt(port: number, user: LegacyUser, smId: string, h: number, transport: RawTransport = 'directtls') {
    const client = await RawClient.connect({ host: '127.0.0.1', port, transport, domain: server.domain });
    await client.authenticatePlain(user.username, user.password);
    const answer = await client.resume(smId, h);
    return { client, answer };
  }

  it('SIGUSR2 moves listeners and sessions to a new process: nobody logs in again, nothing is lost, duplicated or reordered, the contact sees no presence change', async () => {
    const run = `up${fileCounter}`;
    const adminPort = await findFreePort();
    const config = proxyConfig(adminPort);
    const { cli, ports } = await startCli(config);
    const pidFile = String(config.pidFile);
    await waitUntil(
      async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() === String(cli.pid),
      'the PID file naming the proxy',
    );

    const contact = await contactOnLegacyServer(`${run}-contact`);
    const alice = await loginThroughProxy(ports.directtls, 'directtls', USERS.alice, `${run}-a`);
    const bob = await loginThroughProxy(ports.starttls, 'starttls', USERS.bob, `${run}-b`);
    await subscribe(contact, alice);
    await subscribe(contact, bob);
    // Bob's connection is cut: he hibernates, and the contact's messages to him are queued.
    bob.client.drop();
    await cli.expectLog('hibernating', (line) => line.jid === bob.jid);
    for (let i = 1; i <= 3; i++) contact.client.sendMessage(bob.jid, `to bob ${i}`, `${run}-b${i}`);
    await waitUntil(
      () =>
        cli.logLines.filter((line) => line.msg === 'stanza queued while hibernating' && line.jid === bob.jid && line.kind === 'message')
          .length === 3,
      'three messages queued for bob',
    );
    // A session that ended before the upgrade: a late resume of it gets <failed h/> at the new process.
    const gone = await loginThroughProxy(ports.directtls, 'directtls', USERS.alice, `${run}-gone`);
    await gone.client.close();
    // A client without stream management cannot move: it gets system-shutdown at the window's end.
    const plain = await RawClient.connect({ host: '127.0.0.1', port: ports.starttls, transport: 'starttls', domain: server.domain });
    await plain.login(USERS.alice.username, USERS.alice.password, { resource: `${run}-plain` });
    // Alice is attached and receiving while the upgrade happens.
    for (let i = 1; i <= 10; i++) contact.client.sendMessage(alice.jid, `to alice ${i}`, `${run}-a${i}`);
    await collectMessages(alice.client, 10, 'the messages to alice before the upgrade');
    const seenBefore = contact.client.received.length;

    // Alice is in the middle of a stanza when her connection is cut: never counted, so she sends it again after her resume.
    const half = `<message to='${contact.jid}' id='${run}-half' type='chat'><body>half`;
    alice.client.sendRaw(half);
    process.kill(cli.pid, 'SIGUSR2');
    await cli.expectLog('signal received; upgrading: starting the new process');
    // A second upgrade during the first is refused (signals sent back to back would merge into one).
    process.kill(cli.pid, 'SIGUSR2');
    await cli.expectLog('signal received; an upgrade is in progress already: nothing done');
    for (let i = 11; i <= 20; i++) contact.client.sendMessage(alice.jid, `to alice ${i}`, `${run}-a${i}`);
    const done = await cli.expectLog(
      'upgrade done; the new process serves; this one ends what could not move',
      () => true,
      START_TIMEOUT_MS,
    );
    expect(done).toMatchObject({ handedOver: 2, left: 1 });
    await plain.expectStreamError('system-shutdown');
    expect(await cli.processExited).toEqual({ code: 0, signal: null });
    const taken = await cli.expectLog('upgrade: taken over; this process runs on alone');
    expect(taken).toMatchObject({ adopted: 2 });
    const newPid = Number(taken.pid);
    expect(newPid).not.toBe(cli.pid);
    expect((await readFile(pidFile, 'utf8')).trim(), 'the PID file names the new process').toBe(String(newPid));
    expect((await fetch(`http://127.0.0.1:${adminPort}/healthz`)).status, 'the admin listener, now the new process').toBe(200);
    // More while nobody is attached: they wait in the new process.
    for (let i = 21; i <= 25; i++) contact.client.sendMessage(alice.jid, `to alice ${i}`, `${run}-a${i}`);

    // Alice's link was cut without a stream close: she resumes at the same port, now the new process's.
    await waitUntil(() => alice.client.isClosed, "alice's connection cut by the old process");
    const aliceBack = await resumeAt(ports.directtls, USERS.alice, alice.smId, alice.client.stanzasReceived);
    expect(aliceBack.answer.name, aliceBack.answer.toString()).toBe('resumed');
    const seenByAlice = alice.client.received.filter((el) => el.is('message'));
    const rest = await collectMessages(aliceBack.client, 25 - seenByAlice.length, 'the rest of the messages to alice, after the resume');
    expect([...bodies(seenByAlice), ...bodies(rest)]).toEqual(Array.from({ length: 25 }, (_, i) => `to alice ${i + 1}`));

    const bobBack = await resumeAt(ports.websocket, USERS.bob, bob.smId, 0, 'websocket');
    expect(bobBack.answer.name, bobBack.answer.toString()).toBe('resumed');
    expect(bodies(await collectMessages(bobBack.client, 3, 'the replay of bob’s queue'))).toEqual(['to bob 1', 'to bob 2', 'to bob 3']);

    const late = await resumeAt(ports.directtls, USERS.alice, gone.smId, 0);
    expect(late.answer.name, late.answer.toString()).toBe('failed');
    expect(late.answer.attrs.h, 'the h the old process remembered').toBe('1');
    late.client.drop();

    // Both answer the contact: their upstream streams are the ones they logged in on.
    // Her presence and her answer to the subscription request: the half stanza was not counted.
    expect(aliceBack.answer.attrs.h).toBe('2');
    aliceBack.client.sendRaw(`${half} and whole</body></message>`);
    bobBack.client.sendMessage(contact.jid, 'bob is back');
    aliceBack.client.sendMessage(contact.jid, 'alice is back');
    const replies = await collectMessages(contact.client, 3, 'the replies');
    expect(bodies(replies).sort()).toEqual(['alice is back', 'bob is back', 'half and whole']);
    await aliceBack.client.expectNone((el) => el.is('message'), 'a duplicate message', 300);
    const presenceChanges = contact.client.received
      .slice(seenBefore)
      .filter((el) => el.is('presence') && [alice.jid, bob.jid].includes(String(el.attrs.from)));
    expect(
      presenceChanges.map((el) => el.toString()),
      'presence the contact saw from the proxy users',
    ).toEqual([]);

    process.kill(newPid, 'SIGTERM');
    await waitUntil(() => cli.logLines.some((line) => line.msg === 'stopped' && line.pid === newPid), 'the new process stopped', 10_000);
    await cli.exited;
    await expect(readFile(pidFile, 'utf8'), 'the PID file is removed at the end').rejects.toThrow();
    contact.client.drop();
  }, 60_000);

  it('SIGTERM to the old process during the hand-off stops it; the new process keeps what it took and serves on', async () => {
    const run = `term${fileCounter}`;
    const config = proxyConfig(await findFreePort());
    const { cli, ports } = await startCli(config);
    const alice = await loginThroughProxy(ports.directtls, 'directtls', USERS.alice, `${run}-a`);
    alice.client.drop();
    await cli.expectLog('hibernating', (line) => line.jid === alice.jid);

    process.kill(cli.pid, 'SIGUSR2');
    await cli.expectLog('upgrade: the new process accepts connections; handing sessions over', () => true, START_TIMEOUT_MS);
    process.kill(cli.pid, 'SIGTERM');
    expect(await cli.processExited).toEqual({ code: 0, signal: null });
    // The new process runs on alone, whatever it had been handed by then.
    await cli.expectLog('upgrade: taken over; this process runs on alone', () => true, START_TIMEOUT_MS);
    const back = await resumeAt(ports.directtls, USERS.alice, alice.smId, alice.client.stanzasReceived);
    // Handed over before the SIGTERM: resumed; ended by the old process's stop: answered as ended, with its h.
    expect(['resumed', 'failed'], back.answer.toString()).toContain(back.answer.name);
    if (back.answer.name === 'failed') expect(back.answer.attrs.h).toBeDefined();
    const fresh = await loginThroughProxy(ports.starttls, 'starttls', USERS.carol, `${run}-c`);
    await fresh.client.syncWithServer();
    back.client.drop();
    fresh.client.drop();
  }, 60_000);

  it('a new process that cannot start changes nothing: the old one serves on, and a later upgrade works', async () => {
    const run = `fail${fileCounter}`;
    const { cli, path, ports } = await startCli(proxyConfig(await findFreePort()));
    const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    const alice = await loginThroughProxy(ports.directtls, 'directtls', USERS.alice, `${run}-a`);

    await writeFile(path, JSON.stringify({ ...config, limits: { maxSessions: -1 } }));
    process.kill(cli.pid, 'SIGUSR2');
    const failed = await cli.expectLog('upgrade failed; this process serves on', () => true, START_TIMEOUT_MS);
    // Exit code 2: the config file is invalid (README, Running).
    expect(failed).toMatchObject({ code: 'PROXY_ERR_UPGRADE', handedOver: 0, newProcessExit: { code: 2, signal: null } });
    // Alice was never disconnected, and new connections still reach the old process.
    const sync = alice.client.syncWithServer();
    await sync;
    const carol = await loginThroughProxy(ports.starttls, 'starttls', USERS.carol, `${run}-c`);
    await carol.client.syncWithServer();

    await writeFile(path, JSON.stringify(config));
    process.kill(cli.pid, 'SIGUSR2');
    await cli.expectLog('upgrade done; the new process serves; this one ends what could not move', () => true, START_TIMEOUT_MS);
    expect(await cli.processExited).toEqual({ code: 0, signal: null });
    await waitUntil(() => alice.client.isClosed, "alice's connection cut by the old process");
    const back = await resumeAt(ports.directtls, USERS.alice, alice.smId, alice.client.stanzasReceived);
    expect(back.answer.name, back.answer.toString()).toBe('resumed');
    await back.client.syncWithServer();
    back.client.drop();
    carol.client.drop();
  }, 60_000);
});
