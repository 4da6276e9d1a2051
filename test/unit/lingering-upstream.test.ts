import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LingeringUpstreams, type LateStanzas } from '../../src/session/lingering-upstream.js';
import type { UpstreamHandler, UpstreamStream } from '../../src/upstream/upstream-link.js';
import { NS } from '../../src/xml/namespaces.js';

const JID = 'user@example.com/phone';
const TIMING = { quietMs: 100, maxMs: 1000 };
const log = pino({ level: 'silent' });

/** An upstream stream that records what is written and lets the test play the legacy server. */
class Upstream implements UpstreamStream {
  ended = false;
  closed = false;
  paused = true;
  readonly sent: string[] = [];
  handler: UpstreamHandler | undefined;
  setHandler(handler: UpstreamHandler): void {
    this.handler = handler;
  }
  sendHeader(): void {}
  send(element: Buffer | string): boolean {
    this.sent.push(element.toString());
    return true;
  }
  startKeepalive(): void {}
  expectRestart(): void {}
  close(): void {
    this.closed = true;
  }
  destroy(): void {
    this.ended = true;
    this.handler?.onEnd(false);
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  release(): undefined {
    return undefined;
  }
  /** The legacy server sends a stanza (or any element) in the content namespace. */
  element(localName: string, xml: string, ns: string = NS.client): void {
    this.handler?.onElement({ bytes: Buffer.from(xml), name: localName, localName, ns });
  }
  serverCloses(): void {
    this.handler?.onStreamClose();
    this.ended = true;
    this.handler?.onEnd(true);
  }
}

const message = (id: string): string => `<message from='c@example.com/x' to='${JID}' id='${id}' type='chat'><body>hi</body></message>`;

describe('LingeringUpstreams: an ended session reads its upstream stream until the legacy server closed it', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('resumes reading, tells the server the user is unavailable, answers late stanzas, and reports once the connection is gone', () => {
    const lingering = new LingeringUpstreams(TIMING);
    const upstream = new Upstream();
    const reports: LateStanzas[] = [];
    lingering.linger(upstream, { jid: JID, expiryPolicy: 'bounce', wasAvailable: true, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    expect(upstream.paused).toBe(false);
    expect(upstream.sent).toEqual(["<presence type='unavailable'/>"]);
    upstream.element('message', message('a'));
    expect(upstream.sent[1]).toMatch(/^<message to="c@example.com\/x" type="error" id="a">/);
    vi.advanceTimersByTime(TIMING.quietMs);
    expect(upstream.closed).toBe(true);
    expect(lingering.count).toBe(1);
    upstream.serverCloses();
    expect(reports).toEqual([{ answered: 1, dropped: 0, handedOver: 0, unanswerable: 0, unread: 0 }]);
    expect(lingering.count).toBe(0);
  });

  it('with expiryPolicy drop, answers nothing and sends no presence for a client that was never available', () => {
    const lingering = new LingeringUpstreams(TIMING);
    const upstream = new Upstream();
    const reports: LateStanzas[] = [];
    lingering.linger(upstream, { jid: JID, expiryPolicy: 'drop', wasAvailable: false, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    upstream.element('message', message('a'));
    upstream.serverCloses();
    expect(upstream.sent).toEqual([]);
    expect(reports).toEqual([{ answered: 0, dropped: 1, handedOver: 0, unanswerable: 0, unread: 0 }]);
  });

  it('answers nothing after the server ended the stream with a stream error', () => {
    const lingering = new LingeringUpstreams(TIMING);
    const upstream = new Upstream();
    const reports: LateStanzas[] = [];
    lingering.linger(upstream, { jid: JID, expiryPolicy: 'bounce', wasAvailable: false, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    upstream.element('error', `<stream:error><conflict xmlns='${NS.streams}'/></stream:error>`, NS.stream);
    upstream.element('message', message('b'));
    upstream.serverCloses();
    expect(upstream.sent).toEqual([]);
    expect(reports).toEqual([{ answered: 0, dropped: 0, handedOver: 0, unanswerable: 1, unread: 0 }]);
  });

  it('hands what arrives behind the close to a new session of the same JID, in order, once the server closed', async () => {
    const lingering = new LingeringUpstreams(TIMING);
    const upstream = new Upstream();
    const other = new Upstream();
    const reports: LateStanzas[] = [];
    lingering.linger(upstream, { jid: JID, expiryPolicy: 'bounce', wasAvailable: false, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    lingering.linger(
      other,
      { jid: 'user@example.com/desk', expiryPolicy: 'bounce', wasAvailable: false, answered: [], keepMs: 0, log },
      () => undefined,
    );
    const sameJid = (jid: string): boolean => jid === JID;
    expect(lingering.has(sameJid)).toBe(true);
    let settled = false;
    const handing = lingering.handOver(sameJid).finally(() => (settled = true));
    expect(upstream.closed, 'closed at once, not after the quiet period').toBe(true);
    expect(other.closed).toBe(false);
    upstream.element('message', message('c'));
    upstream.element('presence', `<presence from='c@example.com/x' to='${JID}'/>`);
    for (let i = 0; i < 5; i++) await Promise.resolve();
    expect(settled, 'waits for the server to close').toBe(false);
    upstream.serverCloses();
    const inherited = await handing;
    expect(inherited.map((bytes) => bytes.toString())).toEqual([message('c'), `<presence from='c@example.com/x' to='${JID}'/>`]);
    expect(reports).toEqual([{ answered: 0, dropped: 0, handedOver: 2, unanswerable: 0, unread: 0 }]);
    expect(lingering.has(sameJid)).toBe(false);
  });

  describe('answers the server never read (it stopped before answering the close)', () => {
    const queued = [message('q1'), message('q2')].map((xml) => Buffer.from(xml));
    const shutdown = `<stream:error><system-shutdown xmlns='${NS.streams}'/></stream:error>`;
    const linger = (lingering: LingeringUpstreams, upstream: Upstream, reports: LateStanzas[], keepMs = 10_000): void =>
      lingering.linger(upstream, { jid: JID, expiryPolicy: 'bounce', wasAvailable: false, answered: queued, keepMs, log }, (late) =>
        reports.push(late),
      );

    it('keeps the answered stanzas, and those answered while lingering, for the next session of the JID, in order', () => {
      const lingering = new LingeringUpstreams(TIMING);
      const upstream = new Upstream();
      const reports: LateStanzas[] = [];
      linger(lingering, upstream, reports);
      upstream.element('message', message('late'));
      upstream.element('error', shutdown, NS.stream);
      upstream.destroy();
      expect(reports).toEqual([{ answered: 1, dropped: 0, handedOver: 0, unanswerable: 0, unread: 3 }]);
      expect(lingering.kept.take((jid) => jid === 'user@example.com/desk')).toEqual([]);
      expect(lingering.kept.take((jid) => jid === JID).map(String)).toEqual([message('q1'), message('q2'), message('late')]);
      expect(
        lingering.kept.take((jid) => jid === JID),
        'taken once',
      ).toEqual([]);
    });

    it('keeps nothing once the server answered the close: it read every answer before it', () => {
      const lingering = new LingeringUpstreams(TIMING);
      const upstream = new Upstream();
      const reports: LateStanzas[] = [];
      linger(lingering, upstream, reports);
      vi.advanceTimersByTime(TIMING.quietMs);
      upstream.serverCloses();
      expect(reports).toMatchObject([{ unread: 0 }]);
      expect(lingering.kept.count).toBe(0);
    });

    it("counts a close that follows the server's own stream error as no answer to the proxy's close", () => {
      const lingering = new LingeringUpstreams(TIMING);
      const upstream = new Upstream();
      const reports: LateStanzas[] = [];
      linger(lingering, upstream, reports);
      vi.advanceTimersByTime(TIMING.quietMs);
      expect(upstream.closed).toBe(true);
      upstream.element('error', shutdown, NS.stream);
      upstream.serverCloses();
      expect(reports).toMatchObject([{ unread: 2 }]);
    });

    it('counts the connection lost before the server answered the close as unread', () => {
      const lingering = new LingeringUpstreams(TIMING);
      const upstream = new Upstream();
      const reports: LateStanzas[] = [];
      linger(lingering, upstream, reports);
      vi.advanceTimersByTime(TIMING.quietMs);
      upstream.destroy();
      expect(reports).toMatchObject([{ unread: 2 }]);
    });

    it('forgets them after keepMs, and keeps nothing with keepMs 0', () => {
      const lingering = new LingeringUpstreams(TIMING);
      const reports: LateStanzas[] = [];
      const upstream = new Upstream();
      linger(lingering, upstream, reports, 5000);
      upstream.destroy();
      vi.advanceTimersByTime(4999);
      expect(lingering.kept.count).toBe(1);
      vi.advanceTimersByTime(1);
      expect(lingering.kept.count).toBe(0);
      const unkept = new Upstream();
      linger(lingering, unkept, reports, 0);
      unkept.destroy();
      expect(reports.at(-1)).toMatchObject({ unread: 2 });
      expect(lingering.kept.count).toBe(0);
    });

    it('has them kept by the time a new session that waited for the lingering stream gets what arrived behind the close', async () => {
      const lingering = new LingeringUpstreams(TIMING);
      const first = new Upstream();
      const reports: LateStanzas[] = [];
      linger(lingering, first, reports);
      first.element('error', shutdown, NS.stream);
      first.destroy();
      const second = new Upstream();
      lingering.linger(
        second,
        { jid: JID, expiryPolicy: 'bounce', wasAvailable: false, answered: [], keepMs: 10_000, log },
        () => undefined,
      );
      const handing = lingering.handOver((jid) => jid === JID);
      second.element('message', message('behind'));
      second.serverCloses();
      expect((await handing).map(String)).toEqual([message('behind')]);
      expect(lingering.kept.take((jid) => jid === JID).map(String)).toEqual([message('q1'), message('q2')]);
    });
  });

  it('reports at once for a connection already gone, and idle() waits for the rest until destroyAll', async () => {
    const lingering = new LingeringUpstreams(TIMING);
    const gone = new Upstream();
    gone.ended = true;
    const reports: LateStanzas[] = [];
    lingering.linger(gone, { jid: JID, expiryPolicy: 'bounce', wasAvailable: true, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    expect(reports).toHaveLength(1);
    expect(gone.sent).toEqual([]);

    const open = new Upstream();
    lingering.linger(open, { jid: JID, expiryPolicy: 'bounce', wasAvailable: false, answered: [], keepMs: 0, log }, (late) =>
      reports.push(late),
    );
    let idle = false;
    void lingering.idle().then(() => (idle = true));
    await Promise.resolve();
    expect(idle).toBe(false);
    lingering.destroyAll();
    await Promise.resolve();
    expect(idle).toBe(true);
    expect(reports).toHaveLength(2);
  });
});
