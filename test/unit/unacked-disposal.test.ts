import { describe, expect, it } from 'vitest';
import { unackedDisposal } from '../../src/session/unacked-disposal.js';
import { parseElement } from '../../src/xml/element.js';

describe('unackedDisposal (XEP-0198 §5)', () => {
  const message = Buffer.from("<message from='b@localhost/x' to='a@localhost/r' id='m1' type='chat'><body>hi</body></message>");
  const presence = Buffer.from("<presence from='b@localhost/x' to='a@localhost/r'/>");

  it('answers what can be answered through the user stream (presence is dropped)', () => {
    const disposal = unackedDisposal([message, presence], 'bounce', 'a@localhost/r');
    expect(disposal.kind).toBe('answered');
    if (disposal.kind !== 'answered') return;
    expect(disposal.count).toBe(2);
    expect(disposal.bounces.map((xml) => parseElement(xml).attrs)).toEqual([{ to: 'b@localhost/x', type: 'error', id: 'm1' }]);
    expect(disposal.answered).toEqual([message]);
  });

  it('drops them by policy, or loses them when the stream is gone', () => {
    expect(unackedDisposal([message], 'drop', 'a@localhost/r')).toEqual({ kind: 'dropped-by-policy', count: 1 });
    expect(unackedDisposal([message, presence], 'bounce', undefined)).toEqual({ kind: 'lost', count: 2 });
  });
});
