import { describe, expect, it } from 'vitest';
import { addDelay } from '../../src/features/delay-stamp.js';
import { isElementNamed } from '../../src/xml/stanza-bytes.js';
import { parseElement } from '../../src/xml/element.js';

const STAMP = Date.UTC(2026, 10, 25, 8, 30, 0);

describe('addDelay', () => {
  it('inserts <delay/> before the end tag and keeps the original bytes', () => {
    const original = "<message to='a@x/r' id='m1'><body>caf\u00e9 &amp; \u{1F600}</body></message>";
    const out = addDelay(Buffer.from(original), STAMP, 'b@x').toString();
    expect(out).toBe(
      "<message to='a@x/r' id='m1'><body>caf\u00e9 &amp; \u{1F600}</body>" +
        "<delay xmlns='urn:xmpp:delay' from='b@x' stamp='2026-11-25T08:30:00.000Z'/></message>",
    );
  });

  it('expands a self-closing message', () => {
    const out = addDelay(Buffer.from("<message id='x'/>"), STAMP, 'b@x').toString();
    expect(parseElement(out).getChild('delay', 'urn:xmpp:delay')?.attrs.stamp).toBe('2026-11-25T08:30:00.000Z');
    expect(out.endsWith('</message>')).toBe(true);
  });

  it.each([
    // [what, message, already stamped: returned unchanged]
    [
      'an offline message',
      "<message id='o'><body>x</body><delay xmlns='urn:xmpp:delay' from='x' stamp='2020-01-01T00:00:00Z'>Offline Storage</delay></message>",
      true,
    ],
    ['a self-closing delay', "<message id='o'><delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/></message>", true],
    ['a prefixed delay', "<message id='o'><d:delay xmlns:d='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/></message>", true],
    [
      'a carbon whose forwarded message has a delay',
      "<message id='c'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/><message xmlns='jabber:client'/></forwarded></received></message>",
      false,
    ],
    ['a body naming the delay namespace', "<message id='b'><body>urn:xmpp:delay</body></message>", false],
  ])('%s: already stamped → %s', (_label, original, unchanged) => {
    const out = addDelay(Buffer.from(original), STAMP, 'b@x').toString();
    if (unchanged) {
      expect(out).toBe(original);
    } else {
      const delays = parseElement(out).getChildren('delay', 'urn:xmpp:delay');
      expect(delays.map((d) => d.attrs.stamp)).toEqual(['2026-11-25T08:30:00.000Z']);
    }
  });

  it('keeps a prefixed end tag', () => {
    const out = addDelay(Buffer.from("<c:message xmlns:c='jabber:client'><c:body>x</c:body></c:message>"), STAMP, 'b@x').toString();
    expect(out.endsWith('/></c:message>')).toBe(true);
  });
});

describe('isElementNamed', () => {
  it.each([
    ["<message to='a'/>", 'message', true],
    ['<message>', 'message', true],
    ['<messages/>', 'message', false],
    ["<presence to='a'/>", 'message', false],
    ['<iq/>', 'message', false],
    ["<iq\ttype='get'/>", 'iq', true],
    ['<iqx/>', 'iq', false],
    ['<i', 'iq', false],
  ])('%s is <%s>: %s', (xml, name, expected) => {
    expect(isElementNamed(Buffer.from(xml), name)).toBe(expected);
  });
});
