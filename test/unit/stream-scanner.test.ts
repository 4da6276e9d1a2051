import { describe, it, expect } from 'vitest';
import { ErrorCode, StreamError } from '../../src/errors.js';
import { StreamScanner, scanFragment, type ScannedElement, type ScannerLimits } from '../../src/xml/stream-scanner.js';
import { seededRandom } from '../support/seeded-random.js';

// ---------------------------------------------------------------------------------------------
// Toolkit: feed input in every chunking, record events, compare.

type Event =
  | { type: 'open'; bytes: string; name: string; attrs: Record<string, string> }
  | { type: 'element'; bytes: string; name: string; localName: string; ns: string | undefined }
  | { type: 'close' }
  | { type: 'error'; condition: string; code: string; message: string; appCondition?: { name: string; xmlns: string } };

interface FeedOptions {
  limits?: Partial<ScannerLimits>;
  /** Call restart() from onElement when this returns true (STARTTLS <proceed/>, SASL <success/>). */
  restartOn?: (element: ScannedElement) => boolean;
}

const DEFAULT_LIMITS: ScannerLimits = { maxStanzaBytes: 256 * 1024, maxDepth: 16 };

function feed(chunks: readonly Buffer[], options: FeedOptions = {}): { events: Event[]; midElement: boolean } {
  const events: Event[] = [];
  let errors = 0;
  const scanner: StreamScanner = new StreamScanner(
    {
      onStreamOpen(header) {
        events.push({ type: 'open', bytes: header.bytes.toString('utf8'), name: header.name, attrs: { ...header.attrs } });
      },
      onElement(element) {
        events.push({
          type: 'element',
          bytes: element.bytes.toString('utf8'),
          name: element.name,
          localName: element.localName,
          ns: element.ns,
        });
        if (options.restartOn?.(element)) scanner.restart();
      },
      onStreamClose() {
        events.push({ type: 'close' });
      },
      onError(error) {
        errors++;
        expect(error).toBeInstanceOf(StreamError);
        const event: Event = { type: 'error', condition: error.condition, code: error.code, message: error.message };
        if (error.appCondition !== undefined) event.appCondition = { name: error.appCondition.name, xmlns: error.appCondition.xmlns };
        events.push(event);
      },
    },
    { ...DEFAULT_LIMITS, ...options.limits },
  );
  for (const chunk of chunks) scanner.write(chunk);
  expect(errors).toBeLessThanOrEqual(1);
  return { events, midElement: scanner.midElement };
}

/** Every chunking the suite demands: whole, split in two at every offset, one byte at a time. */
function* chunkings(input: Buffer): Generator<{ label: string; chunks: Buffer[] }> {
  yield { label: 'one chunk', chunks: [input] };
  for (let k = 1; k < input.length; k++) yield { label: `split at ${k}`, chunks: [input.subarray(0, k), input.subarray(k)] };
  yield { label: 'byte by byte', chunks: Array.from({ length: input.length }, (_, k) => input.subarray(k, k + 1)) };
}

/**
 * Feeds `input` in every chunking and asserts each gives exactly the same events (and the same
 * midElement at the end) as the single chunk; returns those events.
 */
function feedEveryWay(input: Buffer | string, options: FeedOptions = {}): Event[] {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const reference = feed([bytes], options);
  for (const { label, chunks } of chunkings(bytes)) {
    // Copy each chunk and scribble over it after write(): the scanner may not keep references to
    // input chunks across write() calls.
    const result = feedScribbled(chunks, options);
    if (JSON.stringify(result) !== JSON.stringify(reference)) {
      expect({ label, ...result }).toEqual({ label, ...reference });
    }
  }
  return reference.events;
}

function feedScribbled(chunks: readonly Buffer[], options: FeedOptions): { events: Event[]; midElement: boolean } {
  const copies = chunks.map((c) => Buffer.from(c));
  const events: Event[] = [];
  // Same handlers as feed(), but the chunk is overwritten right after each write.
  const result = { events, midElement: false };
  const scanner: StreamScanner = new StreamScanner(
    {
      onStreamOpen(header) {
        events.push({ type: 'open', bytes: header.bytes.toString('utf8'), name: header.name, attrs: { ...header.attrs } });
      },
      onElement(element) {
        events.push({
          type: 'element',
          bytes: element.bytes.toString('utf8'),
          name: element.name,
          localName: element.localName,
          ns: element.ns,
        });
        if (options.restartOn?.(element)) scanner.restart();
      },
      onStreamClose() {
        events.push({ type: 'close' });
      },
      onError(error) {
        const event: Event = { type: 'error', condition: error.condition, code: error.code, message: error.message };
        if (error.appCondition !== undefined) event.appCondition = { name: error.appCondition.name, xmlns: error.appCondition.xmlns };
        events.push(event);
      },
    },
    { ...DEFAULT_LIMITS, ...options.limits },
  );
  for (const chunk of copies) {
    scanner.write(chunk);
    chunk.fill(0x78);
  }
  result.midElement = scanner.midElement;
  return result;
}

const HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";
const HEADER_ATTRS = {
  xmlns: 'jabber:client',
  'xmlns:stream': 'http://etherx.jabber.org/streams',
  to: 'example.com',
  version: '1.0',
};
const STREAMS_NS = 'http://etherx.jabber.org/streams';
const openEvent = (bytes = HEADER, attrs: Record<string, string> = HEADER_ATTRS, name = 'stream:stream'): Event => ({
  type: 'open',
  bytes,
  name,
  attrs,
});
const el = (bytes: string, name: string, ns: string | undefined, localName = name.slice(name.indexOf(':') + 1)): Event => ({
  type: 'element',
  bytes,
  name,
  localName,
  ns,
});
const CLOSE: Event = { type: 'close' };

function errorOf(events: Event[]): Extract<Event, { type: 'error' }> {
  const last = events[events.length - 1];
  expect(last?.type).toBe('error');
  return last as Extract<Event, { type: 'error' }>;
}

// ---------------------------------------------------------------------------------------------
// Valid streams.

interface ValidCase {
  name: string;
  input: string | Buffer;
  expected: Event[];
  options?: FeedOptions;
  midElement?: boolean;
}

const FEATURES = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
const MESSAGE =
  "<message to='juliet@example.com/balcony' from=\"romeo@example.net/orchard\" type='chat' id='m&amp;1'>" +
  '<body>Wherefore &lt;art&gt; thou &quot;Romeo&quot; &apos; &#65;&#x42; ]] ] &gt;</body>' +
  "<active xmlns='http://jabber.org/protocol/chatstates'/></message>";
const PRESENCE =
  "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>";
const IQ_ROSTER =
  "<iq type='result' id='r1'><query xmlns='jabber:iq:roster' ver='ver7'>" +
  "<item jid='nurse@example.com' name='Nurse' subscription='both'><group>Friends</group></item>" +
  "<item jid='benvolio@example.net' subscription='to'/></query></iq>";

