import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Counter, Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { AdminServer, readAdminToken } from '../../src/admin/admin-server.js';
import { Readiness } from '../../src/admin/readiness.js';
import { SessionAdmin, namedBy, type AdministeredSession, type KickCondition } from '../../src/admin/session-admin.js';
import type { SessionSummary } from '../../src/session/session-summary.js';
import { ConfigError, ErrorCode } from '../../src/errors.js';
import { adminGet } from '../support/admin-client.js';

const servers: AdminServer[] = [];
/** The rates the drains were asked for. */
const drains: number[] = [];

/** A session the admin listener sees: its summary, and the kicks it received. */
class FakeSession implements AdministeredSession {
  readonly kicks: KickCondition[] = [];
  constructor(private readonly data: Partial<SessionSummary> & { sid: string }) {}
  summary(): SessionSummary {
    return {
      jid: undefined,
      state: 'active',
      transport: 'directtls',
      remote: '192.0.2.1:40000',
      sinceMs: 1_000,
      hibernatingSinceMs: undefined,
      smEnabled: true,
      resumable: true,
      queued: 0,
      ...this.data,
    };
  }
  kick(condition: KickCondition): void {
    this.kicks.push(condition);
  }
}

const sessions = [
  new FakeSession({ sid: 'a1', jid: 'alice@a.example/phone', sinceMs: 3_000 }),
  new FakeSession({
    sid: 'a2',
    jid: 'alice@a.example/laptop',
    sinceMs: 2_000,
    state: 'hibernating',
    transport: undefined,
    remote: undefined,
    hibernatingSinceMs: 5_000,
    queued: 4,
  }),
  new FakeSession({ sid: 'b1', jid: 'bob@a.example/x', sinceMs: 1_000 }),
  new FakeSession({ sid: 'p1', state: 'authenticating', smEnabled: false, resumable: false }),
];

afterEach(async () => {
  for (const server of servers.splice(0)) await server.close();
});

async function start(token: string | undefined, readiness = new Readiness()): Promise<number> {
  const registry = new Registry();
  new Counter({ name: 'test_things_total', help: 'things', registers: [registry] }).inc(3);
  const server = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    token,
    registry,
    readiness: () => readiness.report(['a.example']),
    sessions: new SessionAdmin(() => sessions),
    drain: (rate) => {
      drains.push(rate);
      return sessions.length;
    },
    log: pino({ level: 'silent' }),
  });
  servers.push(server);
  return (await server.listen()).port;
}

