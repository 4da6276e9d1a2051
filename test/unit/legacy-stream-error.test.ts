import { describe, expect, it } from 'vitest';
import { toRfc6120StreamError } from '../../src/xml/legacy-stream-error.js';

const STREAMS = 'urn:ietf:params:xml:ns:xmpp-streams';

describe('toRfc6120StreamError', () => {
  it.each([
    [
      'jabberd2 bad XML',
      `<stream:error xmlns:stream='http://etherx.jabber.org/streams'><xml-not-well-formed xmlns='${STREAMS}'/></stream:error>`,
      `<stream:error xmlns:stream="http://etherx.jabber.org/streams"><not-well-formed xmlns="${STREAMS}"/></stream:error>`,
    ],
    [
      'text and application condition kept',
      `<stream:error><invalid-id xmlns='${STREAMS}'/><text xmlns='${STREAMS}'>bad id</text><x xmlns='urn:example'/></stream:error>`,
      `<stream:error><undefined-condition xmlns="${STREAMS}"/><text xmlns="${STREAMS}">bad id</text><x xmlns="urn:example"/></stream:error>`,
    ],
    [
      'prefixed condition',
      `<stream:error xmlns:e='${STREAMS}'><e:xml-not-well-formed/></stream:error>`,
      `<stream:error xmlns:e="${STREAMS}"><e:not-well-formed/></stream:error>`,
    ],
  ])('maps %s to its RFC 6120 condition', (_label, input, expected) => {
    expect(toRfc6120StreamError(Buffer.from(input)).toString()).toBe(expected);
  });

  it.each([
    ['an RFC 6120 condition', `<stream:error><not-well-formed xmlns='${STREAMS}'/></stream:error>`],
    [
      'the old name in the text only',
      `<stream:error><conflict xmlns='${STREAMS}'/><text xmlns='${STREAMS}'>xml-not-well-formed</text></stream:error>`,
    ],
    [
      'the old name in another namespace',
      `<stream:error><system-shutdown xmlns='${STREAMS}'/><xml-not-well-formed xmlns='urn:example'/></stream:error>`,
    ],
  ])('relays %s byte for byte', (_label, input) => {
    const bytes = Buffer.from(input);
    expect(toRfc6120StreamError(bytes)).toBe(bytes);
  });
});
