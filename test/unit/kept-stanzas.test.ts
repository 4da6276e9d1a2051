import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KeptStanzas } from '../../src/session/kept-stanzas.js';

const PHONE = 'user@example.com/phone';
const DESK = 'user@example.com/desk';

/** A logger that records what it was given, to see the warnings. */
function recordingLog(): { log: pino.Logger; lines: { code?: string; dropped?: number; msg?: string }[] } {
  const lines: { code?: string; dropped?: number; msg?: string }[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as (typeof lines)[number]) });
  return { log, lines };
}

const stanzas = (...ids: string[]): Buffer[] => ids.map((id) => Buffer.from(`<message id='${id}'/>`));

describe('KeptStanzas: stanzas for the next session of a full JID', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('gives a full JID what was kept for it, in the order kept, once', () => {
    const { log } = recordingLog();
    const kept = new KeptStanzas();
    kept.keep(PHONE, stanzas('a', 'b'), 1000, log);
    kept.keep(DESK, stanzas('d'), 1000, log);
    kept.keep(PHONE, stanzas('c'), 1000, log);
    expect(kept.count).toBe(2);
    expect(kept.take((jid) => jid === PHONE).map(String)).toEqual(stanzas('a', 'b', 'c').map(String));
    expect(kept.take((jid) => jid === PHONE)).toEqual([]);
    expect(kept.count).toBe(1);
  });

  it('drops them keepMs after the first keep (a later one does not extend it), with a warning that counts them', () => {
    const { log, lines } = recordingLog();
    const kept = new KeptStanzas();
    kept.keep(PHONE, stanzas('a'), 1000, log);
    vi.advanceTimersByTime(600);
    kept.keep(PHONE, stanzas('b'), 1000, log);
    vi.advanceTimersByTime(399);
    expect(kept.count).toBe(1);
    vi.advanceTimersByTime(1);
    expect(kept.count).toBe(0);
    expect(lines.filter((line) => line.code === 'PROXY_ERR_KEPT_STANZAS_DROPPED')).toMatchObject([{ dropped: 2 }]);
  });

  it('drops everything when the proxy stops, with a warning that counts them', () => {
    const { log, lines } = recordingLog();
    const kept = new KeptStanzas();
    kept.keep(PHONE, stanzas('a', 'b'), 1000, log);
    kept.keep(DESK, stanzas('c'), 1000, log);
    kept.dropAll(log);
    expect(kept.count).toBe(0);
    expect(lines.filter((line) => line.code === 'PROXY_ERR_KEPT_STANZAS_DROPPED')).toMatchObject([{ dropped: 3 }]);
  });

  it('keeps nothing with keepMs 0 (the proxy stops), and warns with the count at once', () => {
    const { log, lines } = recordingLog();
    const kept = new KeptStanzas();
    kept.keep(PHONE, stanzas('a', 'b'), 0, log);
    expect(kept.count).toBe(0);
    expect(lines.filter((line) => line.code === 'PROXY_ERR_KEPT_STANZAS_DROPPED')).toMatchObject([{ dropped: 2 }]);
  });
});