const validCases: ValidCase[] = [
  {
    name: 'header without XML declaration, features, stream close',
    input: `${HEADER}${FEATURES}</stream:stream>`,
    expected: [openEvent(), el(FEATURES, 'stream:features', STREAMS_NS), CLOSE],
  },
  {
    name: 'header after an XML declaration (single quotes) and a newline',
    input: `<?xml version='1.0'?>\n${HEADER}`,
    expected: [openEvent()],
  },
  {
    name: 'XML declaration with encoding and standalone, double quotes',
    input: `<?xml version="1.0" encoding="utf-8" standalone='yes' ?>${HEADER}</stream:stream>  \n`,
    expected: [openEvent(), CLOSE],
  },
  {
    name: 'stanzas with nested children, both quote kinds, entities, whitespace keepalives',
    input: `${HEADER} \n${MESSAGE}\n\n ${PRESENCE}\t\r\n${IQ_ROSTER} `,
    expected: [
      openEvent(),
      el(MESSAGE, 'message', 'jabber:client'),
      el(PRESENCE, 'presence', 'jabber:client'),
      el(IQ_ROSTER, 'iq', 'jabber:client'),
    ],
  },
  {
    name: 'CDATA sections, with brackets and markup inside',
    input: `${HEADER}<message><body><![CDATA[<b>bold</b> & ]] ]> ]]]]><![CDATA[]]></body></message>`,
    expected: [
      openEvent(),
      el('<message><body><![CDATA[<b>bold</b> & ]] ]> ]]]]><![CDATA[]]></body></message>', 'message', 'jabber:client'),
    ],
  },
  {
    name: 'self-closing top-level elements, attribute spacing variants',
    input: `${HEADER}<r xmlns='urn:xmpp:sm:3'/><presence/><presence type = "unavailable" /><iq id='1'\ttype='get'\n/>`,
    expected: [
      openEvent(),
      el("<r xmlns='urn:xmpp:sm:3'/>", 'r', 'urn:xmpp:sm:3'),
      el('<presence/>', 'presence', 'jabber:client'),
      el('<presence type = "unavailable" />', 'presence', 'jabber:client'),
      el("<iq id='1'\ttype='get'\n/>", 'iq', 'jabber:client'),
    ],
  },
  {
    name: 'namespaces: header default, header prefix, own xmlns, own prefix, own prefix shadowing the header',
    input:
      `${HEADER}<message/><stream:features/><enable xmlns='urn:xmpp:sm:3' resume='true'/>` +
      `<sm:a xmlns:sm='urn:xmpp:sm:3' h='12'/><stream:error xmlns:stream='urn:example:other'/>` +
      `<x xml:lang='en'/><message xmlns=''/>`,
    expected: [
      openEvent(),
      el('<message/>', 'message', 'jabber:client'),
      el('<stream:features/>', 'stream:features', STREAMS_NS),
      el("<enable xmlns='urn:xmpp:sm:3' resume='true'/>", 'enable', 'urn:xmpp:sm:3'),
      el("<sm:a xmlns:sm='urn:xmpp:sm:3' h='12'/>", 'sm:a', 'urn:xmpp:sm:3'),
      el("<stream:error xmlns:stream='urn:example:other'/>", 'stream:error', 'urn:example:other'),
      el("<x xml:lang='en'/>", 'x', 'jabber:client'),
      el("<message xmlns=''/>", 'message', undefined),
    ],
  },
  {
    name: 'header with another prefix, without a default namespace',
    input: "<s:stream xmlns:s='http://etherx.jabber.org/streams' version='1.0'><s:features/><message/></s:stream>",
    expected: [
      openEvent(
        "<s:stream xmlns:s='http://etherx.jabber.org/streams' version='1.0'>",
        { 'xmlns:s': STREAMS_NS, version: '1.0' },
        's:stream',
      ),
      el('<s:features/>', 's:features', STREAMS_NS),
      el('<message/>', 'message', undefined),
      CLOSE,
    ],
  },
  {
    name: 'header in the streams namespace as default namespace',
    input: "<stream xmlns='http://etherx.jabber.org/streams'><features/></stream>",
    expected: [
      openEvent("<stream xmlns='http://etherx.jabber.org/streams'>", { xmlns: STREAMS_NS }, 'stream'),
      el('<features/>', 'features', STREAMS_NS),
      CLOSE,
    ],
  },
  {
    name: 'header attributes: references decoded, whitespace normalised, xml:lang kept by qualified name',
    input:
      "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns=\"jabber:client\" from='a&amp;b&#x41;&#66;' " +
      "id='x&lt;y&gt;&quot;&apos;' xml:lang='en' note='one\ttwo\r\nthree'>",
    expected: [
      openEvent(
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns=\"jabber:client\" from='a&amp;b&#x41;&#66;' " +
          "id='x&lt;y&gt;&quot;&apos;' xml:lang='en' note='one\ttwo\r\nthree'>",
        {
          'xmlns:stream': STREAMS_NS,
          xmlns: 'jabber:client',
          from: 'a&bAB',
          id: 'x<y>"\'',
          'xml:lang': 'en',
          note: 'one two three',
        },
      ),
    ],
  },
  {
    name: 'multi-byte UTF-8 (2, 3 and 4 bytes) in text, attribute values and names',
    input: `${HEADER}<message to='é€😀'><body>café 5€ 😀 ñ</body><bödy/></message><ö/>`,
    expected: [
      openEvent(),
      el("<message to='é€😀'><body>café 5€ 😀 ñ</body><bödy/></message>", 'message', 'jabber:client'),
      el('<ö/>', 'ö', 'jabber:client'),
    ],
  },
  {
    name: 'the characters next to U+FFFE and U+FFFF (EF BF BD, EF BF AF, EF BE BF), however cut',
    input: `${HEADER}<message><body>\uFFFD\uFFEF\uFFBF\uF8FF</body></message>`,
    expected: [openEvent(), el('<message><body>\uFFFD\uFFEF\uFFBF\uF8FF</body></message>', 'message', 'jabber:client')],
  },
  {
    name: 'character references to the edges of the XML Char ranges',
    input: `${HEADER}<m a='&#9;&#xA;&#13;&#x20;'>&#xD7FF;&#xE000;&#xFFFD;&#x10000;&#x10FFFF;&#x1F600;&#0000065;</m>`,
    expected: [
      openEvent(),
      el("<m a='&#9;&#xA;&#13;&#x20;'>&#xD7FF;&#xE000;&#xFFFD;&#x10000;&#x10FFFF;&#x1F600;&#0000065;</m>", 'm', 'jabber:client'),
    ],
  },
  {
    name: 'end tags with whitespace before >, text with > and single brackets',
    input: `${HEADER}<message><body>a > b ] c ]] d</body ></message\n>`,
    expected: [openEvent(), el('<message><body>a > b ] c ]] d</body ></message\n>', 'message', 'jabber:client')],
  },
  {
    name: 'restart() inside onElement with the new header in the same chunk (STARTTLS, then SASL)',
    input:
      `<?xml version='1.0'?>${HEADER}<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>` +
      `<?xml version='1.0'?>${HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>` +
      `${HEADER}<iq type='result' id='b'/>`,
    options: { restartOn: (e) => e.localName === 'proceed' || e.localName === 'success' },
    expected: [
      openEvent(),
      el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", 'proceed', 'urn:ietf:params:xml:ns:xmpp-tls'),
      openEvent(),
      el("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", 'success', 'urn:ietf:params:xml:ns:xmpp-sasl'),
      openEvent(),
      el("<iq type='result' id='b'/>", 'iq', 'jabber:client'),
    ],
  },
  {
    name: 'restart() forgets the old header namespaces',
    input: `${HEADER}<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><s:stream xmlns:s='${STREAMS_NS}'><message/>`,
    options: { restartOn: (e) => e.localName === 'proceed' },
    expected: [
      openEvent(),
      el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", 'proceed', 'urn:ietf:params:xml:ns:xmpp-tls'),
      openEvent(`<s:stream xmlns:s='${STREAMS_NS}'>`, { 'xmlns:s': STREAMS_NS }, 's:stream'),
      el('<message/>', 'message', undefined),
    ],
  },
  {
    name: 'nesting exactly maxDepth deep',
    input: `${HEADER}<a><b><c/></b></a>`,
    options: { limits: { maxDepth: 3 } },
    expected: [openEvent(), el('<a><b><c/></b></a>', 'a', 'jabber:client')],
  },
  {
    name: 'many attributes (duplicate check past its linear part)',
    input: `${HEADER}<x ${Array.from({ length: 40 }, (_, k) => `a${k}='${k}'`).join(' ')}/>`,
    expected: [openEvent(), el(`<x ${Array.from({ length: 40 }, (_, k) => `a${k}='${k}'`).join(' ')}/>`, 'x', 'jabber:client')],
  },
  {
    name: 'incomplete element at the end: held, midElement true',
    input: `${HEADER}<message><body>hel`,
    expected: [openEvent()],
    midElement: true,
  },
  {
    name: 'Namespaces in XML below the top level: prefixes declared on an ancestor, redeclared, and out of scope again',
    input:
      `${HEADER}<message xmlns:x='urn:x'><x:a><x:b xmlns:x='urn:y' x:c='1'/><y:d xmlns:y='urn:x' x:e='1' y:f='2'/></x:a></message>` +
      "<iq><q xmlns:x='urn:z'/><r xml:lang='en' xmlns:xml='http://www.w3.org/XML/1998/namespace'/></iq>",
    expected: [
      openEvent(),
      el(
        "<message xmlns:x='urn:x'><x:a><x:b xmlns:x='urn:y' x:c='1'/><y:d xmlns:y='urn:x' x:e='1' y:f='2'/></x:a></message>",
        'message',
        'jabber:client',
      ),
      el("<iq><q xmlns:x='urn:z'/><r xml:lang='en' xmlns:xml='http://www.w3.org/XML/1998/namespace'/></iq>", 'iq', 'jabber:client'),
    ],
  },
  {
    name: 'the same local attribute name in two namespaces, and names with characters above ASCII that XML allows',
    input: `${HEADER}<m xmlns:p='urn:p' xmlns:q='urn:q' p:a='1' q:a='2' a='3'><é·̀‿ x:ü='1' xmlns:x='urn:x'/><𐀀/></m>`,
    expected: [
      openEvent(),
      el(`<m xmlns:p='urn:p' xmlns:q='urn:q' p:a='1' q:a='2' a='3'><é·̀‿ x:ü='1' xmlns:x='urn:x'/><𐀀/></m>`, 'm', 'jabber:client'),
    ],
  },
];

