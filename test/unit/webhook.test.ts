import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Webhook, type WebhookOutcome } from '../../src/admin/webhook.js';
import { SmEvents } from '../../src/session/events.js';
import { waitUntil } from '../support/wait.js';

const SECRET = 'webhook-secret';
const log = pino({ level: 'silent' });

interface Received {
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
}

/** An HTTP endpoint on loopback that records each POST and answers with the next status of `statuses` (then 204). */
async function endpoint(statuses: number[] = []): Promise<{ url: string; received: Received[]; server: Server }> {
  const received: Received[] = [];
  const server = createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    request.on('end', () => {
      received.push({ headers: request.headers, body });
      response.writeHead(statuses.shift() ?? 204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`, received, server };
}

const servers: Server[] = [];
const webhooks: Webhook[] = [];
afterEach(async () => {
  for (const webhook of webhooks.splice(0)) webhook.stop();
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

function start(
  url: string,
  events: SmEvents,
  outcomes: WebhookOutcome[],
  options: { maxQueue?: number; maxAttempts?: number } = {},
): Webhook {
  const webhook = new Webhook(
    {
      url,
      secret: SECRET,
      events: ['hibernationStarted', 'hibernationEnded', 'stanzaQueuedWhileHibernating'],
      maxQueue: options.maxQueue ?? 100,
      timeoutMs: 2000,
      maxAttempts: options.maxAttempts ?? 3,
      outcome: (outcome) => outcomes.push(outcome),
      log,
      now: () => Date.UTC(2026, 11, 4, 12, 0, 0),
    },
    events,
  );
  webhooks.push(webhook);
  return webhook;
}

const started = { sid: 's1', jid: 'alice@example.org/phone', smId: 'secret-sm-id', queued: 2, timeoutMs: 300_000 };

describe('Webhook', () => {
  it('POSTs the chosen events in order, signed over the timestamp and the body, without the SM-ID', async () => {
    const { url, received } = await endpoint();
    const events = new SmEvents();
    const outcomes: WebhookOutcome[] = [];
    start(url, events, outcomes);
    events.notify(log, 'hibernationStarted', started);
    events.notify(log, 'ackDelayed', { sid: 's1', jid: 'alice@example.org/phone', unacked: 1, waitedMs: 60_000 });
    events.notify(log, 'stanzaQueuedWhileHibernating', {
      sid: 's1',
      jid: 'alice@example.org/phone',
      smId: 'secret-sm-id',
      queued: 3,
      kind: 'message',
    });
    events.notify(log, 'hibernationEnded', {
      sid: 's1',
      jid: 'alice@example.org/phone',
      smId: 'secret-sm-id',
      reason: 'resumed',
      hibernatedMs: 4000,
    });
    const webhook = webhooks[0]!;
    await webhook.idle();
    expect(outcomes).toHaveLength(3);
    await webhook.idle();
    expect(outcomes).toEqual(['delivered', 'delivered', 'delivered']);
    const bodies = received.map((r) => JSON.parse(r.body) as { event: string; time: string; data: Record<string, unknown> });
    expect(bodies.map((b) => b.event)).toEqual(['hibernationStarted', 'stanzaQueuedWhileHibernating', 'hibernationEnded']);
    expect(bodies[0]).toEqual({
      event: 'hibernationStarted',
      time: '2026-12-04T12:00:00.000Z',
      data: { sid: 's1', jid: 'alice@example.org/phone', queued: 2, timeoutMs: 300_000 },
    });
    for (const { headers, body } of received) {
      expect(body).not.toContain('secret-sm-id');
      expect(headers['content-type']).toBe('application/json');
      const timestamp = headers['x-smacks-timestamp'] as string;
      expect(timestamp).toBe(String(Date.UTC(2026, 11, 4, 12, 0, 0) / 1000));
      const expected = createHmac('sha256', SECRET).update(`${timestamp}.${body}`).digest('hex');
      expect(headers['x-smacks-signature']).toBe(`sha256=${expected}`);
    }
  });

  it('retries a 503; gives up on a 400 at once and goes on with the next event', async () => {
    const { url, received } = await endpoint([503, 400]);
    const events = new SmEvents();
    const outcomes: WebhookOutcome[] = [];
    start(url, events, outcomes);
    events.notify(log, 'hibernationStarted', started);
    events.notify(log, 'hibernationStarted', { ...started, sid: 's2' });
    await waitUntil(() => outcomes.length === 2, 'two outcomes', 5000);
    // s1: 503, then 400 (final); s2: 204.
    expect(outcomes).toEqual(['failed', 'delivered']);
    expect(received.map((r) => (JSON.parse(r.body) as { data: { sid: string } }).data.sid)).toEqual(['s1', 's1', 's2']);
  });

  it('with room for one event only, keeps the one in flight and drops the newcomer', async () => {
    const events = new SmEvents();
    const outcomes: WebhookOutcome[] = [];
    const webhook = start('http://127.0.0.1:1/hook', events, outcomes, { maxQueue: 1, maxAttempts: 100 });
    for (const sid of ['a', 'b']) events.notify(log, 'hibernationStarted', { ...started, sid });
    expect(outcomes).toEqual(['dropped']);
    expect(webhook.stop()).toBe(1);
  });

  it('gives up at once on a URL fetch refuses (user name and password), without retries', async () => {
    const events = new SmEvents();
    const outcomes: WebhookOutcome[] = [];
    start('http://user:secret@127.0.0.1:1/hook', events, outcomes);
    events.notify(log, 'hibernationStarted', started);
    await waitUntil(() => outcomes.length === 1, 'the outcome', 2000);
    expect(outcomes).toEqual(['failed']);
  });

  it('drops the oldest waiting event when the queue is full, never the one in flight, and says what is left at stop', async () => {
    const events = new SmEvents();
    const outcomes: WebhookOutcome[] = [];
    // Nothing listens there: every POST fails and waits for its retry.
    const webhook = start('http://127.0.0.1:1/hook', events, outcomes, { maxQueue: 2, maxAttempts: 100 });
    for (const sid of ['a', 'b', 'c', 'd']) events.notify(log, 'hibernationStarted', { ...started, sid });
    expect(outcomes).toEqual(['dropped', 'dropped']);
    expect(webhook.stop()).toBe(2);
  });
});
