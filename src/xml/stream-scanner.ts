/**
 * Byte-level XML stream scanner: the framing hot path (README, Performance).
 *
 * One scanner per direction of a connection frames the byte stream into the stream header, the
 * top-level elements (children of `<stream:stream>`, RFC 6120 §4.1: stanzas and nonzas) and the stream
 * close, and hands out each element's exact original bytes so they are forwarded and queued without
 * re-serialisation. On the way it enforces what RFC 6120 §11 asks of every XMPP entity: restricted XML
 * (§11.1), namespace prefixes of top-level elements (§11.2), well-formedness (§11.3, including
 * Namespaces in XML 1.0 at every depth, see namespace-scope.ts) and UTF-8 (§11.6), plus the proxy's
 * own per-stanza byte limit and nesting depth limit.
 *
 * It is one explicit state machine over bytes (numbered states as in the `ws` receiver). Only names of
 * the stream header and of top-level elements become strings; deeper end tags are matched as bytes
 * against a stack of copied start-tag names. An element that lies within one chunk is handed out as a
 * `subarray` of that chunk; one that spans chunks is copied piecewise and joined at its end.
 *
 * Error ordering is exact: every byte before the first offending byte is processed (and complete
 * elements before it are emitted), whatever the chunking, so one input always yields one sequence of
 * events.
 */

import { isUtf8 } from 'node:buffer';
import { ErrorCode, InvariantError, StreamError } from '../errors.js';
import { NamespaceScope, XML_NS, type NamespaceDeclaration } from './namespace-scope.js';

/** Limits of one direction of a stream. */
export interface ScannerLimits {
  /** Max bytes of one top-level element (stanza), counted from its '<' to its end. */
  maxStanzaBytes: number;
  /** Max element nesting depth below the stream header (top-level element = depth 1). */
  maxDepth: number;
}

/**
 * How strict a scanner is about names and namespaces below the top level. `every-depth` (the
 * default): Namespaces in XML 1.0 and XML 1.0 name characters in every start tag, for what clients
 * send. `top-level`: only the prefixes of top-level elements and the stream header, for what a
 * legacy server sends: it re-serialises stanzas other users wrote (ejabberd 23.01 writes
 * `<note xmlns='u' ex:level='2'>` for `<ex:note ex:level='2'>`, leaving `ex` unbound), and ending
 * a user's stream over that would let any contact end it.
 */
export type NameChecks = 'every-depth' | 'top-level';

/** The opening tag of an XML stream (RFC 6120 §4.7). */
export interface StreamHeader {
  /** Exact bytes of the opening tag, from '<' to '>' (not including a preceding XML declaration). */
  readonly bytes: Buffer;
  /** Qualified name as written, e.g. 'stream:stream'. */
  readonly name: string;
  /** Attributes with entity/char references decoded, keyed by qualified name as written (e.g. 'xml:lang', 'xmlns:stream'). */
  readonly attrs: Readonly<Record<string, string>>;
}

/** One top-level element (first-level child of the stream element, RFC 6120 §4.1). */
export interface ScannedElement {
  /** Exact bytes from '<' to the final '>' of the element. May be a subarray of an input chunk (zero-copy); callers that retain it copy it. */
  readonly bytes: Buffer;
  /** Qualified name as written ('message', 'stream:features', 'sm:a'). */
  readonly name: string;
  /** Local part of the name ('features' for 'stream:features'). */
  readonly localName: string;
  /** Resolved namespace: the element's own xmlns / xmlns:prefix declaration if present, otherwise the declaration in scope from the stream header; undefined if none. */
  readonly ns: string | undefined;
}

/** Receivers of a scanner's events. They are called synchronously from `write()`, in stream order. */
export interface ScannerHandlers {
  onStreamOpen(header: StreamHeader): void;
  onElement(element: ScannedElement): void;
  onStreamClose(): void;
  /** Called once; after it the scanner ignores further input. */
  onError(error: StreamError): void;
}

/** RFC 6120 §4.8.1: the streams namespace. */
const STREAMS_NS = 'http://etherx.jabber.org/streams';
/** The prefixes in scope before any declaration: Namespaces in XML 1.0 §3 binds `xml` by definition. */
const XML_ONLY: ReadonlyMap<string, string> = new Map([['xml', XML_NS]]);
/** The lengths in bytes of the two reserved namespace names (Namespaces in XML 1.0 §3), written plainly. */
const XML_NS_BYTES = 36;
const XMLNS_NS_BYTES = 29;
/** XEP-0205 / RFC 6120 §4.9.4 application condition of a too-big stanza. */
const STANZA_TOO_BIG_CONDITION = { name: 'stanza-too-big', xmlns: 'urn:xmpp:errors' } as const;

/** Scanner states. Numbered so the dispatch `switch` compiles to a jump table. */
const enum S {
  /** Very start of a stream: an XML declaration may follow. */
  Prolog0,
  /** Before the stream header, after the declaration or whitespace. */
  Prolog,
  /** '<' was the very first byte: '?' starts the XML declaration. */
  LtDecl,
  /** Inside the XML declaration. */
  Decl,
  /** '?' inside the XML declaration. */
  DeclQ,
  /** Inside the stream, between top-level elements. */
  Between,
  /** After the stream close tag. */
  Closed,
  /** scanFragment: expecting the element's '<' as the first byte. */
  FragStart,
  /** scanFragment: after the element; nothing may follow. */
  FragEnd,
  /** After '<'. */
  Lt,
  /** In the name of a start tag. */
  StartName,
  /** In a start tag after whitespace. */
  TagWs,
  /** At the '>' that ends a (not self-closing) start tag. */
  TagGt,
  /** In an attribute name. */
  AttrName,
  /** After an attribute name and whitespace: expecting '='. */
  AttrEq,
  /** After '=': expecting the opening quote. */
  AttrQuote,
  /** In an attribute value. */
  AttrValue,
  /** After an attribute value's closing quote. */
  AfterAttr,
  /** After '/' in a start tag: expecting '>'. */
  EmptySlash,
  /** In the name of an end tag, matching it against the open element. */
  EndName,
  /** In the name of an end tag that does not match: collecting it for the message. */
  EndBad,
  /** After an end tag's name: whitespace, then '>'. */
  EndWs,
  /** At the '>' of an end tag. */
  EndGt,
  /** Character data inside an element. */
  Text,
  /** ']' in character data. */
  TextRb1,
  /** ']]' in character data. */
  TextRb2,
  /** After '&'. */
  Ref,
  /** In an entity name. */
  RefName,
  /** After '&#'. */
  RefHash,
  /** In a decimal character reference. */
  RefDec,
  /** In a hexadecimal character reference. */
  RefHex,
  /** After '<!'. */
  Bang,
  /** Matching '<![CDATA['. */
  CdataOpen,
  /** Inside a CDATA section. */
  Cdata,
  /** ']' inside a CDATA section. */
  CdataRb1,
  /** ']]' inside a CDATA section. */
  CdataRb2,
  /** An error was reported; input is ignored. */
  Done,
}

const LT = 0x3c;
const GT = 0x3e;
const AMP = 0x26;
const SLASH = 0x2f;
const QM = 0x3f;
const BANG = 0x21;
const EQ = 0x3d;
const DQ = 0x22;
const SQ = 0x27;
const RSQB = 0x5d;
const LSQB = 0x5b;
const HASH = 0x23;
const SEMI = 0x3b;
const COLON = 0x3a;
const SP = 0x20;
const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;

/** FNV-1a, for the duplicate-attribute check. */
const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;
/** Up to this many attributes per tag are checked for duplicates by hash; more go to a Set. */
const ATTR_LINEAR = 32;
/** Longest entity name and mismatched end-tag name kept for error messages. */
const MESSAGE_NAME_MAX = 64;
/** A held buffer for a spanning element larger than this is released after the element. */
const PENDING_KEEP = 64 * 1024;

/** XML 1.0 §2.2: Char excludes C0 controls other than TAB, LF, CR. */
function isControl(b: number): boolean {
  return b < 0x20 && b !== TAB && b !== LF && b !== CR;
}

function table(pred: (b: number) => boolean): Uint8Array {
  const t = new Uint8Array(256);
  for (let b = 0; b < 256; b++) t[b] = pred(b) ? 1 : 0;
  return t;
}

/**
 * XML 1.0 §2.3 NameStartChar, ASCII part; every byte of a multi-byte UTF-8 character is accepted
 * here, and a name that has one is checked character by character when its tag ends
 * (qualified-name.ts), as is a name with a colon.
 */