describe('StreamScanner: valid streams, in every chunking', () => {
  for (const c of validCases) {
    it(c.name, () => {
      const input = typeof c.input === 'string' ? Buffer.from(c.input, 'utf8') : c.input;
      const events = feedEveryWay(input, c.options);
      expect(events).toEqual(c.expected);
      expect(feed([input], c.options).midElement).toBe(c.midElement ?? false);
    });
  }
});

/** Feeds with a large limit for the header and `limit` from the first element on (setLimits in onStreamOpen). */
function feedEveryWayWithLimitAfterHeader(input: Buffer, limit: number): Event[] {
  const run = (chunks: Buffer[]): Event[] => {
    const events: Event[] = [];
    const scanner: StreamScanner = new StreamScanner(
      {
        onStreamOpen(header) {
          events.push({ type: 'open', bytes: header.bytes.toString('utf8'), name: header.name, attrs: { ...header.attrs } });
          scanner.setLimits({ maxStanzaBytes: limit });
        },
        onElement(element) {
          events.push({
            type: 'element',
            bytes: element.bytes.toString('utf8'),
            name: element.name,
            localName: element.localName,
            ns: element.ns,
          });
        },
        onStreamClose() {
          events.push(CLOSE);
        },
        onError(error) {
          events.push({ type: 'error', condition: error.condition, code: error.code, message: error.message });
        },
      },
      DEFAULT_LIMITS,
    );
    for (const chunk of chunks) scanner.write(chunk);
    return events;
  };
  const reference = run([input]);
  for (const { chunks } of chunkings(input)) expect(run(chunks)).toEqual(reference);
  return reference;
}

// ---------------------------------------------------------------------------------------------
// Errors.

interface ErrorCase {
  name: string;
  input: string | Buffer;
  condition: string;
  code: string;
  /** Substring (or pattern) the message must contain. */
  message?: string | RegExp;
  /** Events before the error. */
  before?: Event[];
  options?: FeedOptions;
}

const NWF = { condition: 'not-well-formed', code: ErrorCode.XML_NOT_WELL_FORMED } as const;
const RESTRICTED = { condition: 'restricted-xml', code: ErrorCode.XML_RESTRICTED } as const;
const ENCODING = { condition: 'unsupported-encoding', code: ErrorCode.XML_ENCODING } as const;
const PREFIX = { condition: 'bad-namespace-prefix', code: ErrorCode.XML_NAMESPACE_PREFIX } as const;
const INVALID_NS = { condition: 'invalid-namespace', code: ErrorCode.XML_INVALID_NAMESPACE } as const;

const H = Buffer.from(HEADER, 'utf8');
const bytes = (...parts: (string | number[])[]): Buffer =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));

