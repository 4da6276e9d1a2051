import { escapeXml } from './escape.js';
import { NS } from './namespaces.js';
import type { ScannedElement, StreamHeader } from './stream-scanner.js';

/**
 * Namespace declarations spliced into a relayed element's start tag, so that the element no longer
 * depends on declarations in scope on the stream it came from (Namespaces in XML 1.0 §6.1: a
 * declaration is in scope for the element that carries it and its content).
 *
 * Elements are relayed as their original bytes; the proxy never re-serialises them. When an element
 * leaves the stream whose header declared a namespace it relies on, the declaration is added right
 * after the element name, and nothing else is touched.
 */
export interface Declaration {
  /** The attribute as written: `xmlns` or `xmlns:prefix`. */
  readonly attr: string;
  /** The prefix it binds (`undefined` for the default namespace). */
  readonly prefix: string | undefined;
  /** ` attr='uri'`, ready to splice. */
  readonly bytes: Buffer;
}

export function declaration(prefix: string | undefined, uri: string): Declaration {
  const attr = prefix === undefined ? 'xmlns' : `xmlns:${prefix}`;
  return { attr, prefix, bytes: Buffer.from(` ${attr}='${escapeXml(uri)}'`, 'utf8') };
}

const LT = 0x3c;
const GT = 0x3e;
const SLASH = 0x2f;
const EQUALS = 0x3d;
const COLON = 0x3a;
const APOS = 0x27;
const QUOT = 0x22;

function isXmlSpace(b: number | undefined): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

/** Where an element's name ends in its bytes, and its prefix; `undefined` when they do not start with a start tag. */
export function startTagName(bytes: Buffer): { readonly nameEnd: number; readonly prefix: string | undefined } | undefined {
  if (bytes[0] !== LT) return undefined;
  const length = bytes.length;
  let i = 1;
  let colonAt = -1;
  while (i < length) {
    const b = bytes[i];
    if (b === GT || b === SLASH || isXmlSpace(b)) break;
    if (b === COLON && colonAt < 0) colonAt = i;
    i++;
  }
  if (i === 1) return undefined;
  return { nameEnd: i, prefix: colonAt < 0 ? undefined : bytes.toString('utf8', 1, colonAt) };
}

/**
 * Adds each of `wanted` that the element's own start tag does not declare already (declaring an
 * attribute twice is not well-formed, XML 1.0 §3.1 "Unique Att Spec"). The attribute walk honours
 * quotes, so `>` inside a value is fine (XML 1.0 §2.3 AttValue). Returns the bytes unchanged when
 * nothing is missing, or when they do not start with a start tag this walk understands (the
 * scanner has checked them; only a proxy-made string could).
 */
export function declareOnStartTag(bytes: Buffer, wanted: readonly Declaration[]): Buffer {
  const name = startTagName(bytes);
  if (name === undefined || wanted.length === 0) return bytes;
  const length = bytes.length;
  let missing = wanted;
  let i = name.nameEnd;
  while (i < length && missing.length > 0) {
    while (isXmlSpace(bytes[i])) i++;
    const b = bytes[i];
    if (b === undefined || b === GT || b === SLASH) break;
    const attrStart = i;
    while (i < length && bytes[i] !== EQUALS && !isXmlSpace(bytes[i])) i++;
    const attrEnd = i;
    while (isXmlSpace(bytes[i])) i++;
    if (bytes[i] !== EQUALS) return bytes;
    i++;
    while (isXmlSpace(bytes[i])) i++;
    const quote = bytes[i];
    if (quote !== APOS && quote !== QUOT) return bytes;
    const close = bytes.indexOf(quote, i + 1);
    if (close < 0) return bytes;
    if (bytes[attrStart] === 0x78 /* x */ && attrEnd - attrStart >= 5) {
      const attr = bytes.toString('latin1', attrStart, attrEnd);
      missing = missing.filter((d) => d.attr !== attr);
    }
    i = close + 1;
  }
  if (missing.length === 0) return bytes;
  const added = missing.length === 1 ? missing[0]!.bytes : Buffer.concat(missing.map((d) => d.bytes));
  return Buffer.concat([bytes.subarray(0, name.nameEnd), added, bytes.subarray(name.nameEnd)], length + added.length);
}

/**
 * The namespace prefixes a stream header declares for the elements in it, beyond the two that
 * every XMPP peer declares on its own header: the default content namespace and `stream`
 * (RFC 6120 §4.8). jabberd2 2.7, for one, declares
 * `xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'` on its header and then sends
 * `<ack:ack/>` inside its features.
 *
 * Elements framed on that stream are relayed to a peer that never saw that header (the proxy writes
 * its own header to the client, and a replayed stanza may leave on another connection, even another
 * transport), so an element that uses such a prefix gets the declaration on its own start tag: it is
 * rewritten this way once, as it leaves the scanner, and every later reader (features rewriting,
 * the unacked queue, replay, WebSocket framing) sees a self-contained element.
 */
export class InheritedNamespaces {
  private constructor(
    private readonly declarations: readonly Declaration[],
    /** `prefix:` for each declaration, to find the elements that may use it. */
    private readonly markers: readonly Buffer[],
  ) {}

  /** `undefined` when the header declares nothing beyond the default namespace and `stream`: the common case costs nothing. */
  static of(header: StreamHeader): InheritedNamespaces | undefined {
    const declarations: Declaration[] = [];
    for (const [attr, uri] of Object.entries(header.attrs)) {
      if (!attr.startsWith('xmlns:')) continue;
      const prefix = attr.slice('xmlns:'.length);
      // Namespaces in XML 1.0 §3 [NSC: No Prefix Undeclaring]: `xmlns:p=''` binds nothing.
      if ((prefix === 'stream' && uri === NS.stream) || uri === '') continue;
      declarations.push(declaration(prefix, uri));
    }
    if (declarations.length === 0) return undefined;
    return new InheritedNamespaces(
      declarations,
      declarations.map((d) => Buffer.from(`${d.prefix}:`, 'utf8')),
    );
  }

  /**
   * The element, self-contained. An element whose bytes never mention `prefix:` is returned as it
   * is (a mention in text only adds a harmless declaration).
   */
  applyTo(element: ScannedElement): ScannedElement {
    let used: Declaration[] | undefined;
    for (let i = 0; i < this.declarations.length; i++) {
      if (element.bytes.includes(this.markers[i]!)) (used ??= []).push(this.declarations[i]!);
    }
    if (used === undefined) return element;
    const bytes = declareOnStartTag(element.bytes, used);
    return bytes === element.bytes ? element : { ...element, bytes };
  }
}