const NAME_START = table((b) => (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f || b === COLON || b >= 0x80);
/** Namespaces in XML 1.0 §3 [4] NCName's first character, ASCII part: a letter or '_'. */
const NCNAME_START_ASCII = table((b) => (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f);
/**
 * XML 1.0 §2.3 NameChar (ASCII part), as NAME_START: 0 for a byte that ends a name, 1 for a plain
 * one, 2 for a colon or a byte above ASCII (the name then needs the namespace check).
 */
const NAME_CHAR = (() => {
  const t = table((b) => NAME_START[b] === 1 || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x2e);
  for (let b = 0; b < 256; b++) if (t[b] === 1 && (b === COLON || b >= 0x80)) t[b] = 2;
  return t;
})();
/** Bytes that end a run of character data: markup, references, a possible ']]>' and controls. */
const TEXT_STOP = table((b) => b === LT || b === AMP || b === RSQB || isControl(b));
/** Bytes that end a run of a "-quoted attribute value. */
const ATTR_DQ_STOP = table((b) => b === DQ || b === LT || b === AMP || isControl(b));
/** Bytes that end a run of a '-quoted attribute value. */
const ATTR_SQ_STOP = table((b) => b === SQ || b === LT || b === AMP || isControl(b));
/** Bytes that end a run of CDATA content. */
const CDATA_STOP = table((b) => b === RSQB || isControl(b));
/** XML 1.0 §2.3 S. */
const WS = table((b) => b === SP || b === TAB || b === LF || b === CR);

const CDATA_OPEN = Buffer.from('<![CDATA[', 'latin1');
const EMPTY = Buffer.alloc(0);

function describeByte(b: number): string {
  return b > 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}'` : `0x${b.toString(16).padStart(2, '0').toUpperCase()}`;
}

function notWellFormed(message: string): StreamError {
  return new StreamError(ErrorCode.XML_NOT_WELL_FORMED, 'not-well-formed', message);
}

function restrictedXml(message: string): StreamError {
  return new StreamError(ErrorCode.XML_RESTRICTED, 'restricted-xml', message);
}

function unsupportedEncoding(message: string): StreamError {
  return new StreamError(ErrorCode.XML_ENCODING, 'unsupported-encoding', message);
}

function badNamespacePrefix(message: string): StreamError {
  return new StreamError(ErrorCode.XML_NAMESPACE_PREFIX, 'bad-namespace-prefix', message);
}

/** A byte where the grammar allows none: a control character, or a plain syntax error. */
function unexpectedByte(b: number, where: string, offset: number): StreamError {
  if (isControl(b)) {
    // XML 1.0 §2.2 Char / RFC 6120 §11.3: control characters make a stream not well-formed.
    return notWellFormed(`control character ${describeByte(b)} at byte offset ${offset}`);
  }
  return notWellFormed(`unexpected ${describeByte(b)} ${where} at byte offset ${offset}`);
}

/** XML 1.0 §2.2: U+FFFE and U+FFFF (EF BF BE, EF BF BF) are valid UTF-8 but no XML characters. */
const EF_BF = Buffer.from([0xef, 0xbf]);

/** Where in `buf[0, end)` the first U+FFFE or U+FFFF starts, or -1: one native search for EF BF per chunk, mostly. */
function findNonCharacter(buf: Buffer, end: number): number {
  for (let i = buf.indexOf(EF_BF); i >= 0 && i + 2 < end; i = buf.indexOf(EF_BF, i + 2)) {
    const third = buf[i + 2];
    if (third === 0xbe || third === 0xbf) return i;
  }
  return -1;
}

/** 1 or 2 when `buf` ends with EF or EF BF (what U+FFFE and U+FFFF start with), else 0. */
function nonCharacterPrefixAtEnd(buf: Buffer): number {
  const len = buf.length;
  const last = buf[len - 1]!;
  if (last === 0xef) return 1;
  return last === 0xbf && len >= 2 && buf[len - 2] === 0xef ? 2 : 0;
}

/** XML 1.0 §2.2 Char: the code points a character reference may denote. */
function isXmlChar(c: number): boolean {
  return c === TAB || c === LF || c === CR || (c >= 0x20 && c <= 0xd7ff) || (c >= 0xe000 && c <= 0xfffd) || (c >= 0x10000 && c <= 0x10ffff);
}

/**
 * UTF-8 lead byte → continuation bytes needed | lowest allowed second byte << 8 | highest << 16, or
 * -1 for a byte that cannot start a sequence. RFC 3629 §4: no overlongs, no surrogates, nothing above
 * U+10FFFF (the same rules as isUtf8).
 */
function utf8Lead(b: number): number {
  if (b < 0x80) return 0;
  if (b < 0xc2) return -1;
  if (b < 0xe0) return 1 | (0x80 << 8) | (0xbf << 16);
  if (b === 0xe0) return 2 | (0xa0 << 8) | (0xbf << 16);
  if (b === 0xed) return 2 | (0x80 << 8) | (0x9f << 16);
  if (b < 0xf0) return 2 | (0x80 << 8) | (0xbf << 16);
  if (b === 0xf0) return 3 | (0x90 << 8) | (0xbf << 16);
  if (b < 0xf4) return 3 | (0x80 << 8) | (0xbf << 16);
  if (b === 0xf4) return 3 | (0x80 << 8) | (0x8f << 16);
  return -1;
}

/** Index of the first byte in [from, to) at which UTF-8 decoding fails (the slow path after isUtf8 said no). */
function firstInvalidUtf8(buf: Buffer, from: number, to: number): number {
  let i = from;
  while (i < to) {
    const lead = utf8Lead(buf[i]!);
    if (lead < 0) return i;
    let need = lead & 0xff;
    let lo = (lead >> 8) & 0xff;
    let hi = lead >> 16;
    i++;
    while (need > 0) {
      if (i >= to) return to;
      const b = buf[i]!;
      if (b < lo || b > hi) return i;
      lo = 0x80;
      hi = 0xbf;
      need--;
      i++;
    }
  }
  return to;
}

/**
 * Whether name bytes [s, e) have a colon or a byte above ASCII: the names the byte tables cannot
 * judge alone. `xml:` and an ASCII local part that starts with a letter or '_' (`xml:lang` on many
 * stanzas) is fine as it is: the prefix is bound by definition, and no other prefix may be bound to
 * its namespace, so it cannot clash with another attribute.
 */
function isWideName(names: Buffer, s: number, e: number): boolean {
  let k = s;
  if (
    e - s > 4 &&
    names[s] === 0x78 &&
    names[s + 1] === 0x6d &&
    names[s + 2] === 0x6c &&
    names[s + 3] === COLON &&
    NCNAME_START_ASCII[names[s + 4]!] === 1
  ) {
    k = s + 5;
  }
  for (; k < e; k++) {
    const b = names[k]!;
    if (b === COLON || b >= 0x80) return true;
  }
  return false;
}

/** XML 1.0 §4.6 predefined entities: the only named references RFC 6120 §11.1 leaves. */
const PREDEFINED_ENTITIES: Readonly<Record<string, string>> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function isPredefinedEntity(name: Buffer, len: number): boolean {
  const c0 = name[0];
  if (len === 2) return (c0 === 0x6c || c0 === 0x67) && name[1] === 0x74; // lt, gt
  if (len === 3) return c0 === 0x61 && name[1] === 0x6d && name[2] === 0x70; // amp
  if (len === 4) {
    return (
      (c0 === 0x71 && name[1] === 0x75 && name[2] === 0x6f && name[3] === 0x74) || // quot
      (c0 === 0x61 && name[1] === 0x70 && name[2] === 0x6f && name[3] === 0x73) // apos
    );
  }
  return false;
}

const REFERENCE = /&(?:#x([0-9a-fA-F]+)|#([0-9]+)|([A-Za-z]+));/g;

/**
 * Decodes an attribute value the scanner has already validated: XML 1.0 §3.3.3 normalisation of
 * literal whitespace to spaces, then references.
 */
function decodeAttrValue(bytes: Buffer): string {
  let plain = true;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === AMP || b === TAB || b === LF || b === CR) {
      plain = false;
      break;
    }
  }
  const text = bytes.toString('utf8');
  if (plain) return text;
  return text
    .replace(/\r\n|[\t\n\r]/g, ' ')
    .replace(REFERENCE, (_m, hex: string | undefined, dec: string | undefined, name: string | undefined) => {
      if (name !== undefined) return PREDEFINED_ENTITIES[name] ?? '';
      return String.fromCodePoint(hex !== undefined ? parseInt(hex, 16) : parseInt(dec!, 10));
    });
}