const errorCases: ErrorCase[] = [
  // RFC 6120 §11.3 well-formedness
  {
    name: 'end tag does not match',
    input: `${HEADER}<foo><x/></bar>`,
    ...NWF,
    message: 'end tag </bar> does not match <foo>',
    before: [openEvent()],
  },
  {
    name: 'end tag a prefix of the start tag',
    input: `${HEADER}<message><body></bod>`,
    ...NWF,
    message: 'end tag </bod> does not match <body>',
  },
  {
    name: 'end tag longer than the start tag',
    input: `${HEADER}<message></messages>`,
    ...NWF,
    message: 'end tag </messages> does not match <message>',
  },
  {
    name: 'stream close while an element is open',
    input: `${HEADER}<message></stream:stream>`,
    ...NWF,
    message: 'end tag </stream:stream> does not match <message>',
  },
  { name: 'whitespace before an end tag name', input: `${HEADER}<message></ message>`, ...NWF, message: "unexpected 0x20 after '</'" },
  { name: 'empty end tag', input: `${HEADER}<message></>`, ...NWF, message: "unexpected '>' after '</'" },
  { name: 'end tag with no start tag before the header', input: '</stream:stream>', ...NWF },
  {
    name: 'unquoted attribute value',
    input: `${HEADER}<message to=juliet/>`,
    ...NWF,
    message: "unexpected 'j' where a quoted attribute value must start",
  },
  { name: 'attribute without value', input: `${HEADER}<message to/>`, ...NWF },
  { name: "'<' inside an attribute value", input: `${HEADER}<message to='a<b'/>`, ...NWF, message: "'<' in an attribute value" },
  {
    name: 'no whitespace between attributes',
    input: `${HEADER}<message to='a'id='b'/>`,
    ...NWF,
    message: 'missing whitespace between attributes',
  },
  {
    name: 'duplicate attribute',
    input: `${HEADER}<message to='a' id='1' to='b'/>`,
    ...NWF,
    message: "duplicate attribute 'to' on <message>",
  },
  {
    name: 'duplicate attribute past the linear part',
    input: `${HEADER}<x ${Array.from({ length: 40 }, (_, k) => `a${k}='${k}'`).join(' ')} a35='again'/>`,
    ...NWF,
    message: "duplicate attribute 'a35' on <x>",
  },
  {
    name: 'duplicate attribute on the header',
    input: "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='a' to='a'>",
    ...NWF,
  },
  {
    name: 'bare & in text',
    input: `${HEADER}<message><body>fish & chips</body></message>`,
    ...NWF,
    message: "'&' not starting a reference",
  },
  { name: 'bare & in an attribute', input: `${HEADER}<message id='a&&b'/>`, ...NWF },
  { name: 'reference without ;', input: `${HEADER}<message><body>&amp chips</body></message>`, ...NWF, message: "not ended by ';'" },
  { name: 'empty character reference', input: `${HEADER}<message><body>&#;</body></message>`, ...NWF },
  { name: 'empty hex character reference', input: `${HEADER}<message><body>&#x;</body></message>`, ...NWF },
  { name: ']]> in text', input: `${HEADER}<message><body>a ]]]> b</body></message>`, ...NWF, message: "']]>' in character data" },
  {
    name: 'control character 0x01 in text',
    input: bytes(HEADER, '<message><body>a', [0x01], '</body></message>'),
    ...NWF,
    message: 'control character 0x01',
  },
  { name: 'control character 0x00 in a tag', input: bytes(HEADER, '<message', [0x00], '/>'), ...NWF, message: 'control character 0x00' },
  {
    name: 'control character 0x0B in an attribute value',
    input: bytes(HEADER, "<message id='", [0x0b], "'/>"),
    ...NWF,
    message: 'control character 0x0B',
  },
  {
    name: 'control character 0x0C in CDATA',
    input: bytes(HEADER, '<m><![CDATA[', [0x0c], ']]></m>'),
    ...NWF,
    message: 'control character 0x0C',
  },
  { name: 'control character 0x1F between stanzas', input: bytes(HEADER, [0x1f]), ...NWF, message: 'control character 0x1F' },
  {
    name: 'U+FFFE in text (valid UTF-8, not an XML character)',
    input: bytes(HEADER, '<message><body>a', [0xef, 0xbf, 0xbe], '</body></message>'),
    ...NWF,
    message: 'U+FFFE or U+FFFF',
  },
  {
    name: 'U+FFFF in an attribute value',
    input: bytes(HEADER, "<message id='", [0xef, 0xbf, 0xbf], "'/>"),
    ...NWF,
    message: 'U+FFFE or U+FFFF',
  },
  { name: 'U+FFFF between stanzas', input: bytes(HEADER, [0xef, 0xbf, 0xbf]), ...NWF, message: 'U+FFFE or U+FFFF' },
  { name: 'control character in the XML declaration', input: bytes("<?xml version='1.0'", [0x08], '?>'), ...NWF },
  {
    name: 'text directly inside the stream',
    input: `${HEADER}<presence/>hello<presence/>`,
    ...NWF,
    message: 'text directly inside the stream',
    before: [openEvent(), el('<presence/>', 'presence', 'jabber:client')],
  },
  { name: 'reference directly inside the stream', input: `${HEADER}&amp;`, ...NWF },
  { name: 'CDATA directly inside the stream', input: `${HEADER}<![CDATA[ ]]>`, ...NWF, message: 'CDATA section outside of an element' },
  { name: 'text before the header', input: `hello${HEADER}`, ...NWF },
  {
    name: 'data after the stream close',
    input: `${HEADER}</stream:stream> <presence/>`,
    ...NWF,
    message: 'data after the stream was closed',
    before: [openEvent(), CLOSE],
  },
  { name: 'element name starting with a digit', input: `${HEADER}<1message/>`, ...NWF },
  { name: 'space after <', input: `${HEADER}< message/>`, ...NWF },
  { name: 'self-closing stream header', input: "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", ...NWF },
  { name: 'malformed XML declaration', input: `<?xml encoding='UTF-8'?>${HEADER}`, ...NWF, message: 'malformed XML declaration' },
  { name: "'<' inside the XML declaration", input: `<?xml version='1.0'<stream:stream>`, ...NWF },
  // RFC 6120 §11.1 restricted XML
  {
    name: 'comment inside an element',
    input: `${HEADER}<message><!-- hi --></message>`,
    ...RESTRICTED,
    message: `comment at byte offset ${H.length + 9} (restricted XML, RFC 6120 §11.1)`,
  },
  { name: 'comment between stanzas', input: `${HEADER}<!---->`, ...RESTRICTED, message: `comment at byte offset ${H.length}` },
  { name: 'comment before the header', input: `<!-- hi -->${HEADER}`, ...RESTRICTED, message: 'comment at byte offset 0' },
  {
    name: 'DOCTYPE',
    input: `<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>${HEADER}`,
    ...RESTRICTED,
    message: 'DOCTYPE at byte offset 21',
  },
  { name: 'other <! markup', input: `${HEADER}<message><!ENTITY x 'y'></message>`, ...RESTRICTED },
  {
    name: "'<![' other than CDATA",
    input: `${HEADER}<message><![INCLUDE[x]]></message>`,
    ...RESTRICTED,
    message: 'other than a CDATA section',
  },
  {
    name: 'processing instruction inside an element',
    input: `${HEADER}<message><?php echo 1 ?></message>`,
    ...RESTRICTED,
    message: 'processing instruction',
  },
  { name: 'processing instruction between stanzas', input: `${HEADER}<?foo?>`, ...RESTRICTED },
  { name: 'XML declaration after the header', input: `${HEADER}<?xml version='1.0'?>`, ...RESTRICTED },
  { name: 'second XML declaration', input: `<?xml version='1.0'?><?xml version='1.0'?>${HEADER}`, ...RESTRICTED },
  { name: 'XML declaration after whitespace', input: ` <?xml version='1.0'?>${HEADER}`, ...RESTRICTED },
  { name: 'processing instruction at the start of the stream', input: `<?xml-stylesheet href='a'?>${HEADER}`, ...RESTRICTED },
  {
    name: 'undeclared entity in text',
    input: `${HEADER}<message><body>&nbsp;</body></message>`,
    ...RESTRICTED,
    message: 'undeclared entity reference &nbsp;',
  },
  { name: 'undeclared entity in an attribute', input: `${HEADER}<message id='&foo;'/>`, ...RESTRICTED, message: '&foo;' },
  {
    name: 'undeclared entity in the header',
    input: "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='&x;'>",
    ...RESTRICTED,
  },
  { name: 'case matters for predefined entities', input: `${HEADER}<m>&AMP;</m>`, ...RESTRICTED },
  { name: 'character reference to U+0000', input: `${HEADER}<m>&#0;</m>`, ...RESTRICTED, message: 'U+0000' },
  { name: 'character reference to a control character', input: `${HEADER}<m a='&#x1B;'/>`, ...RESTRICTED },
  { name: 'character reference to a surrogate', input: `${HEADER}<m>&#xD800;</m>`, ...RESTRICTED },
  { name: 'character reference to U+FFFE', input: `${HEADER}<m>&#65534;</m>`, ...RESTRICTED },
  { name: 'character reference beyond U+10FFFF', input: `${HEADER}<m>&#x110000;</m>`, ...RESTRICTED, message: 'beyond U+10FFFF' },
  { name: 'huge character reference', input: `${HEADER}<m>&#99999999999999999999999;</m>`, ...RESTRICTED },
  // RFC 6120 §11.6 encoding
  {
    name: 'declared encoding other than UTF-8',
    input: `<?xml version='1.0' encoding='ISO-8859-1'?>${HEADER}`,
    ...ENCODING,
    message: "'ISO-8859-1'",
  },
  {
    name: 'overlong C0 80',
    input: bytes(HEADER, '<m>', [0xc0, 0x80], '</m>'),
    ...ENCODING,
    message: `invalid UTF-8 byte 0xC0 at byte offset ${H.length + 3}`,
  },
  {
    name: 'overlong E0 80 80',
    input: bytes(HEADER, '<m>', [0xe0, 0x80, 0x80], '</m>'),
    ...ENCODING,
    message: `0x80 at byte offset ${H.length + 4}`,
  },
  { name: 'lone continuation byte', input: bytes(HEADER, '<m>a', [0x80], '</m>'), ...ENCODING },
  { name: 'surrogate ED A0 80', input: bytes(HEADER, '<m>', [0xed, 0xa0, 0x80], '</m>'), ...ENCODING, message: '0xA0' },
  { name: 'F5 lead byte', input: bytes(HEADER, '<m>', [0xf5, 0x80, 0x80, 0x80], '</m>'), ...ENCODING, message: '0xF5' },
  { name: 'beyond U+10FFFF: F4 90 80 80', input: bytes(HEADER, '<m>', [0xf4, 0x90, 0x80, 0x80], '</m>'), ...ENCODING },
  { name: 'FF byte', input: bytes(HEADER, [0xff]), ...ENCODING },
  { name: 'truncated 3-byte sequence followed by ASCII', input: bytes(HEADER, '<m>', [0xe2, 0x82], 'A</m>'), ...ENCODING, message: "'A'" },
  { name: 'truncated 4-byte sequence followed by <', input: bytes(HEADER, "<m a='", [0xf0, 0x9f, 0x98], "'/>"), ...ENCODING },
  { name: 'invalid UTF-8 in an element name', input: bytes(HEADER, '<m', [0xc3, 0x28], '/>'), ...ENCODING },
  { name: 'invalid UTF-8 before the header', input: bytes([0xc0, 0x80], HEADER), ...ENCODING, message: 'byte offset 0' },
  {
    name: 'invalid UTF-8 after complete stanzas',
    input: bytes(HEADER, '<a/><b/><c>', [0xc3, 0xc3]),
    ...ENCODING,
    before: [openEvent(), el('<a/>', 'a', 'jabber:client'), el('<b/>', 'b', 'jabber:client')],
  },
  // RFC 6120 §4.9.3.10 / §11.2 namespaces
  {
    name: 'stream header in the wrong namespace',
    input: "<stream:stream xmlns:stream='jabber:client'>",
    ...INVALID_NS,
    message: 'expected',
  },
  {
    name: 'stream header with the wrong local name',
    input: "<stream:strom xmlns:stream='http://etherx.jabber.org/streams'>",
    ...INVALID_NS,
  },
  { name: 'stream header without any namespace', input: '<stream>', ...INVALID_NS },
  { name: 'stream header with an undeclared prefix', input: "<stream:stream xmlns='jabber:client'>", ...PREFIX },
  { name: 'top-level element with an undeclared prefix', input: `${HEADER}<foo:message/>`, ...PREFIX, message: "undeclared prefix 'foo'" },
  {
    name: 'top-level element whose prefix is declared only on a sibling',
    input: `${HEADER}<sm:a xmlns:sm='urn:xmpp:sm:3'/><sm:r/>`,
    ...PREFIX,
    before: [openEvent(), el("<sm:a xmlns:sm='urn:xmpp:sm:3'/>", 'sm:a', 'urn:xmpp:sm:3')],
  },
  {
    name: 'a prefix below the top level that nothing declares',
    input: `${HEADER}<message><x:a/></message>`,
    ...NWF,
    message: "<x:a> uses the undeclared prefix 'x'",
  },
  {
    name: 'a prefix used after the element that declared it has ended',
    input: `${HEADER}<message><a xmlns:x='urn:x'><x:b/></a><x:c/></message>`,
    ...NWF,
    message: "<x:c> uses the undeclared prefix 'x'",
  },
  {
    name: 'an attribute prefix that nothing declares',
    input: `${HEADER}<message><a x:b='1'/></message>`,
    ...NWF,
    message: "attribute 'x:b' on <a> uses the undeclared prefix 'x'",
  },
  {
    name: "xmlns:a='' (no prefix undeclaring in Namespaces in XML 1.0)",
    input: `${HEADER}<message><a xmlns:a=''/></message>`,
    ...NWF,
    message: "xmlns:a='' undeclares a prefix",
  },
  {
    name: "xmlns:a='' on a top-level element",
    input: `${HEADER}<message xmlns:a=''/>`,
    ...NWF,
    message: 'undeclares a prefix',
  },
  {
    name: 'two attributes with one expanded name',
    input: `${HEADER}<message><a xmlns:p='urn:u' xmlns:q='urn:u' p:x='1' q:x='2'/></message>`,
    ...NWF,
    message: 'two attributes named {urn:u}x',
  },
  {
    name: 'the prefix xml bound to another namespace',
    input: `${HEADER}<message><a xmlns:xml='urn:x'/></message>`,
    ...NWF,
    message: "binds the prefix 'xml'",
  },
  {
    name: "a declaration of the empty prefix (xmlns:='v')",
    input: `${HEADER}<message><a xmlns:='urn:a'/></message>`,
    ...NWF,
    message: 'empty prefix or local part',
  },
  {
    name: 'the prefix xmlns declared',
    input: `${HEADER}<message><a xmlns:xmlns='urn:x'/></message>`,
    ...NWF,
    message: "reserved prefix 'xmlns'",
  },
  {
    name: 'the XML namespace as the default namespace',
    input: `${HEADER}<message><a xmlns='http://www.w3.org/XML/1998/namespace'/></message>`,
    ...NWF,
    message: 'binds the reserved namespace',
  },
  {
    name: 'the xmlns namespace bound to a prefix',
    input: `${HEADER}<message><a xmlns:p='http://www.w3.org/2000/xmlns/'/></message>`,
    ...NWF,
    message: 'binds the reserved namespace',
  },
  {
    name: 'the xmlns namespace as the default, written with a character reference',
    input: `${HEADER}<message xmlns='&#x68;ttp://www.w3.org/2000/xmlns/'/>`,
    ...NWF,
    message: 'binds the reserved namespace',
  },
  {
    name: 'an element name with two colons',
    input: `${HEADER}<message><a:b:c xmlns:a='urn:a'/></message>`,
    ...NWF,
    message: 'more than one colon',
  },
  {
    name: 'an element name that starts with a colon',
    input: `${HEADER}<message><:a/></message>`,
    ...NWF,
    message: 'empty prefix or local part',
  },
  {
    name: 'an attribute name that ends with a colon',
    input: `${HEADER}<message><a b:='1'/></message>`,
    ...NWF,
    message: 'empty prefix or local part',
  },
  {
    name: 'a local part that starts with a digit',
    input: `${HEADER}<message><a xmlns:p='urn:p' p:1='1'/></message>`,
    ...NWF,
    message: 'U+0031',
  },
  { name: 'U+00A0 in an element name', input: `${HEADER}<message><a\u00a0b/></message>`, ...NWF, message: 'U+00A0' },
  { name: 'U+00D7 in an attribute name', input: `${HEADER}<message a\u00d7='1'/>`, ...NWF, message: 'U+00D7' },
  { name: 'U+00B7 (a name character, not a name start character) first', input: `${HEADER}<\u00b7a/>`, ...NWF, message: 'U+00B7' },
  { name: 'U+037E in a name', input: `${HEADER}<message><a\u037e/></message>`, ...NWF, message: 'U+037E' },
  { name: 'U+F0000 (above the name ranges) in a name', input: `${HEADER}<message><a\u{f0000}/></message>`, ...NWF, message: 'U+F0000' },
  {
    name: 'an element with the prefix xmlns',
    input: `${HEADER}<message xmlns:p='urn:p'><xmlns:a/></message>`,
    ...NWF,
    message: "prefix 'xmlns'",
  },
  {
    name: "xmlns:a='' on the stream header",
    input: "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xmlns:a=''>",
    ...NWF,
    message: 'stream header',
  },
  {
    name: 'the error comes after the complete stanzas before it',
    input: `${HEADER}<a/><message><b><c:d/></b></message>`,
    ...NWF,
    before: [openEvent(), el('<a/>', 'a', 'jabber:client')],
  },
];

