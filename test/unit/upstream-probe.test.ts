import { afterEach, describe, expect, it, vi } from 'vitest';
import { UpstreamProbe } from '../../src/session/upstream-probe.js';
import { StreamScanner, type ScannedElement } from '../../src/xml/stream-scanner.js';

/** The elements of `xml` as the session's upstream scanner hands them out. */
function scanned(xml: string): ScannedElement {
  const elements: ScannedElement[] = [];
  const scanner = new StreamScanner(
    {
      onStreamOpen() {},
      onElement(element) {
        elements.push(element);
      },
      onStreamClose() {},
      onError(error) {
        throw error;
      },
    },
    { maxStanzaBytes: 65536, maxDepth: 16 },
  );
  scanner.write(Buffer.from(`<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>${xml}`));
  return elements[0]!;
}

function probe(timeoutMs = 10_000): { probe: UpstreamProbe; sent: string[]; settled: () => boolean } {
  const sent: string[] = [];
  let done = false;
  const p = new UpstreamProbe((data) => sent.push(data), 'example.org', timeoutMs);
  void p.done.then(() => {
    done = true;
  });
  return { probe: p, sent, settled: () => done };
}

const idOf = (sent: string): string => /id='([^']+)'/.exec(sent)![1]!;

afterEach(() => {
  vi.useRealTimers();
});

describe('UpstreamProbe: one round trip on a hibernating session’s upstream stream', () => {
  it('sends an XEP-0199 ping to the domain, with an id of its own', () => {
    const { sent } = probe();
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatch(/^<iq type='get' id='smacks-probe-[0-9a-f]{12}' to='example\.org'><ping xmlns='urn:xmpp:ping'\/><\/iq>$/);
    expect(idOf(probe().sent[0]!)).not.toBe(idOf(sent[0]!));
  });

  it.each([
    ['a result', (id: string) => `<iq type='result' id='${id}' from='example.org'/>`],
    ['an error (a server without XEP-0199)', (id: string) => `<iq type='error' id='${id}'><error type='cancel'/></iq>`],
  ])('is answered by %s, which it consumes', async (_label, answer) => {
    const { probe: p, sent, settled } = probe();
    expect(p.answers(scanned(answer(idOf(sent[0]!))))).toBe(true);
    await p.done;
    expect(settled()).toBe(true);
  });

  it('leaves every other stanza to the client, even one that mentions its id', async () => {
    const { probe: p, sent, settled } = probe();
    const id = idOf(sent[0]!);
    for (const other of [
      `<iq type='result' id='x${id}'/>`,
      `<iq type='get' id='${id}'><ping xmlns='urn:xmpp:ping'/></iq>`,
      `<message id='${id}'><body>${id}</body></message>`,
      `<iq type='result' id='other'><query>${id}</query></iq>`,
    ]) {
      expect(p.answers(scanned(other)), other).toBe(false);
    }
    await Promise.resolve();
    expect(settled()).toBe(false);
  });

  it('settles without an answer after its timeout, or when told', async () => {
    vi.useFakeTimers();
    const slow = probe(10_000);
    await vi.advanceTimersByTimeAsync(9_999);
    expect(slow.settled()).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(slow.settled()).toBe(true);

    const told = probe(10_000);
    told.probe.settled();
    await vi.advanceTimersByTimeAsync(0);
    expect(told.settled()).toBe(true);
  });
});