/** XML 1.0 §2.8 XMLDecl, with the `encoding` value captured. */
const XML_DECL =
  /^<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(?:'1\.[0-9]+'|"1\.[0-9]+")(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(?:'([A-Za-z][A-Za-z0-9._-]*)'|"([A-Za-z][A-Za-z0-9._-]*)"))?(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*(?:'(?:yes|no)'|"(?:yes|no)"))?[ \t\r\n]*\?>$/;

/** A top-level element name decoded once and reused (most streams use a handful of names). */
interface NameEntry {
  /**
   * The name's bytes as a latin1 string (one char per byte). A string and not a Buffer: a small
   * Buffer is a slice of Node's shared 8 KiB pool, and a long-lived cache entry would pin a pool
   * slab of its own in every hibernating session.
   */
  readonly bytes: string;
  readonly name: string;
  readonly prefix: string | undefined;
  readonly localName: string;
}
const NAME_CACHE_SIZE = 16;
/** Nesting depth the scanner has room for at first (XMPP stanzas rarely go deeper than 8). */
const INITIAL_DEPTH_CAPACITY = 16;
/**
 * Bytes the scanner has room for at first for the names of the open elements, and for the
 * attribute names of one tag; both grow on demand. Small, because every session has two scanners
 * for its whole life (hibernation included).
 */
const INITIAL_NAME_BYTES = 128;

// Module-private members for scanFragment (not part of the public API).
const kResetForFragment = Symbol('resetForFragment');
const kUtf8Incomplete = Symbol('utf8Incomplete');

/**
 * Frames one direction of an XML stream. See the module comment; events go to `handlers`.
 *
 * Not re-entrant: a handler may call `restart()` and `setLimits()`, but not `write()`. A handler that
 * throws stops the scanner and the exception propagates out of `write()`.
 */
export class StreamScanner {
  private readonly handlers: ScannerHandlers;
  private maxStanzaBytes: number;
  private maxDepth: number;
  /** Limits captured when the current top-level construct started (setLimits applies to later ones). */
  private curMaxStanza: number;
  private curMaxDepth: number;

  private state: S = S.Prolog0;
  /** State after a top-level element: Between, or FragEnd for scanFragment. */
  private afterTop: S = S.Between;
  private fragment = false;
  private writing = false;
  /** Bytes of earlier chunks, for byte offsets in messages. */
  private consumed = 0;

  // UTF-8 sequence carried over from the previous chunk: bytes still needed, allowed range of the next.
  private u8Need = 0;
  private u8Lo = 0x80;
  private u8Hi = 0xbf;
  /**
   * The end of the previous chunk when it was EF or EF BF: perhaps the start of U+FFFE/U+FFFF,
   * held back unscanned so that the answer does not depend on where chunks are cut.
   */
  private held: Buffer | undefined;

  // The current top-level construct (XML declaration, header, element, stream close): from its '<'.
  private inThing = false;
  /** Index of its '<' in the current chunk (0 when it started in an earlier chunk). */
  private thingStart = 0;
  /** Its bytes from earlier chunks, copied (input chunks are only valid during write()). */
  private pending: Buffer = EMPTY;
  private pendingLen = 0;

  // Open elements, the stream header at index 0. Names are copied into nameStack back to back.
  private depth = 0;
  private nameStack: Buffer;
  private nameTop = 0;
  private nameStarts: Int32Array;
  /** End of the name of the start tag being scanned; it starts at nameTop. */
  private tagNameEnd = 0;
  /** Bytes of an end tag's name matched so far. */
  private endMatched = 0;
  private endBadName: number[] = [];

  // Attributes of the start tag being scanned, for the duplicate check (XML 1.0 §3.1 WFC: Unique Att Spec).
  private attrNames: Buffer;
  private attrLen = 0;
  private attrHash = FNV_OFFSET;
  private attrCount = 0;
  private readonly attrHashes = new Int32Array(ATTR_LINEAR);
  private readonly attrOffsets = new Int32Array(ATTR_LINEAR + 1);
  private attrSet: Set<string> | undefined;
  private quote = 0;

  /**
   * The start tag being scanned needs the namespace check (namespace-scope.ts): a name in it has a
   * colon or a byte above ASCII. Its attribute names of that kind are in `wideAttrs`.
   */
  private nsCheck = false;
  private wideAttrs: string[] = [];
  /** The attribute name being scanned has a colon or a byte above ASCII. */
  private attrWide = false;
  /** `scope.innermost`, kept here for the end tag's quick test. */
  private scopeDepth = 0;

  // Captured attributes: all of the header's, the xmlns ones of every other start tag. Offsets are
  // relative to the construct's '<'.
  private capturing = false;
  private capName = '';
  private capStart = 0;
  private capNames: string[] = [];
  private capRanges: number[] = [];
  private capCount = 0;
  /** A captured value of the tag being scanned has a reference in it: its bytes are not its value. */
  private capHasRef = false;

  // References.
  private refReturn: S = S.Text;
  private refLen = 0;
  private refVal = 0;
  private readonly refName: Buffer;
  private cdataMatched = 0;

  // Namespace declarations of the stream header (RFC 6120 §4.8), and the prefixes the open
  // elements declare below it.
  private defaultNs: string | undefined;
  private readonly scope = new NamespaceScope(XML_ONLY);

  // The open top-level element.
  private elName = '';
  private elLocal = '';
  private elNs: string | undefined;
  private readonly nameCache: NameEntry[] = [];

  constructor(
    handlers: ScannerHandlers,
    limits: ScannerLimits,
    private readonly nameChecks: NameChecks = 'every-depth',
  ) {
    checkLimits(limits);
    this.handlers = handlers;
    this.maxStanzaBytes = limits.maxStanzaBytes;
    this.maxDepth = limits.maxDepth;
    this.curMaxStanza = limits.maxStanzaBytes;
    this.curMaxDepth = limits.maxDepth;
    this.nameStarts = new Int32Array(INITIAL_DEPTH_CAPACITY);
    // One allocation of the scanner's own for its scratch space, not slices of Node's shared 8 KiB
    // pool: a scanner lives as long as its session, and a pool slice would pin a whole pool slab.
    const scratch = Buffer.allocUnsafeSlow(2 * INITIAL_NAME_BYTES + MESSAGE_NAME_MAX);
    this.nameStack = scratch.subarray(0, INITIAL_NAME_BYTES);
    this.attrNames = scratch.subarray(INITIAL_NAME_BYTES, 2 * INITIAL_NAME_BYTES);
    this.refName = scratch.subarray(2 * INITIAL_NAME_BYTES);
  }

  /** True while bytes of an unfinished element/header are held (useful for tests and for deciding if an EOF was mid-element). */
  get midElement(): boolean {
    return (this.inThing || this.held !== undefined) && this.state !== S.Done;
  }

  /**
   * Expect a fresh stream next: optional XML declaration, then a new stream header (RFC 6120 §4.3.3
   * restart after STARTTLS/SASL). May be called from inside onElement: the rest of the current chunk is
   * then scanned as the new stream.
   */
  restart(): void {
    if (this.state === S.Done) return;
    this.state = S.Prolog0;
    this.depth = 0;
    this.nameTop = 0;
    this.inThing = false;
    this.pendingLen = 0;
    this.defaultNs = undefined;
    this.scope.reset(XML_ONLY);
    this.scopeDepth = 0;
  }

  /** Change the limits (the proxy uses a smaller stanza limit before authentication). Applies to elements that start after the call. */
  setLimits(limits: Partial<ScannerLimits>): void {
    const next = { maxStanzaBytes: limits.maxStanzaBytes ?? this.maxStanzaBytes, maxDepth: limits.maxDepth ?? this.maxDepth };
    checkLimits(next);
    this.maxStanzaBytes = next.maxStanzaBytes;
    this.maxDepth = next.maxDepth;
  }

  /** Feed bytes. Calls handlers synchronously, in stream order. */
  write(input: Buffer): void {
    if (this.state === S.Done || input.length === 0) return;
    if (this.writing) throw new InvariantError('StreamScanner.write() called from one of its own handlers');
    this.writing = true;
    try {
      const whole = this.held === undefined ? input : Buffer.concat([this.held, input]);
      const holdBack = nonCharacterPrefixAtEnd(whole);
      this.held = holdBack === 0 ? undefined : Buffer.from(whole.subarray(whole.length - holdBack));
      const chunk = holdBack === 0 ? whole : whole.subarray(0, whole.length - holdBack);
      if (chunk.length === 0) return;
      // RFC 6120 §11.6: the stream must be UTF-8. Bytes before the first invalid one are scanned first,
      // so the events do not depend on where chunks were cut.
      const badAt = this.checkUtf8(chunk);
      const valid = badAt < 0 ? chunk.length : badAt;
      const nonCharAt = findNonCharacter(chunk, valid);
      this.scan(chunk, nonCharAt < 0 ? valid : nonCharAt);
      if (nonCharAt >= 0 && !this.stopped()) {
        // XML 1.0 §2.2: Char excludes U+FFFE and U+FFFF; valid UTF-8, but not XML (RFC 6120 §11.3).
        this.fail(notWellFormed(`U+FFFE or U+FFFF, not an XML character, at byte offset ${this.consumed + nonCharAt}`));
      } else if (badAt >= 0 && !this.stopped()) {
        this.fail(
          unsupportedEncoding(`invalid UTF-8 byte ${describeByte(chunk[badAt]!)} at byte offset ${this.consumed + badAt} (RFC 6120 §11.6)`),
        );
      }
      this.consumed += chunk.length;
    } catch (err) {
      this.state = S.Done;
      throw err;
    } finally {
      this.writing = false;
    }
  }

