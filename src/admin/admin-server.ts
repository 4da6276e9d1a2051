import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Server as NetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { readSecretFile } from '../config/secret-file.js';
import { ErrorCode, ProxyError } from '../errors.js';
import type { ReadinessReport } from './readiness.js';
import { KICK_CONDITIONS, isKickCondition, type SessionAdmin } from './session-admin.js';

/** A scrape or probe that has not sent its request within this is dropped (slowloris). */
const REQUEST_TIMEOUT_MS = 10_000;
/** Prometheus, a load balancer and an operator's curl: a handful at once is plenty. */
const MAX_CONNECTIONS = 64;
const TEXT = 'text/plain; charset=utf-8';
const JSON_TYPE = 'application/json';

/**
 * What the admin listener serves, and who may ask. `open`: anyone (the health checks tell nothing
 * about users, and probes rarely carry tokens). `token-if-set`: the bearer token when one is
 * configured (metrics, counts only). `token`: always the token, and refused when none is configured:
 * users' JIDs and addresses, and ending their sessions, are not for every local account of the host.
 */
const ROUTES: Readonly<Record<string, { readonly methods: readonly string[]; readonly access: 'open' | 'token-if-set' | 'token' }>> = {
  '/healthz': { methods: ['GET', 'HEAD'], access: 'open' },
  '/readyz': { methods: ['GET', 'HEAD'], access: 'open' },
  '/metrics': { methods: ['GET', 'HEAD'], access: 'token-if-set' },
  '/sessions': { methods: ['GET', 'HEAD'], access: 'token' },
  '/kick': { methods: ['POST'], access: 'token' },
  '/drain': { methods: ['POST'], access: 'token' },
};

/** Sessions ended per second by a drain, when the request names no rate. */
const DEFAULT_DRAIN_RATE = 10;
const MAX_DRAIN_RATE = 100_000;

export interface AdminServerOptions {
  readonly host: string;
  readonly port: number;
  /** The bearer token (`admin.tokenFile`): always needed by `/sessions`, `/kick`, `/drain`, and by `/metrics` when set; undefined = none. */
  readonly token: string | undefined;
  readonly registry: Registry;
  readonly readiness: () => ReadinessReport;
  readonly sessions: SessionAdmin;
  /** Starts or re-paces a drain at this many sessions per second; returns the sessions left (drain.ts). */
  readonly drain: (ratePerSecond: number) => number;
  readonly log: Logger;
}

/**
 * The admin listener (README, Metrics and health): plain HTTP, for Prometheus, load balancers,
 * systemd/Kubernetes probes and the `sessions` and `kick` commands. `GET /healthz` answers while
 * the process runs; `GET /readyz` is 200 when the proxy can serve (readiness.ts) and 503 otherwise,
 * with the report as JSON; `GET /metrics` is the Prometheus text format; `GET /sessions` lists the
 * live sessions and `POST /kick` ends some (session-admin.ts), these three behind the bearer token
 * when one is configured. It serves no client and never shares a port with a client listener.
 */
export class AdminServer {
  /** The listening socket, for handing over to the next process (an upgrade). */
  readonly server: Server;
  private readonly tokenDigest: Buffer | undefined;

  constructor(private readonly options: AdminServerOptions) {
    this.tokenDigest = options.token === undefined ? undefined : digest(options.token);
    this.server = createServer({ requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: REQUEST_TIMEOUT_MS }, (request, response) => {
      this.handle(request, response).catch((err: unknown) => {
        options.log.error({ err: err instanceof Error ? err.message : String(err), url: request.url }, 'admin request failed');
        if (!response.headersSent) respond(response, 500, TEXT, 'internal error\n');
        else response.destroy();
      });
    });
    this.server.maxConnections = MAX_CONNECTIONS;
    this.server.on('error', (err) => options.log.error({ err: err.message }, 'admin listener error'));
  }

