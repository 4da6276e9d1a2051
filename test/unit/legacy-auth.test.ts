import { describe, expect, it } from 'vitest';
import { refuseLegacyAuth } from '../../src/features/legacy-auth.js';
import { parseElement } from '../../src/xml/element.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const scanned = (xml: string) => scanFragment(Buffer.from(xml), LIMITS);

describe('refuseLegacyAuth (XEP-0078)', () => {
  it.each([
    [
      'get (field discovery)',
      "<iq type='get' id='a1' to='localhost'><query xmlns='jabber:iq:auth'><username>alice</username></query></iq>",
    ],
    [
      'set (plaintext login)',
      "<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>alice</username><password>x</password><resource>r</resource></query></iq>",
    ],
    [
      'set with the namespace written with a character reference',
      "<iq type='set' id='a1'><query xmlns='jabber:iq&#58;auth'><username>alice</username><password>x</password><resource>r</resource></query></iq>",
    ],
  ])('answers a %s with service-unavailable and the same id', (_label, xml) => {
    const answer = refuseLegacyAuth(scanned(xml));
    expect(answer).toBeDefined();
    const iq = parseElement(answer!);
    expect(iq.attrs).toMatchObject({ type: 'error', id: 'a1' });
    expect(iq.getChild('error')?.getChild('service-unavailable', 'urn:ietf:params:xml:ns:xmpp-stanzas')).toBeDefined();
    expect(answer).not.toContain('alice');
  });

  it.each([
    ['in-band registration', "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>"],
    ['an iq result that mentions the namespace', "<iq type='result' id='a1'><query xmlns='jabber:iq:auth'/></iq>"],
    ['a message', '<message><body>jabber:iq:auth</body></message>'],
  ])('leaves %s alone', (_label, xml) => {
    expect(refuseLegacyAuth(scanned(xml))).toBeUndefined();
  });
});