describe("StreamScanner: 'top-level' name checks, for what a legacy server sends", () => {
  /** Events of `input` scanned in one chunk with `nameChecks`. */
  function scanWith(input: string, nameChecks: 'every-depth' | 'top-level'): string[] {
    const events: string[] = [];
    const scanner = new StreamScanner(
      {
        onStreamOpen: () => events.push('open'),
        onElement: (element) => events.push(element.bytes.toString('utf8')),
        onStreamClose: () => events.push('close'),
        onError: (error) => events.push(`error ${error.condition}`),
      },
      DEFAULT_LIMITS,
      nameChecks,
    );
    scanner.write(Buffer.from(input, 'utf8'));
    return events;
  }

  it.each([
    ['an attribute prefix left unbound by a re-serialisation (ejabberd)', "<message><note xmlns='urn:x' ex:level='2'/></message>"],
    ['a prefix below the top level that nothing declares', '<message><x:a/></message>'],
    ["xmlns:a=''", "<message><a xmlns:a=''/></message>"],
    ['U+00A0 in a name below the top level', '<message><a\u00a0b/></message>'],
  ])('relays %s, which a client stream refuses', (_label, stanza) => {
    expect(scanWith(`${HEADER}${stanza}`, 'top-level')).toEqual(['open', stanza]);
    expect(scanWith(`${HEADER}${stanza}`, 'every-depth')).toEqual(['open', 'error not-well-formed']);
  });

  it('still refuses an unbound prefix on a top-level element, and malformed XML', () => {
    expect(scanWith(`${HEADER}<foo:message/>`, 'top-level')).toEqual(['open', 'error bad-namespace-prefix']);
    expect(scanWith(`${HEADER}<message><a></b></message>`, 'top-level')).toEqual(['open', 'error not-well-formed']);
  });
});

