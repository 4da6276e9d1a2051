import { pino } from 'pino';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { SmEvents, type SmEventMap } from '../../src/session/events.js';

/** A pino logger whose lines land in `lines`, parsed. */
function capturingLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const QUEUED: SmEventMap['stanzaQueuedWhileHibernating'][0] = { sid: 's1', jid: 'a@x/r', smId: 'id', queued: 1, kind: 'message' };

describe('SmEvents.notify', () => {
  it.each([
    [
      'an Error',
      () => {
        throw new Error('listener bug');
      },
      'listener bug',
    ],
    [
      'a non-Error value',
      () => {
        throw 'a string';
      },
      'a string',
    ],
  ])('logs a listener that throws %s with the event name, and still calls the listeners after it', (_label, thrower, message) => {
    const events = new SmEvents();
    const { log, lines } = capturingLogger();
    const seen: string[] = [];
    events.on('stanzaQueuedWhileHibernating', (e) => seen.push(`first ${e.kind}`));
    events.on('stanzaQueuedWhileHibernating', thrower);
    events.on('stanzaQueuedWhileHibernating', (e) => seen.push(`last ${e.kind}`));
    expect(() => events.notify(log, 'stanzaQueuedWhileHibernating', QUEUED)).not.toThrow();
    expect(seen).toEqual(['first message', 'last message']);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 50,
      event: 'stanzaQueuedWhileHibernating',
      err: message,
      msg: 'SM event listener threw; ignored',
    });
  });

  it('removes once listeners, as emit does', () => {
    const events = new SmEvents();
    const { log } = capturingLogger();
    let calls = 0;
    events.once('ackDelayed', () => calls++);
    events.notify(log, 'ackDelayed', { sid: 's1', jid: 'a@x/r', unacked: 1, waitedMs: 60_000 });
    events.notify(log, 'ackDelayed', { sid: 's1', jid: 'a@x/r', unacked: 1, waitedMs: 60_000 });
    expect(calls).toBe(1);
    expect(events.listenerCount('ackDelayed')).toBe(0);
  });

  it('does nothing without listeners', () => {
    const { log, lines } = capturingLogger();
    new SmEvents().notify(log, 'hibernationEnded', { sid: 's1', jid: 'a@x/r', smId: 'id', reason: 'expired', hibernatedMs: 5 });
    expect(lines).toEqual([]);
  });
});
