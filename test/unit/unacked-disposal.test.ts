import { describe, expect, it } from 'vitest';
import { pingAnswer, unackedDisposal } from '../../src/session/hibernation.js';
import { parseElement } from '../../src/xml/element.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const scanned = (xml: string) => scanFragment(Buffer.from(xml), LIMITS);

describe('pingAnswer (XEP-0199 §4.2)', () => {
  it("answers the legacy server's ping to the client with a result to its sender, same id", () => {
    const answer = pingAnswer(
      scanned("<iq type='get' id='p&amp;1' from='localhost' to='a@localhost/r'><ping xmlns='urn:xmpp:ping'/></iq>"),
    );
    expect(parseElement(answer!).attrs).toEqual({ type: 'result', to: 'localhost', id: 'p&1' });
  });

  it.each([
    ['a ping result', "<iq type='result' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"],
    ['another iq get', "<iq type='get' id='v1' from='b@localhost/x'><query xmlns='jabber:iq:version'/></iq>"],
    ['a message mentioning the namespace', "<message from='b@localhost/x'><body>urn:xmpp:ping</body></message>"],
  ])('leaves %s alone', (_label, xml) => {
    expect(pingAnswer(scanned(xml))).toBeUndefined();
  });
});

describe('unackedDisposal (XEP-0198 §5)', () => {
  const message = Buffer.from("<message from='b@localhost/x' to='a@localhost/r' id='m1' type='chat'><body>hi</body></message>");
  const presence = Buffer.from("<presence from='b@localhost/x' to='a@localhost/r'/>");

  it('answers what can be answered through the user stream (presence is dropped)', () => {
    const disposal = unackedDisposal([message, presence], 'bounce', 'a@localhost/r');
    expect(disposal.kind).toBe('answered');
    if (disposal.kind !== 'answered') return;
    expect(disposal.count).toBe(2);
    expect(disposal.bounces.map((xml) => parseElement(xml).attrs)).toEqual([{ to: 'b@localhost/x', type: 'error', id: 'm1' }]);
  });

  it('drops them by policy, or loses them when the stream is gone', () => {
    expect(unackedDisposal([message], 'drop', 'a@localhost/r')).toEqual({ kind: 'dropped-by-policy', count: 1 });
    expect(unackedDisposal([message, presence], 'bounce', undefined)).toEqual({ kind: 'lost', count: 2 });
  });
});
