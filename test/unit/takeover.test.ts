/**
 * The new process's side of an upgrade (src/upgrade/takeover.ts) against a scripted predecessor:
 * a connection accepted on a handed-over listening socket before the proxy's own server took it
 * is not lost, and the sessions, the ended ones and the announcement reach the proxy.
 */
import { EventEmitter } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { HibernatedSession } from '../../src/session/hibernated-snapshot.js';
import type { RememberedEnd, ToNext, ToPrevious } from '../../src/upgrade/handoff-protocol.js';
import { TakeOver, type TakingOverProxy } from '../../src/upgrade/takeover.js';
import type { ReleasedUpstream } from '../../src/upstream/upstream-link.js';

/** The IPC end of the new process: what it sends is recorded; the test plays the predecessor. */
class FakeEnd extends EventEmitter {
  readonly sent: ToPrevious[] = [];
  send(message: ToPrevious, _handle: unknown, callback: (err: Error | null) => void): boolean {
    this.sent.push(message);
    queueMicrotask(() => callback(null));
    return true;
  }
  deliver(message: ToNext, handle?: unknown): void {
    this.emit('message', message, handle);
  }
}

class FakeProxy implements TakingOverProxy {
  /** The proxy's own server for the handed-over socket, once started: what it accepts is recorded. */
  own: Server | undefined;
  readonly accepted: Socket[] = [];
  readonly adopted: HibernatedSession[] = [];
  readonly ended: RememberedEnd[] = [];
  readonly expected: string[] = [];
  over = 0;
  constructor(private readonly startDelayMs: number) {}
  async prepare(): Promise<void> {}
  async start(inherited: ReadonlyMap<string, Server>): Promise<unknown> {
    // As slow as loading what the listener needs: connections arrive meanwhile.
    await new Promise((resolve) => setTimeout(resolve, this.startDelayMs));
    const handle = inherited.get('starttls 127.0.0.1:0')!;
    this.own = createServer((socket) => this.accepted.push(socket));
    await new Promise<void>((resolve) => this.own!.listen(handle, resolve));
    return [];
  }
  listeningSockets(): ReadonlyMap<string, Server> {
    return new Map(this.own === undefined ? [] : [['starttls 127.0.0.1:0', this.own]]);
  }
  adopt(session: HibernatedSession, _released: ReleasedUpstream | undefined): void {
    this.adopted.push(session);
  }
  rememberEnded(sessions: readonly RememberedEnd[]): void {
    this.ended.push(...sessions);
  }
  expectArrivals(smIds: readonly string[]): void {
    this.expected.push(...smIds);
  }
  handOffOver(): void {
    this.over++;
  }
}

const closers: (() => void)[] = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
});

describe('TakeOver: the new process takes over', () => {
  it('parks what a handed-over socket accepts before the proxy took it, and hands it on', async () => {
    const end = new FakeEnd();
    const proxy = new FakeProxy(200);
    const takeOver = new TakeOver(end, pino({ level: 'silent' }));
    // The socket the predecessor listens on, as Node hands it to the new process: already accepting.
    const received = createServer();
    await new Promise<void>((resolve) => received.listen(0, '127.0.0.1', resolve));
    const { port } = received.address() as { port: number };
    const started = takeOver.start(proxy);
    await new Promise((resolve) => setImmediate(resolve));
    end.deliver({ kind: 'listener', key: 'starttls 127.0.0.1:0' }, received);
    await new Promise((resolve) => setImmediate(resolve));
    const early = connect(port, '127.0.0.1');
    closers.push(
      () => early.destroy(),
      () => proxy.own?.close(),
    );
    await new Promise((resolve) => early.once('connect', resolve));
    end.deliver({ kind: 'listeners-sent', count: 1 });
    await started;
    expect(end.sent.map((m) => m.kind)).toEqual(['ready', 'listening']);
    expect(proxy.accepted, 'the early connection reached the proxy').toHaveLength(1);
    expect(proxy.accepted[0]!.remotePort).toBe(early.localPort);
  });

  it('takes sessions, ended ones and announcements until the predecessor is done; answers each session', async () => {
    const end = new FakeEnd();
    const proxy = new FakeProxy(0);
    const takeOver = new TakeOver(end, pino({ level: 'silent' }));
    const receiving = takeOver.receiveSessions(proxy);
    const ended = { smId: 'e1', h: 4, bareJid: 'a@example.org', domain: 'example.org', reason: 'closed' as const, endedAtMs: 1 };
    end.deliver({ kind: 'ended', sessions: [ended] });
    end.deliver({ kind: 'coming', smIds: ['s1', 's2'] });
    end.deliver({ kind: 'session', session: { version: 99 }, serverHeader: 'eA==' });
    await new Promise((resolve) => setImmediate(resolve));
    end.deliver({ kind: 'done', handedOver: 1 });
    expect(await receiving, 'a snapshot of another version is dropped, and answered').toBe(0);
    expect(end.sent.map((m) => m.kind)).toEqual(['adopted', 'running']);
    expect([proxy.ended, proxy.expected, proxy.over]).toEqual([[ended], ['s1', 's2'], 1]);
  });

  it('runs on alone when the predecessor goes away mid-way: what was announced is forgotten', async () => {
    const end = new FakeEnd();
    const proxy = new FakeProxy(0);
    const receiving = new TakeOver(end, pino({ level: 'silent' })).receiveSessions(proxy);
    end.deliver({ kind: 'coming', smIds: ['s1'] });
    end.emit('disconnect');
    expect(await receiving).toBe(0);
    expect(proxy.over).toBe(1);
  });
});