async function request(port: number, init: RequestInit & { path?: string } = {}): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}${init.path ?? '/metrics'}`, init);
}

describe('AdminServer', () => {
  it('takes the bearer token as RFC 6750 §2.1 writes it, and nothing else', async () => {
    const port = await start('s3cret');
    const status = async (authorization?: string) =>
      (await request(port, authorization === undefined ? {} : { headers: { authorization } })).status;
    expect(await status('Bearer s3cret')).toBe(200);
    expect(await status('bearer   s3cret')).toBe(200);
    expect(await status()).toBe(401);
    expect(await status('Bearer s3cre')).toBe(401);
    expect(await status('Bearer s3cret2')).toBe(401);
    expect(await status('Basic czNjcmV0')).toBe(401);
    expect(await status('Bearer s3cret extra')).toBe(401);
    const refused = await request(port);
    expect(refused.headers.get('www-authenticate')).toBe('Bearer realm="smacks-proxy"');
  });

  it('serves the registry in the Prometheus text format without a token when none is configured', async () => {
    const port = await start(undefined);
    const answer = await adminGet(port, '/metrics');
    expect(answer.status).toBe(200);
    expect(answer.body).toContain('test_things_total 3');
  });

  it('answers only GET and HEAD', async () => {
    const port = await start(undefined);
    const post = await request(port, { method: 'POST', path: '/healthz' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const head = await request(port, { method: 'HEAD', path: '/healthz' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
  });

  it('says 503 on /readyz until listening and every domain answered, and again once stopping', async () => {
    const readiness = new Readiness();
    const port = await start(undefined, readiness);
    const readyz = async () => {
      const answer = await adminGet(port, '/readyz');
      return { status: answer.status, report: JSON.parse(answer.body) as unknown };
    };
    expect(await readyz()).toEqual({
      status: 503,
      report: { ready: false, listening: false, stopping: false, draining: false, domains: { 'a.example': { up: null } } },
    });
    readiness.listenersBound();
    expect(readiness.probed('a.example', { up: false, atMs: 0, error: 'connection refused' })).toBe(true);
    expect(await readyz()).toMatchObject({ status: 503, report: { domains: { 'a.example': { up: false, error: 'connection refused' } } } });
    expect(readiness.probed('a.example', { up: false, atMs: 1000, error: 'connection refused' })).toBe(false);
    expect(readiness.probed('a.example', { up: true, atMs: 2000 })).toBe(true);
    expect(await readyz()).toEqual({
      status: 200,
      report: {
        ready: true,
        listening: true,
        stopping: false,
        draining: false,
        domains: { 'a.example': { up: true, checkedAt: '1970-01-01T00:00:02.000Z' } },
      },
    });
    readiness.drainStarted();
    expect(await readyz()).toMatchObject({ status: 503, report: { ready: false, draining: true } });
    readiness.stopStarted();
    expect(await readyz()).toMatchObject({ status: 503, report: { ready: false, stopping: true } });
  });
});

describe('the session admin', () => {
  afterEach(() => {
    for (const session of sessions) session.kicks.length = 0;
  });

  it('names sessions by full JID, or every resource by bare JID, ignoring ASCII case outside the resource', () => {
    expect(namedBy('alice@a.example', 'alice@a.example/phone')).toBe(true);
    expect(namedBy('ALICE@A.example', 'alice@a.example/phone')).toBe(true);
    expect(namedBy('alice@a.example/phone', 'alice@a.example/phone')).toBe(true);
    expect(namedBy('alice@a.example/Phone', 'alice@a.example/phone')).toBe(false);
    expect(namedBy('alice@a.example/phone', 'alice@a.example/phone2')).toBe(false);
    expect(namedBy('alice@a.exampl', 'alice@a.example/phone')).toBe(false);
    expect(namedBy('alice@a.example', undefined)).toBe(false);
  });

  it('lists sessions oldest first, behind the token, filtered by JID', async () => {
    const port = await start('s3cret');
    expect((await adminGet(port, '/sessions')).status).toBe(401);
    const all = JSON.parse((await adminGet(port, '/sessions', 's3cret')).body) as { sessions: { sid: string }[] };
    expect(all.sessions.map((s) => s.sid)).toEqual(['b1', 'p1', 'a2', 'a1']);
    const alice = JSON.parse((await adminGet(port, '/sessions?jid=alice%40a.example', 's3cret')).body) as unknown;
    expect(alice).toEqual({
      sessions: [
        {
          sid: 'a2',
          jid: 'alice@a.example/laptop',
          state: 'hibernating',
          transport: null,
          remote: null,
          since: '1970-01-01T00:00:02.000Z',
          hibernatingSince: '1970-01-01T00:00:05.000Z',
          sm: true,
          resumable: true,
          queued: 4,
        },
        expect.objectContaining({ sid: 'a1', transport: 'directtls', remote: '192.0.2.1:40000' }),
      ],
    });
  });

  it("lists and kicks only for a configured token: without one, 403 (users are not every local account's business)", async () => {
    const port = await start(undefined);
    expect((await adminGet(port, '/sessions')).status).toBe(403);
    expect((await request(port, { method: 'POST', path: '/kick?sid=b1' })).status).toBe(403);
    expect(sessions.map((s) => s.kicks)).toEqual([[], [], [], []]);
    expect((await adminGet(port, '/metrics')).status).toBe(200);
  });

  it('kicks what a JID or a session id names, with the chosen condition; refuses what names nothing or no known condition', async () => {
    const port = await start('s3cret');
    const post = (query: string) => request(port, { method: 'POST', path: `/kick?${query}`, headers: { authorization: 'Bearer s3cret' } });
    expect((await request(port, { method: 'POST', path: '/kick?sid=b1' })).status).toBe(401);
    const kicked = await post('jid=alice%40a.example');
    expect(kicked.status).toBe(200);
    expect(((await kicked.json()) as { kicked: { sid: string }[] }).kicked.map((s) => s.sid)).toEqual(['a1', 'a2']);
    expect(sessions.map((s) => s.kicks)).toEqual([['policy-violation'], ['policy-violation'], [], []]);
    expect((await post('sid=b1&condition=reset')).status).toBe(200);
    expect(sessions[2]!.kicks).toEqual(['reset']);
    expect((await post('jid=carol%40a.example')).status).toBe(404);
    expect((await post('sid=b1&condition=host-unknown')).status).toBe(400);
    expect((await post('jid=bob%40a.example&sid=b1')).status).toBe(400);
    expect((await post('')).status).toBe(400);
    expect((await request(port, { path: '/kick?sid=b1' })).status).toBe(405);
    expect(sessions[2]!.kicks).toEqual(['reset']);
  });
});

describe('the drain request', () => {
  it('starts a drain at the rate asked (10 per second by default), behind the token; refuses a rate that is not one', async () => {
    drains.length = 0;
    const port = await start('s3cret');
    const post = (query: string, token = 's3cret') =>
      request(port, { method: 'POST', path: `/drain${query}`, headers: { authorization: `Bearer ${token}` } });
    expect((await post('', 'wrong')).status).toBe(401);
    const started = await post('');
    expect(started.status).toBe(202);
    expect(await started.json()).toEqual({ draining: true, sessions: 4, ratePerSecond: 10 });
    expect((await post('?rate=250')).status).toBe(202);
    for (const rate of ['0', '1.5', 'fast', '100001']) expect((await post(`?rate=${rate}`)).status, rate).toBe(400);
    expect(drains).toEqual([10, 250]);
  });
});

describe('readAdminToken', () => {
  let dir: string;
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads one token, surrounding whitespace removed; refuses an empty file, spaces inside, a missing file', async () => {
    dir = await mkdtemp(join(tmpdir(), 'smacks-token-'));
    const file = (name: string, text: string) => writeFile(join(dir, name), text).then(() => join(dir, name));
    expect(await readAdminToken(await file('ok', '  abc-123\n'))).toBe('abc-123');
    for (const path of [await file('empty', '\n'), await file('two', 'abc 123\n'), join(dir, 'missing')]) {
      const err = await readAdminToken(path).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).code).toBe(ErrorCode.ADMIN_TOKEN);
      expect((err as ConfigError).message).toContain(path);
    }
  });
});
