import sax from 'sax';
import { describe, expect, it } from 'vitest';
import { BUILTIN_HOOKS } from '../../src/features/builtin-hooks.js';
import { rewriteFeatures } from '../../src/session/features.js';
import { SessionHooks } from '../../src/session/hooks.js';
import { parseElement } from '../../src/xml/element.js';
import { declaration, declareOnStartTag, InheritedNamespaces } from '../../src/xml/namespace-declarations.js';
import { renderStreamHeader } from '../../src/xml/stream-header.js';
import { StreamScanner, type ScannedElement, type StreamHeader } from '../../src/xml/stream-scanner.js';

// jabberd2 2.7 (Debian 12) declares the draft XEP-0198 namespace on its stream header and relies on
// it inside its features: a client that only sees the proxy's header must still get bound prefixes.
// The header and features below are jabberd2's own, as it sent them to a raw client.
const JABBERD2_HEADER =
  "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' " +
  "xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns' from='localhost' version='1.0' id='j2'>";
const JABBERD2_POST_AUTH_FEATURES =
  "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><ack:ack/><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>" +
  "<unbind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><ver xmlns='urn:xmpp:features:rosterver'></ver></stream:features>";

/** Frames a stream with the real scanner, every split offset of the body, through InheritedNamespaces. */
function frame(header: string, body: string, splitAt: number): ScannedElement[] {
  const elements: ScannedElement[] = [];
  let inherited: InheritedNamespaces | undefined;
  const scanner = new StreamScanner(
    {
      onStreamOpen: (h: StreamHeader) => {
        inherited = InheritedNamespaces.of(h);
      },
      onElement: (e) => elements.push(inherited === undefined ? e : inherited.applyTo(e)),
      onStreamClose: () => undefined,
      onError: (error) => {
        throw error;
      },
    },
    { maxStanzaBytes: 65536, maxDepth: 16 },
  );
  const bytes = Buffer.from(header + body, 'utf8');
  const cut = Buffer.byteLength(header) + splitAt;
  scanner.write(Buffer.from(bytes.subarray(0, cut)));
  scanner.write(Buffer.from(bytes.subarray(cut)));
  return elements.map((e) => ({ ...e, bytes: Buffer.from(e.bytes) }));
}

/**
 * What a namespace-checking client (libstrophe, slixmpp, Converse.js) does with what the proxy
 * writes: the proxy's own stream header, then the element, parsed by a strict namespace-aware
 * parser. Throws on an unbound prefix; returns each element's resolved namespace, in document order.
 */
function strictlyParsed(elementXml: string): string[] {
  const parser = sax.parser(true, { xmlns: true });
  const seen: string[] = [];
  parser.onerror = (err) => {
    throw err;
  };
  parser.onopentag = (tag) => {
    const t = tag as sax.QualifiedTag;
    if (t.prefix !== '' && t.uri === '') throw new Error(`unbound prefix ${t.prefix} on <${t.name}>`);
    seen.push(`${t.local}@${t.uri}`);
  };
  parser.write(renderStreamHeader({ from: 'localhost', id: 'p', version: '1.0' }) + elementXml);
  return seen.slice(1);
}