  /**
   * Validates the chunk as the continuation of a UTF-8 stream; returns the index of the first byte at
   * which decoding fails, or -1. An incomplete sequence at the end is carried over to the next chunk.
   */
  private checkUtf8(buf: Buffer): number {
    const len = buf.length;
    let i = 0;
    if (this.u8Need !== 0) {
      let need = this.u8Need;
      let lo = this.u8Lo;
      let hi = this.u8Hi;
      while (need !== 0) {
        if (i === len) {
          this.u8Need = need;
          this.u8Lo = lo;
          this.u8Hi = hi;
          return -1;
        }
        const b = buf[i]!;
        if (b < lo || b > hi) return i;
        need--;
        lo = 0x80;
        hi = 0xbf;
        i++;
      }
      this.u8Need = 0;
    }
    // The lead byte of an incomplete last sequence is among the last three bytes.
    let tail = len;
    const stop = len - 3 > i ? len - 3 : i;
    let j = len - 1;
    while (j >= stop && (buf[j]! & 0xc0) === 0x80) j--;
    if (j >= stop) {
      const b = buf[j]!;
      const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      if (len - j < size) tail = j;
    }
    if (tail > i && !isUtf8(i === 0 && tail === len ? buf : buf.subarray(i, tail))) return firstInvalidUtf8(buf, i, tail);
    if (tail === len) return -1;
    // Careful per-byte check of the incomplete tail: a prefix that can never become valid fails now.
    const lead = utf8Lead(buf[tail]!);
    if (lead < 0) return tail;
    let need = lead & 0xff;
    let lo = (lead >> 8) & 0xff;
    let hi = lead >> 16;
    for (let k = tail + 1; k < len; k++) {
      const b = buf[k]!;
      if (b < lo || b > hi) return k;
      need--;
      lo = 0x80;
      hi = 0xbf;
    }
    this.u8Need = need;
    this.u8Lo = lo;
    this.u8Hi = hi;
    return -1;
  }

  /** True once an error was reported (a method, so TypeScript does not narrow `state` across calls). */
  private stopped(): boolean {
    return this.state === S.Done;
  }

  private fail(error: StreamError): void {
    this.state = S.Done;
    this.inThing = false;
    this.handlers.onError(error);
  }

  /** Scans buf[0, n). The state machine. */
  private scan(buf: Buffer, n: number): void {
    const len = buf.length;
    const nameStart = NAME_START;
    const nameChar = NAME_CHAR;
    const ws = WS;
    let state = this.state;
    let i = 0;
    // The construct in progress may not grow past limEnd (an index in this chunk).
    let limEnd = this.inThing ? this.thingStart + this.curMaxStanza - this.pendingLen : Infinity;
    let end = limEnd < n ? limEnd : n;

    for (;;) {
      if (i >= end) {
        if (end === limEnd && limEnd < len) {
          // The byte at limEnd would make the construct longer than the limit: report now, before
          // the element is buffered whole.
          this.state = state;
          return this.fail(this.tooBig());
        }
        break;
      }
      switch (state) {
        case S.Text: {
          const stop = TEXT_STOP;
          // Four bytes a step while none of them stops the run (most of a body): fewer loop tests.
          while (i + 4 <= end && (stop[buf[i]!]! | stop[buf[i + 1]!]! | stop[buf[i + 2]!]! | stop[buf[i + 3]!]!) === 0) i += 4;
          while (i < end && stop[buf[i]!] === 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b === LT) state = S.Lt;
          else if (b === AMP) {
            this.refReturn = S.Text;
            state = S.Ref;
          } else if (b === RSQB) state = S.TextRb1;
          else return this.fail(unexpectedByte(b, 'in character data', this.consumed + i));
          i++;
          continue;
        }

        case S.AttrValue: {
          const q = this.quote;
          const stop = q === DQ ? ATTR_DQ_STOP : ATTR_SQ_STOP;
          while (i < end && stop[buf[i]!] === 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b === q) {
            if (this.capturing) {
              this.capturing = false;
              const valueEnd = this.pendingLen + i - this.thingStart;
              const length = valueEnd - this.capStart;
              // Below the top level a default namespace matters only when it may be a reserved one.
              if (this.depth < 2 || this.capName !== 'xmlns' || this.capHasRef || length === XML_NS_BYTES || length === XMLNS_NS_BYTES) {
                const c = this.capCount++;
                this.capNames[c] = this.capName;
                this.capRanges[2 * c] = this.capStart;
                this.capRanges[2 * c + 1] = valueEnd;
              }
            }
            state = S.AfterAttr;
          } else if (b === AMP) {
            this.refReturn = S.AttrValue;
            if (this.capturing) this.capHasRef = true;
            state = S.Ref;
          } else if (b === LT) {
            // XML 1.0 §3.1 WFC: No < in Attribute Values.
            return this.fail(notWellFormed(`'<' in an attribute value at byte offset ${this.consumed + i}`));
          } else return this.fail(unexpectedByte(b, 'in an attribute value', this.consumed + i));
          i++;
          continue;
        }

        case S.Lt: {
          const b = buf[i]!;
          const d = this.depth;
          if (nameStart[b] !== 0) {
            if (d > this.curMaxDepth) return this.fail(this.tooDeep(d));
            this.tagNameEnd = this.nameTop;
            this.attrLen = 0;
            this.attrCount = 0;
            this.attrSet = undefined;
            this.capCount = 0;
            this.capturing = false;
            this.capHasRef = false;
            this.nsCheck = false;
            // A tag that failed after one of its names was noted (a fragment scanner lives on).
            if (this.wideAttrs.length !== 0) this.wideAttrs = [];
            state = S.StartName;
            continue;
          }
          if (b === SLASH) {
            if (d === 0 || (this.fragment && d === 1)) {
              return this.fail(notWellFormed(`end tag without a start tag at byte offset ${this.consumed + i - 1}`));
            }
            this.endMatched = 0;
            state = S.EndName;
          } else if (b === BANG) state = S.Bang;
          else if (b === QM) {
            // RFC 6120 §11.1: "MUST NOT contain ... processing instructions" (the XML declaration is
            // only allowed as the first bytes of a stream, handled by LtDecl).
            return this.fail(
              restrictedXml(`processing instruction at byte offset ${this.consumed + i - 1} (restricted XML, RFC 6120 §11.1)`),
            );
          } else return this.fail(unexpectedByte(b, "after '<'", this.consumed + i));
          i++;
          continue;
        }

        case S.StartName: {
          let k = this.tagNameEnd;
          let stack = this.nameStack;
          let kinds = 0;
          while (i < end) {
            const b = buf[i]!;
            const kind = nameChar[b]!;
            if (kind === 0) break;
            kinds |= kind;
            if (k === stack.length) stack = this.growNameStack();
            stack[k++] = b;
            i++;
          }
          this.tagNameEnd = k;
          if (kinds > 1) this.nsCheck = true;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b === GT) {
            state = S.TagGt;
            continue;
          }
          if (ws[b] !== 0) state = S.TagWs;
          else if (b === SLASH) state = S.EmptySlash;
          else return this.fail(unexpectedByte(b, 'in an element name', this.consumed + i));
          i++;
          continue;
        }

        case S.TagWs: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (nameStart[b] !== 0) {
            this.attrHash = FNV_OFFSET;
            this.attrWide = false;
            state = S.AttrName;
            continue;
          }
          if (b === GT) {
            state = S.TagGt;
            continue;
          }
          if (b === SLASH) state = S.EmptySlash;
          else return this.fail(unexpectedByte(b, 'in a start tag', this.consumed + i));
          i++;
          continue;
        }

        case S.AttrName: {
          let k = this.attrLen;
          let h = this.attrHash;
          let names = this.attrNames;
          let kinds = 0;
          while (i < end) {
            const b = buf[i]!;
            const kind = nameChar[b]!;
            if (kind === 0) break;
            kinds |= kind;
            if (k === names.length) names = this.growAttrNames();
            names[k++] = b;
            h = Math.imul(h ^ b, FNV_PRIME);
            i++;
          }
          this.attrLen = k;
          this.attrHash = h;
          if (kinds > 1) this.attrWide = true;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b === EQ) state = S.AttrQuote;
          else if (ws[b] !== 0) state = S.AttrEq;
          else {
            // XML 1.0 §3.1 [41] Attribute ::= Name Eq AttValue
            return this.fail(unexpectedByte(b, 'after an attribute name', this.consumed + i));
          }
          const err = this.attributeEnd();
          if (err !== undefined) return this.fail(err);
          i++;
          continue;
        }

