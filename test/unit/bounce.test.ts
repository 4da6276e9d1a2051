import { describe, expect, it } from 'vitest';
import { bounceFor } from '../../src/session/bounce.js';
import { parseElement } from '../../src/xml/element.js';

function bounce(xml: string) {
  const out = bounceFor(Buffer.from(xml));
  return out === undefined ? undefined : parseElement(out);
}

describe('bounceFor (expiry of unacked stanzas)', () => {
  it('answers a chat message with recipient-unavailable to its sender, keeping id and body', () => {
    const reply = bounce("<message from='alice@x/phone' to='bob@x/r' id='m-17' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>");
    expect(reply?.attrs).toEqual({ to: 'alice@x/phone', type: 'error', id: 'm-17' });
    expect(reply?.getChildText('body')).toBe('hi');
    expect(reply?.getChild('active')).toBeUndefined();
    const error = reply?.getChild('error');
    expect(error?.attrs.type).toBe('wait');
    expect(error?.getChild('recipient-unavailable', 'urn:ietf:params:xml:ns:xmpp-stanzas')).toBeDefined();
  });

  it('answers iq get/set with service-unavailable', () => {
    const reply = bounce("<iq from='x' to='bob@x/r' id='q1' type='get'><query xmlns='jabber:iq:version'/></iq>");
    expect(reply?.attrs.type).toBe('error');
    expect(reply?.getChild('error')?.getChild('service-unavailable')).toBeDefined();
  });

  it.each([
    ['presence', "<presence from='alice@x/p' to='bob@x'/>"],
    ['an error', "<message from='alice@x' type='error' id='e'><error type='cancel'/></message>"],
    ['an iq result', "<iq from='x' type='result' id='r'/>"],
    ['a carbon copy', "<message from='bob@x' to='bob@x/r'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></received></message>"],
    ['a stanza without from', "<message to='bob@x/r'><body>x</body></message>"],
  ])('drops %s', (_label, xml) => {
    expect(bounce(xml)).toBeUndefined();
  });
});