describe('InheritedNamespaces', () => {
  it('is absent for a header that declares only the default namespace and stream (Prosody, ejabberd)', () => {
    const attrs = { xmlns: 'jabber:client', 'xmlns:stream': 'http://etherx.jabber.org/streams', version: '1.0' };
    expect(InheritedNamespaces.of({ bytes: Buffer.alloc(0), name: 'stream:stream', attrs })).toBeUndefined();
  });

  it("ignores a header's xmlns:p='' (it binds nothing)", () => {
    const attrs = { xmlns: 'jabber:client', 'xmlns:stream': 'http://etherx.jabber.org/streams', 'xmlns:p': '' };
    expect(InheritedNamespaces.of({ bytes: Buffer.alloc(0), name: 'stream:stream', attrs })).toBeUndefined();
  });

  it('makes jabberd2 <ack:ack/> in features bound for a client that never saw jabberd2 header, at every split', () => {
    for (let splitAt = 0; splitAt <= JABBERD2_POST_AUTH_FEATURES.length; splitAt++) {
      const [features] = frame(JABBERD2_HEADER, JABBERD2_POST_AUTH_FEATURES, splitAt);
      const xml = features!.bytes.toString('utf8');
      expect(xml).toBe(
        JABBERD2_POST_AUTH_FEATURES.replace(
          '<stream:features',
          "<stream:features xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'",
        ),
      );
      expect(strictlyParsed(xml)).toContain('ack@http://www.xmpp.org/extensions/xep-0198.html#ns');
    }
  });

  it('leaves elements that do not use an inherited prefix as they are (same bytes)', () => {
    const message = "<message to='a@localhost' id='m1'><body>hi</body></message>";
    const [element] = frame(JABBERD2_HEADER, message, 3);
    expect(element!.bytes.toString('utf8')).toBe(message);
  });

  it('does not declare a prefix twice when the element declares it itself', () => {
    const own = "<ack:r xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'/>";
    const [element] = frame(JABBERD2_HEADER, own, 0);
    expect(element!.bytes.toString('utf8')).toBe(own);
  });

  it('binds a prefix used only deep inside a stanza (and in an attribute name)', () => {
    const stanza = "<message id='m2'><x><ack:deep ack:attr='1'>t</ack:deep></x></message>";
    const [element] = frame(JABBERD2_HEADER, stanza, 10);
    expect(strictlyParsed(element!.bytes.toString('utf8'))).toEqual([
      'message@jabber:client',
      'x@jabber:client',
      'deep@http://www.xmpp.org/extensions/xep-0198.html#ns',
    ]);
  });
});

describe('declareOnStartTag', () => {
  const ack = declaration('ack', 'urn:example:ack');
  it.each([
    ['self-closing', '<ack:a/>', "<ack:a xmlns:ack='urn:example:ack'/>"],
    ['attributes with > in a value', "<x a='>' b=\"'\">t</x>", "<x xmlns:ack='urn:example:ack' a='>' b=\"'\">t</x>"],
    ['already declared', "<x xmlns:ack='urn:other'/>", "<x xmlns:ack='urn:other'/>"],
    ['default declared, prefix not', "<x xmlns='jabber:client'/>", "<x xmlns:ack='urn:example:ack' xmlns='jabber:client'/>"],
    ['not a start tag', 'text', 'text'],
  ])('%s', (_label, input, expected) => {
    expect(declareOnStartTag(Buffer.from(input), [ack]).toString('utf8')).toBe(expected);
  });

  it('escapes the namespace name', () => {
    const odd = declaration('o', "urn:x:'&<");
    expect(declareOnStartTag(Buffer.from('<o:y/>'), [odd]).toString('utf8')).toBe("<o:y xmlns:o='urn:x:&apos;&amp;&lt;'/>");
  });
});

describe('features rewriting of jabberd2 post-auth features', () => {
  it('removes <ack:ack/> (resolved through the header) and keeps the rest bound', () => {
    const [features] = frame(JABBERD2_HEADER, JABBERD2_POST_AUTH_FEATURES, 0);
    const offered = parseElement(features!.bytes);
    const rewritten = rewriteFeatures(offered, new SessionHooks(BUILTIN_HOOKS).advertise('post-auth', offered)).features.toString();
    const parsed = strictlyParsed(rewritten);
    expect(parsed).not.toContain('ack@http://www.xmpp.org/extensions/xep-0198.html#ns');
    expect(parsed).toEqual(expect.arrayContaining(['bind@urn:ietf:params:xml:ns:xmpp-bind', 'sm@urn:xmpp:sm:3']));
  });
});