        case S.AttrEq: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== EQ) return this.fail(unexpectedByte(b, "where '=' must follow an attribute name", this.consumed + i));
          state = S.AttrQuote;
          i++;
          continue;
        }

        case S.AttrQuote: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          // XML 1.0 §3.1 [10] AttValue: quoted with " or '.
          if (b !== DQ && b !== SQ) return this.fail(unexpectedByte(b, 'where a quoted attribute value must start', this.consumed + i));
          this.quote = b;
          if (this.capturing) this.capStart = this.pendingLen + i + 1 - this.thingStart;
          state = S.AttrValue;
          i++;
          continue;
        }

        case S.AfterAttr: {
          const b = buf[i]!;
          if (ws[b] !== 0) {
            state = S.TagWs;
            i++;
          } else if (b === GT) state = S.TagGt;
          else if (b === SLASH) {
            state = S.EmptySlash;
            i++;
          } else if (nameStart[b] !== 0) {
            // XML 1.0 §3.1 [40] STag ::= '<' Name (S Attribute)* S? '>': whitespace separates attributes.
            return this.fail(notWellFormed(`missing whitespace between attributes at byte offset ${this.consumed + i}`));
          } else return this.fail(unexpectedByte(b, 'after an attribute value', this.consumed + i));
          continue;
        }

        case S.TagGt: {
          // buf[i] is the '>' of a start tag.
          const d = this.depth;
          if (d >= 2) {
            if ((this.nsCheck || this.capCount !== 0) && this.nameChecks === 'every-depth') {
              const err = this.namespaceProblem(buf, i, d, false);
              if (err !== undefined) return this.fail(err);
            }
            this.push(d);
            state = S.Text;
            i++;
            continue;
          }
          state = d === 0 ? this.headerEnd(buf, i) : this.topStartTagEnd(buf, i, false);
          if (state === S.Done) return;
          i++;
          if (!this.inThing) {
            limEnd = Infinity;
            end = n;
          }
          continue;
        }

        case S.EmptySlash: {
          const b = buf[i]!;
          if (b !== GT) return this.fail(unexpectedByte(b, "after '/' in a start tag", this.consumed + i));
          const d = this.depth;
          if (d >= 2) {
            if ((this.nsCheck || this.capCount !== 0) && this.nameChecks === 'every-depth') {
              const err = this.namespaceProblem(buf, i, d, true);
              if (err !== undefined) return this.fail(err);
            }
            // The name is dropped: nameTop stays.
            state = S.Text;
            i++;
            continue;
          }
          if (d === 0) return this.fail(notWellFormed('the stream header must not be an empty element (RFC 6120 §4.2)'));
          state = this.topStartTagEnd(buf, i, true);
          if (state === S.Done) return;
          i++;
          limEnd = Infinity;
          end = n;
          continue;
        }

        case S.EndName: {
          // XML 1.0 §3 WFC: Element Type Match: the end tag's name is the start tag's, byte for byte.
          const stack = this.nameStack;
          const s = this.nameStarts[this.depth - 1]!;
          const e = this.nameTop;
          let k = this.endMatched;
          let mismatch = false;
          while (i < end) {
            const b = buf[i]!;
            if (nameChar[b] === 0) break;
            if (s + k >= e || stack[s + k] !== b) {
              mismatch = true;
              break;
            }
            k++;
            i++;
          }
          this.endMatched = k;
          if (mismatch) {
            this.endBadName = Array.from(stack.subarray(s, s + k));
            state = S.EndBad;
            continue;
          }
          if (i >= end) continue;
          if (k === 0) return this.fail(unexpectedByte(buf[i]!, "after '</'", this.consumed + i));
          if (s + k !== e) {
            this.endBadName = Array.from(stack.subarray(s, s + k));
            return this.fail(this.endTagMismatch());
          }
          const b = buf[i]!;
          if (b === GT) {
            state = S.EndGt;
            continue;
          }
          if (ws[b] === 0) return this.fail(unexpectedByte(b, 'in an end tag', this.consumed + i));
          state = S.EndWs;
          i++;
          continue;
        }

        case S.EndBad: {
          const bad = this.endBadName;
          while (i < end) {
            const b = buf[i]!;
            if (nameChar[b] === 0) break;
            if (bad.length <= MESSAGE_NAME_MAX) bad.push(b);
            i++;
          }
          if (i >= end) continue;
          return this.fail(this.endTagMismatch());
        }

        case S.EndWs: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== GT) return this.fail(unexpectedByte(b, 'in an end tag', this.consumed + i));
          state = S.EndGt;
          continue;
        }

        case S.EndGt: {
          // buf[i] is the '>' of an end tag: pop.
          const d = this.depth - 1;
          this.nameTop = this.nameStarts[d]!;
          this.depth = d;
          if (d <= this.scopeDepth) {
            this.scope.close(d);
            this.scopeDepth = this.scope.innermost;
          }
          i++;
          if (d >= 2) {
            state = S.Text;
            continue;
          }
          state = d === 1 ? this.elementEnd(buf, i) : this.streamEnd();
          limEnd = Infinity;
          end = n;
          continue;
        }

        case S.TextRb1: {
          if (buf[i] === RSQB) {
            state = S.TextRb2;
            i++;
          } else state = S.Text;
          continue;
        }

        case S.TextRb2: {
          const b = buf[i]!;
          if (b === GT) {
            // XML 1.0 §2.4: "The right angle bracket (>) MUST ... when it appears in the string ]]> in
            // content, when that string is not marking the end of a CDATA section" be escaped.
            return this.fail(notWellFormed(`']]>' in character data at byte offset ${this.consumed + i - 2}`));
          }
          if (b === RSQB) i++;
          else state = S.Text;
          continue;
        }

        case S.Ref: {
          const b = buf[i]!;
          if (b === HASH) state = S.RefHash;
          else if (nameStart[b] !== 0) {
            this.refLen = 0;
            state = S.RefName;
            continue;
          } else {
            // XML 1.0 §2.4: '&' appears literally only as the start of a reference.
            return this.fail(notWellFormed(`'&' not starting a reference at byte offset ${this.consumed + i - 1}`));
          }
          i++;
          continue;
        }

        case S.RefName: {
          const name = this.refName;
          let k = this.refLen;
          while (i < end) {
            const b = buf[i]!;
            if (nameChar[b] === 0) break;
            if (k < MESSAGE_NAME_MAX) name[k] = b;
            k++;
            i++;
          }
          this.refLen = k;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== SEMI) return this.fail(notWellFormed(`entity reference not ended by ';' at byte offset ${this.consumed + i}`));
          if (!isPredefinedEntity(name, k)) {
            // RFC 6120 §11.1: "MUST NOT contain ... internal or external entity references with the
            // exception of predefined entities (Section 4.6 of [XML])".
            const shown = name.toString('utf8', 0, Math.min(k, MESSAGE_NAME_MAX)) + (k > MESSAGE_NAME_MAX ? '…' : '');
            return this.fail(
              restrictedXml(
                `undeclared entity reference &${shown}; at byte offset ${this.consumed + i - k - 1} (restricted XML, RFC 6120 §11.1)`,
              ),
            );
          }
          state = this.refReturn;
          i++;
          continue;
        }

        case S.RefHash: {
          const b = buf[i]!;
          this.refVal = 0;
          this.refLen = 0;
          if (b === 0x78) {
            state = S.RefHex;
            i++;
          } else if (b >= 0x30 && b <= 0x39) state = S.RefDec;
          else return this.fail(unexpectedByte(b, "after '&#'", this.consumed + i));
          continue;
        }

        case S.RefDec:
        case S.RefHex: {
          const hex = state === S.RefHex;
          let v = this.refVal;
          let k = this.refLen;
          let b = 0;
          while (i < end) {
            b = buf[i]!;
            let digit: number;
            if (b >= 0x30 && b <= 0x39) digit = b - 0x30;
            else if (hex && b >= 0x61 && b <= 0x66) digit = b - 0x57;
            else if (hex && b >= 0x41 && b <= 0x46) digit = b - 0x37;
            else break;
            v = v * (hex ? 16 : 10) + digit;
            if (v > 0x110000) v = 0x110000;
            k++;
            i++;
          }
          this.refVal = v;
          this.refLen = k;
          if (i >= end) continue;
          if (b !== SEMI || k === 0) return this.fail(unexpectedByte(b, 'in a character reference', this.consumed + i));
          if (!isXmlChar(v)) {
            // XML 1.0 §4.1 WFC: Legal Character. Grouped with RFC 6120 §11.1 restricted references.
            const shown = v >= 0x110000 ? 'beyond U+10FFFF' : `U+${v.toString(16).toUpperCase().padStart(4, '0')}`;
            return this.fail(
              restrictedXml(`character reference to ${shown}, not an XML character, at byte offset ${this.consumed + i} (RFC 6120 §11.1)`),
            );
          }
          state = this.refReturn;
          i++;
          continue;
        }

        case S.Between: {
          while (i < end && ws[buf[i]!] !== 0) i++; // RFC 6120 §4.6.1 whitespace keepalives
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== LT) {
            // RFC 6120 §4.1: the stream's children are elements; character data there is not well-formed
            // for XMPP (RFC 6120 §11.3).
            if (isControl(b)) return this.fail(unexpectedByte(b, '', this.consumed + i));
            return this.fail(notWellFormed(`text directly inside the stream at byte offset ${this.consumed + i}`));
          }
          this.startThing(i);
          limEnd = i + this.curMaxStanza;
          end = limEnd < n ? limEnd : n;
          state = S.Lt;
          i++;
          continue;
        }

        case S.Bang: {
          const b = buf[i]!;
          const at = this.consumed + i - 2;
          if (b === LSQB) {
            if (this.depth < 2) return this.fail(notWellFormed(`CDATA section outside of an element at byte offset ${at}`));
            this.cdataMatched = 3;
            state = S.CdataOpen;
            i++;
            continue;
          }
          // RFC 6120 §11.1: "MUST NOT contain ... comments ... internal or external DTD subsets".
          if (b === 0x2d) return this.fail(restrictedXml(`comment at byte offset ${at} (restricted XML, RFC 6120 §11.1)`));
          if (b === 0x44) return this.fail(restrictedXml(`DOCTYPE at byte offset ${at} (restricted XML, RFC 6120 §11.1)`));
          return this.fail(restrictedXml(`'<!' markup declaration at byte offset ${at} (restricted XML, RFC 6120 §11.1)`));
        }

        case S.CdataOpen: {
          let k = this.cdataMatched;
          while (i < end && k < CDATA_OPEN.length) {
            if (buf[i] !== CDATA_OPEN[k]) {
              return this.fail(
                restrictedXml(
                  `'<![' markup other than a CDATA section at byte offset ${this.consumed + i - k} (restricted XML, RFC 6120 §11.1)`,
                ),
              );
            }
            k++;
            i++;
          }
          this.cdataMatched = k;
          if (k === CDATA_OPEN.length) state = S.Cdata;
          continue;
        }

        case S.Cdata: {
          // XML 1.0 §2.7 CDATA sections: legal in content, and RFC 6120 does not forbid them.
          const stop = CDATA_STOP;
          while (i < end && stop[buf[i]!] === 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== RSQB) return this.fail(unexpectedByte(b, 'in a CDATA section', this.consumed + i));
          state = S.CdataRb1;
          i++;
          continue;
        }

        case S.CdataRb1: {
          if (buf[i] === RSQB) {
            state = S.CdataRb2;
            i++;
          } else state = S.Cdata;
          continue;
        }

        case S.CdataRb2: {
          const b = buf[i]!;
          if (b === GT) {
            state = S.Text;
            i++;
          } else if (b === RSQB) i++;
          else state = S.Cdata;
          continue;
        }

        case S.Prolog0: {
          const b = buf[i]!;
          if (b === LT) {
            this.startThing(i);
            limEnd = i + this.curMaxStanza;
            end = limEnd < n ? limEnd : n;
            state = S.LtDecl;
            i++;
            continue;
          }
          if (ws[b] === 0) return this.fail(unexpectedByte(b, 'before the stream header', this.consumed + i));
          state = S.Prolog;
          i++;
          continue;
        }

        case S.Prolog: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          const b = buf[i]!;
          if (b !== LT) return this.fail(unexpectedByte(b, 'before the stream header', this.consumed + i));
          this.startThing(i);
          limEnd = i + this.curMaxStanza;
          end = limEnd < n ? limEnd : n;
          state = S.Lt;
          i++;
          continue;
        }

        case S.LtDecl: {
          // RFC 6120 §11.1 allows processing instructions only as the XML declaration, and XML 1.0 §2.8
          // places that at the very start of the document.
          if (buf[i] === QM) {
            state = S.Decl;
            i++;
          } else state = S.Lt;
          continue;
        }

        case S.Decl: {
          while (i < end) {
            const b = buf[i]!;
            if (b === QM) break;
            if (b === LT || isControl(b)) return this.fail(unexpectedByte(b, 'in the XML declaration', this.consumed + i));
            i++;
          }
          if (i >= end) continue;
          state = S.DeclQ;
          i++;
          continue;
        }

        case S.DeclQ: {
          const b = buf[i]!;
          if (b === GT) {
            const err = this.declEnd(buf, i);
            if (err !== undefined) return this.fail(err);
            state = S.Prolog;
            i++;
            limEnd = Infinity;
            end = n;
          } else if (b !== QM) state = S.Decl;
          else i++;
          continue;
        }

        case S.Closed: {
          while (i < end && ws[buf[i]!] !== 0) i++;
          if (i >= end) continue;
          // RFC 6120 §4.4: the closing tag ends the stream; XML 1.0 §2.1 allows only Misc after the root.
          return this.fail(notWellFormed(`data after the stream was closed at byte offset ${this.consumed + i}`));
        }

        case S.FragStart: {
          // RFC 7395 §3.3.3: every WebSocket message is exactly one complete element.
          if (buf[i] !== LT) return this.fail(notWellFormed(`a WebSocket message must start with '<' (RFC 7395 §3.3.3)`));
          this.startThing(i);
          limEnd = i + this.curMaxStanza;
          end = limEnd < n ? limEnd : n;
          state = S.Lt;
          i++;
          continue;
        }

        case S.FragEnd:
          return this.fail(
            notWellFormed(
              `data after the element at byte offset ${this.consumed + i}: a WebSocket message is exactly one element (RFC 7395 §3.3.3)`,
            ),
          );

        case S.Done:
          return;
      }
    }

    this.state = state;
    if (this.inThing) {
      this.appendPending(buf, this.thingStart, n);
      this.thingStart = 0;
    }
  }

  /** A top-level construct (XML declaration, header, element, stream close) starts at buf[i]. */
  private startThing(i: number): void {
    this.inThing = true;
    this.thingStart = i;
    this.pendingLen = 0;
    this.curMaxStanza = this.maxStanzaBytes;
    this.curMaxDepth = this.maxDepth;
  }

  /** The construct's bytes up to (not including) buf[e]. */
  private thingBytes(buf: Buffer, e: number): Buffer {
    const p = this.pendingLen;
    if (p === 0) return buf.subarray(this.thingStart, e);
    const out = Buffer.allocUnsafe(p + e);
    this.pending.copy(out, 0, 0, p);
    buf.copy(out, p, 0, e);
    return out;
  }

  /** Bytes [s, e) relative to the construct's '<', which may straddle held and current bytes. */
  private relSlice(buf: Buffer, s: number, e: number): Buffer {
    const p = this.pendingLen;
    if (e <= p) return this.pending.subarray(s, e);
    const base = this.thingStart - p;
    if (s >= p) return buf.subarray(base + s, base + e);
    return Buffer.concat([this.pending.subarray(s, p), buf.subarray(this.thingStart, base + e)]);
  }

  private endThing(): void {
    this.inThing = false;
    this.pendingLen = 0;
    if (this.pending.length > PENDING_KEEP) this.pending = EMPTY;
  }

  private appendPending(buf: Buffer, s: number, e: number): void {
    const need = this.pendingLen + (e - s);
    if (need > this.pending.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(need, this.pending.length * 2, 1024));
      this.pending.copy(grown, 0, 0, this.pendingLen);
      this.pending = grown;
    }
    buf.copy(this.pending, this.pendingLen, s, e);
    this.pendingLen = need;
  }

  private growNameStack(): Buffer {
    const grown = Buffer.allocUnsafeSlow(this.nameStack.length * 2);
    this.nameStack.copy(grown);
    this.nameStack = grown;
    return grown;
  }

  private growAttrNames(): Buffer {
    const grown = Buffer.allocUnsafeSlow(this.attrNames.length * 2);
    this.attrNames.copy(grown);
    this.attrNames = grown;
    return grown;
  }

  /** Opens the element whose start tag just ended at depth d. */
  private push(d: number): void {
    if (d >= this.nameStarts.length) {
      // Deep nesting is rare and bounded by maxDepth: grow on demand rather than size for the limit.
      const grown = new Int32Array(this.nameStarts.length * 2);
      grown.set(this.nameStarts);
      this.nameStarts = grown;
    }
    this.nameStarts[d] = this.nameTop;
    this.nameTop = this.tagNameEnd;
    this.depth = d + 1;
  }

  /**
   * An attribute name ended (its bytes are attrNames[attrOffsets[attrCount], attrLen)): duplicate
   * check, and whether its value is captured.
   */
  private attributeEnd(): StreamError | undefined {
    const names = this.attrNames;
    const c = this.attrCount;
    const s = c <= ATTR_LINEAR ? this.attrOffsets[c]! : 0;
    const e = this.attrLen;
    const len = e - s;
    // XML 1.0 §3.1 WFC: Unique Att Spec: "An attribute name MUST NOT appear more than once in the
    // same start-tag".
    if (c < ATTR_LINEAR) {
      const h = this.attrHash;
      const hashes = this.attrHashes;
      const offsets = this.attrOffsets;
      for (let j = 0; j < c; j++) {
        if (hashes[j] !== h) continue;
        const js = offsets[j]!;
        if (offsets[j + 1]! - js !== len) continue;
        let k = 0;
        while (k < len && names[js + k] === names[s + k]) k++;
        if (k === len) return this.duplicateAttribute(names.toString('utf8', s, e));
      }
      hashes[c] = h;
      offsets[c + 1] = e;
    } else {
      let set = this.attrSet;
      if (set === undefined) {
        set = this.attrSet = new Set();
        for (let j = 0; j < ATTR_LINEAR; j++) set.add(names.toString('latin1', this.attrOffsets[j]!, this.attrOffsets[j + 1]!));
      }
      const name = names.toString('latin1', s, e);
      if (set.has(name)) return this.duplicateAttribute(names.toString('utf8', s, e));
      set.add(name);
      this.attrLen = 0; // names past the linear part live in the set only
    }
    this.attrCount = c + 1;
    // Capture: every attribute of the stream header; xmlns and xmlns:* of every other start tag.
    const declaration =
      len >= 5 &&
      names[s] === 0x78 &&
      names[s + 1] === 0x6d &&
      names[s + 2] === 0x6c &&
      names[s + 3] === 0x6e &&
      names[s + 4] === 0x73 &&
      (len === 5 || names[s + 5] === COLON);
    if (declaration || this.depth === 0) {
      this.capturing = true;
      this.capName = len === 5 && declaration ? 'xmlns' : names.toString('utf8', s, e);
    }
    if (this.attrWide && !declaration && (this.depth === 0 || this.nameChecks === 'every-depth') && isWideName(names, s, e)) {
      this.nsCheck = true;
      this.wideAttrs.push(names.toString('utf8', s, e));
    }
    return undefined;
  }

  private duplicateAttribute(name: string): StreamError {
    const tag = this.nameStack.toString('utf8', this.nameTop, this.tagNameEnd);
    return notWellFormed(`duplicate attribute '${name}' on <${tag}>`);
  }

  private endTagMismatch(): StreamError {
    const bad = this.endBadName;
    const shown = Buffer.from(bad.slice(0, MESSAGE_NAME_MAX)).toString('utf8') + (bad.length > MESSAGE_NAME_MAX ? '…' : '');
    const open = this.nameStack.toString('utf8', this.nameStarts[this.depth - 1]!, this.nameTop);
    return notWellFormed(`end tag </${shown}> does not match <${open}>`);
  }

  private tooBig(): StreamError {
    const lim = this.curMaxStanza;
    const what =
      this.depth >= 1
        ? 'stanza'
        : this.state === S.LtDecl || this.state === S.Decl || this.state === S.DeclQ
          ? 'XML declaration'
          : 'stream header';
    return new StreamError(ErrorCode.STANZA_TOO_BIG, 'policy-violation', `${what} exceeds the limit of ${lim} bytes`, {
      appCondition: STANZA_TOO_BIG_CONDITION,
    });
  }

  private tooDeep(d: number): StreamError {
    return new StreamError(ErrorCode.XML_TOO_DEEP, 'policy-violation', `element nesting depth ${d} exceeds maxDepth ${this.curMaxDepth}`);
  }

  /** The XML declaration ended at buf[i]. */
  private declEnd(buf: Buffer, i: number): StreamError | undefined {
    const text = this.thingBytes(buf, i + 1).toString('latin1');
    this.endThing();
    const target = /^<\?([^ \t\r\n?]*)/.exec(text)![1];
    if (target !== 'xml') {
      return restrictedXml(`processing instruction at byte offset ${this.consumed + i + 1 - text.length} (restricted XML, RFC 6120 §11.1)`);
    }
    const m = XML_DECL.exec(text);
    if (m === null) return notWellFormed('malformed XML declaration (XML 1.0 §2.8)');
    const encoding = m[1] ?? m[2];
    // RFC 6120 §11.6: "an XMPP entity MUST NOT accept data that is encoded in any other format than UTF-8".
    if (encoding !== undefined && encoding.toLowerCase() !== 'utf-8') {
      return unsupportedEncoding(`XML declaration names encoding '${encoding}'; XMPP streams are UTF-8 (RFC 6120 §11.6)`);
    }
    return undefined;
  }

  /** The stream header's start tag ended at buf[i] (RFC 6120 §4.7). */
  private headerEnd(buf: Buffer, i: number): S {
    const name = this.nameStack.toString('utf8', 0, this.tagNameEnd);
    const attrs: Record<string, string> = {};
    const names = this.capNames.slice(0, this.capCount);
    const ranges = this.capRanges;
    for (let j = 0; j < names.length; j++) attrs[names[j]!] = decodeAttrValue(this.relSlice(buf, ranges[2 * j]!, ranges[2 * j + 1]!));
    const bytes = Buffer.from(this.thingBytes(buf, i + 1));

    const prefixes = new Map<string, string>(XML_ONLY);
    let defaultNs: string | undefined;
    const declarations: NamespaceDeclaration[] = [];
    for (const key of names) {
      if (key === 'xmlns') {
        defaultNs = attrs[key] === '' ? undefined : attrs[key];
        declarations.push({ prefix: undefined, uri: attrs[key]! });
      } else if (key.startsWith('xmlns:')) {
        if (attrs[key] !== '') prefixes.set(key.slice(6), attrs[key]!);
        declarations.push({ prefix: key.slice(6), uri: attrs[key]! });
      }
    }
    const wideAttrs = this.takeWideAttrs();
    const colon = name.indexOf(':');
    const prefix = colon < 0 ? undefined : name.slice(0, colon);
    const localName = colon < 0 ? name : name.slice(colon + 1);
    const ns = prefix === undefined ? defaultNs : prefixes.get(prefix);
    if (prefix !== undefined && ns === undefined) {
      // RFC 6120 §4.9.3.2 bad-namespace-prefix: "a namespace prefix that is unsupported".
      this.fail(badNamespacePrefix(`stream header <${name}> uses the undeclared prefix '${prefix}' (RFC 6120 §4.9.3.2)`));
      return S.Done;
    }
    if (ns !== STREAMS_NS || localName !== 'stream') {
      // RFC 6120 §4.8.1 / §4.9.3.10 invalid-namespace: the stream element is <stream> in the streams namespace.
      this.fail(
        new StreamError(
          ErrorCode.XML_INVALID_NAMESPACE,
          'invalid-namespace',
          `stream header <${name}> is '${localName}' in namespace '${ns ?? ''}', expected 'stream' in '${STREAMS_NS}' (RFC 6120 §4.9.3.10)`,
        ),
      );
      return S.Done;
    }
    const problem = new NamespaceScope(XML_ONLY).open(0, name, wideAttrs, declarations, true);
    if (problem !== undefined) {
      this.fail(notWellFormed(`stream header: ${problem}`));
      return S.Done;
    }
    this.defaultNs = defaultNs;
    this.scope.reset(prefixes);
    this.scopeDepth = 0;
    this.push(0);
    this.endThing();
    this.state = S.Between;
    this.handlers.onStreamOpen({ bytes, name, attrs });
    return this.state;
  }

  /** A top-level element's start tag ended at buf[i]. */
  private topStartTagEnd(buf: Buffer, i: number, selfClosing: boolean): S {
    const entry = this.topName(this.nameTop, this.tagNameEnd);
    let ns: string | undefined;
    let own = false;
    const names = this.capNames;
    const ownKey = entry.prefix === undefined ? 'xmlns' : `xmlns:${entry.prefix}`;
    for (let j = this.capCount - 1; j >= 0; j--) {
      if (names[j] === ownKey) {
        const ranges = this.capRanges;
        const v = decodeAttrValue(this.relSlice(buf, ranges[2 * j]!, ranges[2 * j + 1]!));
        ns = v === '' ? undefined : v;
        own = true;
        break;
      }
    }
    if (!own) ns = entry.prefix === undefined ? this.defaultNs : this.scope.resolve(entry.prefix);
    if (entry.prefix !== undefined && ns === undefined) {
      // RFC 6120 §11.2 / §4.9.3.2: a prefix that no declaration in scope binds.
      this.fail(
        badNamespacePrefix(
          `element <${entry.name}> uses the undeclared prefix '${entry.prefix}' at byte offset ${this.consumed + i} (RFC 6120 §11.2)`,
        ),
      );
      return S.Done;
    }
    const problem = this.nameChecks === 'every-depth' ? this.namespaceProblem(buf, i, 1, selfClosing) : undefined;
    if (problem !== undefined) {
      this.fail(problem);
      return S.Done;
    }
    this.elName = entry.name;
    this.elLocal = entry.localName;
    this.elNs = ns;
    if (selfClosing) return this.elementEnd(buf, i + 1);
    this.push(1);
    return S.Text;
  }

  /**
   * Namespaces in XML 1.0 for the start tag of depth `d >= 1` that ended at buf[i]: nothing to do
   * for the common tag (names without a colon or a byte above ASCII, no declaration), nor for one
   * whose only declaration is a default namespace that cannot be a reserved one (its plain bytes are
   * of another length); anything else goes to the full check (namespace-scope.ts), which also puts
   * the tag's prefixes in scope.
   */
  private namespaceProblem(buf: Buffer, i: number, d: number, selfClosing: boolean): StreamError | undefined {
    const count = this.capCount;
    if (!this.nsCheck) {
      if (count === 0) return undefined;
      if (count === 1 && !this.capHasRef && this.capNames[0] === 'xmlns') {
        const length = this.capRanges[1]! - this.capRanges[0]!;
        if (length !== XML_NS_BYTES && length !== XMLNS_NS_BYTES) return undefined;
      }
    }
    const declarations: NamespaceDeclaration[] = [];
    const ranges = this.capRanges;
    for (let j = 0; j < count; j++) {
      const name = this.capNames[j]!;
      const uri = decodeAttrValue(this.relSlice(buf, ranges[2 * j]!, ranges[2 * j + 1]!));
      declarations.push({ prefix: name === 'xmlns' ? undefined : name.slice('xmlns:'.length), uri });
    }
    const element = this.nameStack.toString('utf8', this.nameTop, this.tagNameEnd);
    const problem = this.scope.open(d, element, this.takeWideAttrs(), declarations, selfClosing);
    this.scopeDepth = this.scope.innermost;
    // RFC 6120 §4.9.3.13 not-well-formed: "XML that violates the well-formedness rules of [XML] or [XML-NAMES]".
    return problem === undefined ? undefined : notWellFormed(`${problem}, in the start tag ending at byte offset ${this.consumed + i}`);
  }

  /** The attribute names of the tag that needed the namespace check; the list starts afresh. */
  private takeWideAttrs(): string[] {
    const taken = this.wideAttrs;
    if (taken.length !== 0) this.wideAttrs = [];
    return taken;
  }

  /** Decodes a top-level element name, from a small cache when seen before. */
  private topName(s: number, e: number): NameEntry {
    const stack = this.nameStack;
    const len = e - s;
    const cache = this.nameCache;
    for (let j = 0; j < cache.length; j++) {
      const c = cache[j]!;
      const cb = c.bytes;
      if (cb.length !== len) continue;
      let k = 0;
      while (k < len && cb.charCodeAt(k) === stack[s + k]) k++;
      if (k === len) return c;
    }
    const name = stack.toString('utf8', s, e);
    const colon = name.indexOf(':');
    const entry: NameEntry = {
      bytes: stack.toString('latin1', s, e),
      name,
      prefix: colon < 0 ? undefined : name.slice(0, colon),
      localName: colon < 0 ? name : name.slice(colon + 1),
    };
    if (cache.length >= NAME_CACHE_SIZE) cache.pop();
    cache.unshift(entry);
    return entry;
  }

  /** A top-level element ended just before buf[e]. */
  private elementEnd(buf: Buffer, e: number): S {
    const bytes = this.thingBytes(buf, e);
    this.endThing();
    this.state = this.afterTop;
    this.handlers.onElement({ bytes, name: this.elName, localName: this.elLocal, ns: this.elNs });
    return this.state;
  }

  /** The stream close tag ended (RFC 6120 §4.4). */
  private streamEnd(): S {
    this.endThing();
    this.state = S.Closed;
    this.handlers.onStreamClose();
    return this.state;
  }

  /** Prepares the scanner for scanFragment: an implicit, namespace-less stream around one element. */
  [kResetForFragment](limits: ScannerLimits): void {
    this.setLimits(limits);
    this.fragment = true;
    this.afterTop = S.FragEnd;
    this.state = S.FragStart;
    this.consumed = 0;
    this.u8Need = 0;
    this.held = undefined;
    this.inThing = false;
    this.pendingLen = 0;
    this.nameStarts[0] = 0;
    this.nameTop = 0;
    this.depth = 1;
    this.defaultNs = undefined;
    this.scope.reset(XML_ONLY);
    this.scopeDepth = 0;
    // Nothing of a message that failed mid-tag reaches the next one (another user's).
    this.capturing = false;
    this.capCount = 0;
    this.nsCheck = false;
    this.attrWide = false;
    this.wideAttrs = [];
  }

  /** scanFragment: true when the message ended inside a UTF-8 sequence. */
  [kUtf8Incomplete](): boolean {
    return this.u8Need !== 0 || this.held !== undefined;
  }
}

