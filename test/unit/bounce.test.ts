import { describe, expect, it } from 'vitest';
import { bounceFor } from '../../src/session/bounce.js';
import { parseElement } from '../../src/xml/element.js';

/** The expiring session's own full JID. */
const OWN = 'bob@x/r';

function bounce(xml: string) {
  const out = bounceFor(Buffer.from(xml), OWN);
  return out === undefined ? undefined : parseElement(out);
}

describe('bounceFor (expiry of unacked stanzas)', () => {
  it('answers a chat message with recipient-unavailable to its sender, keeping id and body', () => {
    const reply = bounce(
      "<message from='alice@x/phone' to='bob@x/r' id='m-17' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    );
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
    [
      'a carbon copy',
      "<message from='bob@x' to='bob@x/r'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></received></message>",
    ],
    ['a stanza without from', "<message to='bob@x/r'><body>x</body></message>"],
    [
      'a sent carbon',
      "<message from='bob@x' to='bob@x/r'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></sent></message>",
    ],
    [
      'a headline (RFC 6121 §8.5.3.2.1)',
      "<message from='pubsub.x' to='bob@x/r' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'/></message>",
    ],
    [
      'an archive result (XEP-0313)',
      "<message from='bob@x' to='bob@x/r'><result xmlns='urn:xmpp:mam:2' queryid='q' id='a1'><forwarded xmlns='urn:xmpp:forward:0'/></result></message>",
    ],
    ['what the session itself sent', "<message from='bob@x/r' to='bob@x/r' id='self'><body>note to self</body></message>"],
  ])('drops %s', (_label, xml) => {
    expect(bounce(xml)).toBeUndefined();
  });

  it.each([
    [
      'a message marked <private/> for carbons (a marker, not a copy)',
      "<message from='alice@x/p' to='bob@x/r' id='p1' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>",
    ],
    [
      'a groupchat message (RFC 6121 §8.5.3.2.1: an error to the sender)',
      "<message from='room@muc.x/alice' to='bob@x/r' id='g1' type='groupchat'><body>x</body></message>",
    ],
    [
      'a message from another resource of the same account',
      "<message from='bob@x/laptop' to='bob@x/r' id='o1' type='chat'><body>x</body></message>",
    ],
  ])('bounces %s', (_label, xml) => {
    expect(bounce(xml)?.getChild('error')?.getChild('recipient-unavailable')).toBeDefined();
  });
});