describe('StreamScanner: errors, in every chunking', () => {
  for (const c of errorCases) {
    it(`${c.condition}: ${c.name}`, () => {
      const events = feedEveryWay(c.input, c.options);
      const error = errorOf(events);
      expect(error.condition).toBe(c.condition);
      expect(error.code).toBe(c.code);
      if (typeof c.message === 'string') expect(error.message).toContain(c.message);
      else if (c.message !== undefined) expect(error.message).toMatch(c.message);
      if (c.before !== undefined) expect(events.slice(0, -1)).toEqual(c.before);
    });
  }

  it('ignores input after an error, and reports only once', () => {
    const { events } = feed([Buffer.from(`${HEADER}<a></b>`), Buffer.from('<!-- -->'), Buffer.from(`<c/>`)]);
    expect(events.map((e) => e.type)).toEqual(['open', 'error']);
  });
});

// ---------------------------------------------------------------------------------------------
// Limits.

describe('StreamScanner: limits', () => {
  it('reports stanza-too-big while the element is still incomplete (300 KiB of a huge message, 256 KiB limit)', () => {
    const limit = 256 * 1024;
    const huge = Buffer.from(`<message><body>${'x'.repeat(1024 * 1024)}</body></message>`);
    for (const chunkSize of [300 * 1024, 16 * 1024, 1000]) {
      const events: Event[] = [];
      const scanner = new StreamScanner(
        {
          onStreamOpen() {},
          onElement(e) {
            events.push({ type: 'element', bytes: '', name: e.name, localName: e.localName, ns: e.ns });
          },
          onStreamClose() {},
          onError(error) {
            events.push({
              type: 'error',
              condition: error.condition,
              code: error.code,
              message: error.message,
              appCondition: error.appCondition,
            });
          },
        },
        { maxStanzaBytes: limit, maxDepth: 8 },
      );
      scanner.write(H);
      const first = huge.subarray(0, 300 * 1024);
      for (let k = 0; k < first.length; k += chunkSize) scanner.write(first.subarray(k, k + chunkSize));
      expect(events).toEqual([
        {
          type: 'error',
          condition: 'policy-violation',
          code: ErrorCode.STANZA_TOO_BIG,
          message: 'stanza exceeds the limit of 262144 bytes',
          appCondition: { name: 'stanza-too-big', xmlns: 'urn:xmpp:errors' },
        },
      ]);
    }
  });

  it('counts from the element\'s "<" and reports at the first byte past the limit, in every chunking', () => {
    const ok = `<message><body>${'x'.repeat(68)}</body></message>`; // 100 bytes
    expect(ok.length).toBe(100);
    const input = Buffer.from(`${HEADER}${ok}  <message><body>${'x'.repeat(69)}</body></message><more/>`);
    const events = feedEveryWayWithLimitAfterHeader(input, 100);
    expect(events.slice(0, 2)).toEqual([openEvent(), el(ok, 'message', 'jabber:client')]);
    const error = errorOf(events);
    expect(error.code).toBe(ErrorCode.STANZA_TOO_BIG);
    expect(error.condition).toBe('policy-violation');
    expect(error.message).toBe('stanza exceeds the limit of 100 bytes');
  });

  it('limits the stream header to maxStanzaBytes', () => {
    const events = feedEveryWay(HEADER, { limits: { maxStanzaBytes: 50 } });
    expect(errorOf(events)).toMatchObject({
      code: ErrorCode.STANZA_TOO_BIG,
      message: 'stream header exceeds the limit of 50 bytes',
    });
    expect(events).toHaveLength(1);
  });

  it('limits the XML declaration to maxStanzaBytes', () => {
    const events = feedEveryWay(`<?xml version='1.0'          ?>`, { limits: { maxStanzaBytes: 20 } });
    expect(errorOf(events).message).toBe('XML declaration exceeds the limit of 20 bytes');
  });

  it('grows its name and attribute scratch space beyond the first few hundred bytes and depth 16', () => {
    const names = Array.from({ length: 24 }, (_, i) => `n${i}${'x'.repeat(60)}`); // 1.5 KB of open names
    const attrs = Array.from({ length: 20 }, (_, i) => ` a${i}${'y'.repeat(30)}='v'`).join(''); // 700 bytes of attribute names
    const inner = `${names.map((n) => `<${n}>`).join('')}${names
      .map((n) => `</${n}>`)
      .reverse()
      .join('')}`;
    const stanza = `<message${attrs}>${inner}</message>`;
    expect(feedEveryWay(`${HEADER}${stanza}`, { limits: { maxDepth: 64 } })).toEqual([openEvent(), el(stanza, 'message', 'jabber:client')]);
    const mismatched = `<message${attrs}>${inner.slice(0, -(names[0]!.length + 3))}</n0${'x'.repeat(59)}></message>`;
    expect(errorOf(feedEveryWay(`${HEADER}${mismatched}`, { limits: { maxDepth: 64 } })).message).toBe(
      `end tag </n0${'x'.repeat(59)}> does not match <${names[0]}>`,
    );
  });

  it('does not limit whitespace keepalives between stanzas', () => {
    const events = feedEveryWay(`${HEADER}${' '.repeat(500)}<a/>${'\n'.repeat(500)}`, {});
    expect(events).toEqual([openEvent(), el('<a/>', 'a', 'jabber:client')]);
  });

  it('reports depth over maxDepth', () => {
    const events = feedEveryWay(`${HEADER}<a><b><c><d/></c></b></a>`, { limits: { maxDepth: 3 } });
    expect(errorOf(events)).toMatchObject({
      condition: 'policy-violation',
      code: ErrorCode.XML_TOO_DEEP,
      message: 'element nesting depth 4 exceeds maxDepth 3',
    });
  });

  it('setLimits applies to elements that start after the call', () => {
    const events: string[] = [];
    const scanner = new StreamScanner(
      {
        onStreamOpen() {},
        onElement(e) {
          events.push(`element ${e.bytes.length}`);
        },
        onStreamClose() {},
        onError(error) {
          events.push(`error ${error.code} ${error.message}`);
        },
      },
      { maxStanzaBytes: 1000, maxDepth: 2 },
    );
    scanner.write(H);
    scanner.write(Buffer.from(`<message><body>${'x'.repeat(100)}`));
    scanner.setLimits({ maxStanzaBytes: 50, maxDepth: 1 }); // the element in progress keeps 1000 / 2
    scanner.write(Buffer.from('</body></message>'));
    scanner.write(Buffer.from(`<a/>`)); // 4 bytes, depth 1: fine
    scanner.setLimits({ maxStanzaBytes: 5000, maxDepth: 40 });
    scanner.write(Buffer.from(`<a>${'<b>'.repeat(39)}${'</b>'.repeat(39)}</a>`));
    scanner.setLimits({ maxStanzaBytes: 50 });
    scanner.write(Buffer.from(`<message><body>${'x'.repeat(100)}`));
    expect(events).toEqual([
      'element 132',
      'element 4',
      `element ${7 + 39 * 7}`,
      `error ${ErrorCode.STANZA_TOO_BIG} stanza exceeds the limit of 50 bytes`,
    ]);
  });

  it('rejects limits that are not positive integers', () => {
    const handlers = { onStreamOpen() {}, onElement() {}, onStreamClose() {}, onError() {} };
    expect(() => new StreamScanner(handlers, { maxStanzaBytes: 0, maxDepth: 1 })).toThrow(RangeError);
    expect(() => new StreamScanner(handlers, { maxStanzaBytes: 10, maxDepth: 1.5 })).toThrow(RangeError);
    const scanner = new StreamScanner(handlers, DEFAULT_LIMITS);
    expect(() => scanner.setLimits({ maxDepth: 0 })).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// Buffers and state.

describe('StreamScanner: bytes and state', () => {
  it('hands out a subarray of the chunk when the element lies within it (zero copy)', () => {
    const chunk = Buffer.from(`${HEADER}<message><body>hi</body></message>`);
    let got: Buffer | undefined;
    const scanner = new StreamScanner(
      {
        onStreamOpen() {},
        onElement(e) {
          got = e.bytes;
        },
        onStreamClose() {},
        onError(e) {
          throw e;
        },
      },
      DEFAULT_LIMITS,
    );
    scanner.write(chunk);
    expect(got?.buffer).toBe(chunk.buffer);
    expect(got?.byteOffset).toBe(chunk.byteOffset + H.length);
  });

  it('midElement tracks held bytes across chunks', () => {
    const scanner = new StreamScanner(
      {
        onStreamOpen() {},
        onElement() {},
        onStreamClose() {},
        onError(e) {
          throw e;
        },
      },
      DEFAULT_LIMITS,
    );
    expect(scanner.midElement).toBe(false);
    scanner.write(Buffer.from('<stream:stream xmlns:stream'));
    expect(scanner.midElement).toBe(true);
    scanner.write(Buffer.from(`='${STREAMS_NS}'>  `));
    expect(scanner.midElement).toBe(false);
    scanner.write(Buffer.from('<'));
    expect(scanner.midElement).toBe(true);
    scanner.write(Buffer.from('a/> '));
    expect(scanner.midElement).toBe(false);
  });

  it('a handler that throws stops the scanner and the exception propagates', () => {
    let elements = 0;
    const scanner = new StreamScanner(
      {
        onStreamOpen() {},
        onElement() {
          elements++;
          throw new Error('boom');
        },
        onStreamClose() {},
        onError() {},
      },
      DEFAULT_LIMITS,
    );
    expect(() => scanner.write(Buffer.from(`${HEADER}<a/><b/>`))).toThrow('boom');
    scanner.write(Buffer.from('<c/>'));
    expect(elements).toBe(1);
  });

  it('restart() between writes expects a fresh stream, with an optional XML declaration', () => {
    const events: string[] = [];
    const scanner = new StreamScanner(
      {
        onStreamOpen(h) {
          events.push(`open ${h.name}`);
        },
        onElement(e) {
          events.push(`element ${e.name}`);
        },
        onStreamClose() {
          events.push('close');
        },
        onError(e) {
          events.push(`error ${e.condition}`);
        },
      },
      DEFAULT_LIMITS,
    );
    scanner.write(Buffer.from(`${HEADER}<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`));
    scanner.restart();
    scanner.write(Buffer.from(`<?xml version='1.0'?>${HEADER}<a/></stream:stream>`));
    scanner.restart();
    scanner.write(Buffer.from(`${HEADER}<?xml version='1.0'?>`));
    expect(events).toEqual([
      'open stream:stream',
      'element proceed',
      'open stream:stream',
      'element a',
      'close',
      'open stream:stream',
      'error restricted-xml',
    ]);
  });

  it('multi-byte characters split at every offset, alone and in pairs', () => {
    for (const ch of ['é', '€', '😀']) {
      const input = Buffer.from(`${HEADER}<m a='${ch}${ch}'>${ch}x${ch}${ch}</m>`);
      expect(feedEveryWay(input)).toEqual([openEvent(), el(`<m a='${ch}${ch}'>${ch}x${ch}${ch}</m>`, 'm', 'jabber:client')]);
    }
  });

  it('an invalid sequence split across chunks is reported when the offending byte arrives', () => {
    const { events } = feed([bytes(HEADER, '<m>', [0xe2]), bytes([0x82]), bytes('A</m>')]);
    expect(errorOf(events).message).toBe(`invalid UTF-8 byte 'A' at byte offset ${H.length + 5} (RFC 6120 §11.6)`);
    // An incomplete prefix that can never become valid fails at once.
    const early = feed([bytes(HEADER, '<m>', [0xed, 0xa0])]);
    expect(errorOf(early.events).condition).toBe('unsupported-encoding');
  });
});

// ---------------------------------------------------------------------------------------------
// WebSocket framing.

describe('scanFragment (RFC 7395 §3.3.3)', () => {
  const limits: ScannerLimits = { maxStanzaBytes: 1000, maxDepth: 8 };

  it('accepts exactly one element and resolves ns from its own declarations only', () => {
    const open = scanFragment(Buffer.from("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>"), limits);
    expect(open).toMatchObject({ name: 'open', localName: 'open', ns: 'urn:ietf:params:xml:ns:xmpp-framing' });
    const message = Buffer.from("<message xmlns='jabber:client' to='a@b'><body>h&amp;i é</body></message>");
    const m = scanFragment(message, limits);
    expect(m.bytes.equals(message)).toBe(true);
    expect(m.bytes.buffer).toBe(message.buffer);
    expect(m).toMatchObject({ name: 'message', ns: 'jabber:client' });
    expect(scanFragment(Buffer.from('<presence/>'), limits).ns).toBeUndefined();
    expect(scanFragment(Buffer.from("<sm:a xmlns:sm='urn:xmpp:sm:3' h='1'/>"), limits)).toMatchObject({
      name: 'sm:a',
      localName: 'a',
      ns: 'urn:xmpp:sm:3',
    });
  });

  const rejects: [string, string | Buffer, string, string?][] = [
    ['two elements', '<a/><b/>', 'not-well-formed', 'exactly one element'],
    ['leading whitespace', ' <a/>', 'not-well-formed'],
    ['trailing whitespace', '<a/> ', 'not-well-formed'],
    ['text', 'hello', 'not-well-formed'],
    ['text after the element', '<a/>x', 'not-well-formed'],
    ['partial element', '<message><body>hi</body>', 'not-well-formed', 'incomplete element'],
    ['empty message', '', 'not-well-formed', 'empty'],
    ['an end tag alone', '</a>', 'not-well-formed'],
    ['a comment', '<a><!-- x --></a>', 'restricted-xml'],
    ['an XML declaration', "<?xml version='1.0'?><a/>", 'restricted-xml'],
    ['an undeclared entity', '<a>&x;</a>', 'restricted-xml'],
    ['bad UTF-8', Buffer.from([0x3c, 0x61, 0x3e, 0xc0, 0x80, 0x3c, 0x2f, 0x61, 0x3e]), 'unsupported-encoding'],
    ['a truncated UTF-8 sequence', Buffer.from([0x3c, 0x61, 0x2f, 0x3e, 0xe2, 0x82]), 'not-well-formed'],
    ['an undeclared prefix', '<sm:a/>', 'bad-namespace-prefix'],
    ['an element over maxStanzaBytes', `<a>${'x'.repeat(1000)}</a>`, 'policy-violation', 'the limit of 1000 bytes'],
    ['nesting over maxDepth', `${'<a>'.repeat(9)}${'</a>'.repeat(9)}`, 'policy-violation', 'maxDepth 8'],
  ];
  for (const [name, input, condition, message] of rejects) {
    it(`rejects ${name}`, () => {
      let thrown: unknown;
      try {
        scanFragment(typeof input === 'string' ? Buffer.from(input) : input, limits);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(StreamError);
      expect((thrown as StreamError).condition).toBe(condition);
      if (message !== undefined) expect((thrown as StreamError).message).toContain(message);
    });
  }

  it('is usable again after a rejection', () => {
    expect(() => scanFragment(Buffer.from('<a>'), limits)).toThrow(StreamError);
    expect(scanFragment(Buffer.from('<b/>'), limits).name).toBe('b');
  });
});

// ---------------------------------------------------------------------------------------------
// Property: chunking never changes the events, also for broken input.

describe('StreamScanner: chunking invariance on mutated streams', () => {
  it('gives the same events in one chunk and in random small chunks (seeded)', () => {
    const rnd = seededRandom(0x5ca7);
    const pieces = [
      MESSAGE,
      PRESENCE,
      IQ_ROSTER,
      FEATURES,
      '<m><![CDATA[x]]y]]></m>',
      "<sm:a xmlns:sm='urn:xmpp:sm:3' h='1'/>",
      "<a b='&#65;'>é€😀</a>",
      ' ',
    ];
    const alphabet = Buffer.from('<>/\'"=&;#x!-?[] \tabAZ:09\u0001');
    const utf8Bytes = [0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xc0];
    for (let run = 0; run < 400; run++) {
      const parts = [HEADER];
      for (let k = 1 + Math.floor(rnd() * 4); k > 0; k--) parts.push(pieces[Math.floor(rnd() * pieces.length)]!);
      let input = Buffer.from(parts.join(''));
      for (let m = Math.floor(rnd() * 3); m > 0; m--) {
        const at = Math.floor(rnd() * input.length);
        const byte = rnd() < 0.8 ? alphabet[Math.floor(rnd() * alphabet.length)]! : utf8Bytes[Math.floor(rnd() * utf8Bytes.length)]!;
        const op = rnd();
        const insert = Buffer.from([byte]);
        input =
          op < 0.33
            ? Buffer.concat([input.subarray(0, at), insert, input.subarray(at)])
            : op < 0.66
              ? Buffer.concat([input.subarray(0, at), input.subarray(at + 1)])
              : Buffer.concat([input.subarray(0, at), insert, input.subarray(at + 1)]);
      }
      const chunks: Buffer[] = [];
      for (let at = 0; at < input.length;) {
        const size = 1 + Math.floor(rnd() * 9);
        chunks.push(input.subarray(at, at + size));
        at += size;
      }
      const label = input.toString('latin1');
      expect({ label, ...feedScribbled(chunks, {}) }).toEqual({ label, ...feed([input]) });
    }
  });
});

describe('scanFragment: one refused message leaves nothing behind for the next connection', () => {
  it('a prefixed attribute name noted before a failure does not reach the next message (another user’s)', () => {
    const limits = { maxStanzaBytes: 65536, maxDepth: 16 };
    expect(() => scanFragment(Buffer.from(`<message xmlns='jabber:client' evil:a='<'/>`), limits)).toThrow(/'<' in an attribute value/);
    const next = scanFragment(Buffer.from(`<message xmlns='jabber:client' xml:lang='en'><x xmlns:p='urn:p' p:b='1'/></message>`), limits);
    expect(next.name).toBe('message');
  });

  it('a declaration whose value failed does not turn the next message’s attribute into a declaration', () => {
    const limits = { maxStanzaBytes: 65536, maxDepth: 16 };
    expect(() => scanFragment(Buffer.from(`<message xmlns:evil='a<'/>`), limits)).toThrow(/'<' in an attribute value/);
    expect(() => scanFragment(Buffer.from(`<message to='urn:x' xmlns='jabber:client'><evil:x/></message>`), limits)).toThrow(
      /undeclared prefix 'evil'/,
    );
    expect(() => scanFragment(Buffer.from(`<message xmlns='a<'/>`), limits)).toThrow(/'<' in an attribute value/);
    expect(scanFragment(Buffer.from(`<r to='urn:other'/>`), limits).ns).toBeUndefined();
  });
});