function checkLimits(limits: ScannerLimits): void {
  if (!Number.isSafeInteger(limits.maxStanzaBytes) || limits.maxStanzaBytes < 1) {
    throw new RangeError(`maxStanzaBytes must be a positive integer, got ${limits.maxStanzaBytes}`);
  }
  if (!Number.isSafeInteger(limits.maxDepth) || limits.maxDepth < 1) {
    throw new RangeError(`maxDepth must be a positive integer, got ${limits.maxDepth}`);
  }
}

// scanFragment reuses one scanner: it runs no foreign code, so it is never re-entered.
let fragmentElement: ScannedElement | undefined;
let fragmentError: StreamError | undefined;
let fragmentScanner: StreamScanner | undefined;
const FRAGMENT_HANDLERS: ScannerHandlers = {
  onStreamOpen() {},
  onElement(element) {
    fragmentElement = element;
  },
  onStreamClose() {},
  onError(error) {
    fragmentError = error;
  },
};

/** WebSocket (RFC 7395 §3.3.3) framing: each message is exactly one complete element (leading/trailing whitespace not allowed except none). Returns it with ns resolved from its own declarations only; throws StreamError on anything else (two elements, text, partial element, restricted XML, bad UTF-8, over limits). */
export function scanFragment(message: Buffer, limits: ScannerLimits): ScannedElement {
  const scanner = (fragmentScanner ??= new StreamScanner(FRAGMENT_HANDLERS, limits));
  scanner[kResetForFragment](limits);
  fragmentElement = undefined;
  fragmentError = undefined;
  let utf8Incomplete: boolean;
  try {
    scanner.write(message);
    utf8Incomplete = scanner[kUtf8Incomplete]();
  } finally {
    // Drop references to the message.
    scanner[kResetForFragment](limits);
  }
  const error = fragmentError;
  const element = fragmentElement;
  fragmentError = undefined;
  fragmentElement = undefined;
  if (error !== undefined) throw error;
  if (element === undefined) {
    throw notWellFormed(
      message.length === 0 ? 'empty WebSocket message (RFC 7395 §3.3.3)' : 'incomplete element in a WebSocket message (RFC 7395 §3.3.3)',
    );
  }
  if (utf8Incomplete) throw unsupportedEncoding('WebSocket message ends inside a UTF-8 sequence (RFC 6120 §11.6)');
  return element;
}