  /** Binds the address, or goes on with `inherited`, the admin socket the previous process handed over (an upgrade). */
  listen(inherited?: NetServer): Promise<{ host: string; port: number }> {
    const { host, port } = this.options;
    return new Promise((resolve, reject) => {
      const failed = (err: Error): void =>
        reject(new ProxyError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (admin): ${err.message}`, { cause: err }));
      this.server.once('error', failed);
      this.server.listen(inherited ?? { port, host }, () => {
        this.server.off('error', failed);
        const address = this.server.address() as AddressInfo;
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Stops listening and drops open connections (a scrape in progress is cut). */
  close(): Promise<void> {
    return new Promise((resolve) => {
      // Resolves also when it was not listening (an upgrade handed the socket over).
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  /** Stops accepting; the requests in progress are answered (an upgrade: the next process serves from now on). */
  stopAccepting(): void {
    this.server.close();
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://admin');
    const route = ROUTES[url.pathname];
    if (route === undefined) {
      respond(response, 404, TEXT, 'not found\n');
      return;
    }
    if (!route.methods.includes(request.method ?? '')) {
      response.setHeader('Allow', route.methods.join(', '));
      respond(response, 405, TEXT, 'method not allowed\n');
      return;
    }
    if (route.access === 'token' && this.tokenDigest === undefined) {
      respond(response, 403, TEXT, 'set admin.tokenFile to use this\n');
      return;
    }
    if (route.access !== 'open' && !this.authorized(request)) {
      response.setHeader('WWW-Authenticate', 'Bearer realm="smacks-proxy"');
      respond(response, 401, TEXT, 'bearer token required\n');
      return;
    }
    const query = url.searchParams;
    switch (url.pathname) {
      case '/healthz':
        respond(response, 200, TEXT, 'ok\n');
        return;
      case '/readyz': {
        const report = this.options.readiness();
        respond(response, report.ready ? 200 : 503, JSON_TYPE, `${JSON.stringify(report)}\n`);
        return;
      }
      case '/metrics':
        respond(response, 200, this.options.registry.contentType, await this.options.registry.metrics());
        return;
      case '/sessions':
        respond(response, 200, JSON_TYPE, `${JSON.stringify({ sessions: this.options.sessions.list(query.get('jid') ?? undefined) })}\n`);
        return;
      case '/kick':
        this.kick(query, response);
        return;
      case '/drain': {
        const rate = Number(query.get('rate') ?? DEFAULT_DRAIN_RATE);
        if (!Number.isInteger(rate) || rate < 1 || rate > MAX_DRAIN_RATE) {
          respond(response, 400, TEXT, `rate must be a whole number of sessions per second, 1..${MAX_DRAIN_RATE}\n`);
          return;
        }
        const sessions = this.options.drain(rate);
        respond(response, 202, JSON_TYPE, `${JSON.stringify({ draining: true, sessions, ratePerSecond: rate })}\n`);
        return;
      }
    }
  }

  /** `POST /kick?jid=…` or `?sid=…`, with `condition` (KICK_CONDITIONS; `policy-violation` when absent). */
  private kick(query: URLSearchParams, response: ServerResponse): void {
    const jid = query.get('jid');
    const sid = query.get('sid');
    const condition = query.get('condition') ?? 'policy-violation';
    if ((jid === null) === (sid === null) || (jid ?? sid) === '') {
      respond(response, 400, TEXT, 'name the session: jid=<full or bare JID> or sid=<session id>\n');
      return;
    }
    if (!isKickCondition(condition)) {
      respond(response, 400, TEXT, `condition must be one of ${KICK_CONDITIONS.join(', ')}\n`);
      return;
    }
    const kicked = this.options.sessions.kick(jid !== null ? { jid } : { sid: sid! }, condition);
    this.options.log.info({ jid: jid ?? undefined, sid: sid ?? undefined, condition, kicked: kicked.length }, 'kick requested');
    respond(response, kicked.length > 0 ? 200 : 404, JSON_TYPE, `${JSON.stringify({ kicked })}\n`);
  }

  /** RFC 6750 §2.1 `Authorization: Bearer <token>`, compared in constant time (digests of equal length). */
  private authorized(request: IncomingMessage): boolean {
    if (this.tokenDigest === undefined) return true;
    const match = /^Bearer[ ]+(\S+)\s*$/i.exec(request.headers.authorization ?? '');
    return match !== null && timingSafeEqual(digest(match[1]!), this.tokenDigest);
  }
}

/**
 * The token in `admin.tokenFile`.
 * @throws ConfigError `PROXY_ERR_ADMIN_TOKEN` naming the file when it cannot be read or holds no single token.
 */
export function readAdminToken(path: string): Promise<string> {
  return readSecretFile(path, '/admin/tokenFile', ErrorCode.ADMIN_TOKEN);
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

function respond(response: ServerResponse, status: number, contentType: string, body: string): void {
  response.writeHead(status, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
  response.end(body);
}
