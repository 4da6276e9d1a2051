import { qualifiedNameProblem } from './qualified-name.js';

/** Namespaces in XML 1.0 §3: the `xml` prefix is bound to this by definition. */
export const XML_NS = 'http://www.w3.org/XML/1998/namespace';
/** Namespaces in XML 1.0 §3: the `xmlns` prefix is bound to this by definition. */
const XMLNS_NS = 'http://www.w3.org/2000/xmlns/';

/** One `xmlns` (prefix `undefined`) or `xmlns:prefix` attribute of a start tag, its value decoded. */
export interface NamespaceDeclaration {
  readonly prefix: string | undefined;
  readonly uri: string;
}

/**
 * Why a start tag's own namespace declarations are not allowed, or `undefined`: Namespaces in XML
 * 1.0 §3, "Reserved Prefixes and Namespace Names", and [NSC: No Prefix Undeclaring].
 */
function declarationProblem(declarations: readonly NamespaceDeclaration[]): string | undefined {
  for (const { prefix, uri } of declarations) {
    const attr = prefix === undefined ? 'xmlns' : `xmlns:${prefix}`;
    const nameProblem = prefix === undefined ? undefined : qualifiedNameProblem(attr);
    if (nameProblem !== undefined) return nameProblem;
    if (prefix === 'xmlns') return `${attr} declares the reserved prefix 'xmlns' (Namespaces in XML 1.0 §3)`;
    if (prefix === 'xml') {
      if (uri !== XML_NS) return `${attr} binds the prefix 'xml' to '${uri}', not to ${XML_NS} (Namespaces in XML 1.0 §3)`;
      continue;
    }
    if (uri === XML_NS || uri === XMLNS_NS) return `${attr} binds the reserved namespace '${uri}' (Namespaces in XML 1.0 §3)`;
    if (prefix !== undefined && uri === '') return `${attr}='' undeclares a prefix (Namespaces in XML 1.0 §5, No Prefix Undeclaring)`;
  }
  return undefined;
}

/** The prefix of a qualified name, or `undefined`. */
function prefixOf(qname: string): string | undefined {
  const colon = qname.indexOf(':');
  return colon < 0 ? undefined : qname.slice(0, colon);
}

/**
 * The namespace prefixes in scope inside one top-level element, beyond those of the stream header:
 * a stack of the prefixes each open element declares (Namespaces in XML 1.0 §6.1: a declaration is
 * in scope for its element and that element's content). Only elements that declare a prefix push
 * a frame, so an element without `xmlns:` attributes costs nothing here.
 */
export class NamespaceScope {
  private base: ReadonlyMap<string, string>;
  /** Frames, innermost last: the depth of the element that declared them, and what it declared. */
  private readonly frames: { readonly depth: number; readonly prefixes: ReadonlyMap<string, string> }[] = [];

  constructor(base: ReadonlyMap<string, string>) {
    this.base = base;
  }

  /** A fresh stream (or fragment): `base` are the prefixes its header declares, `xml` among them. */
  reset(base: ReadonlyMap<string, string>): void {
    this.base = base;
    this.frames.length = 0;
  }

  /** The namespace bound to `prefix` where the element being opened stands, its own declarations first. */
  resolve(prefix: string, own?: ReadonlyMap<string, string>): string | undefined {
    const mine = own?.get(prefix);
    if (mine !== undefined) return mine;
    for (let j = this.frames.length - 1; j >= 0; j--) {
      const uri = this.frames[j]!.prefixes.get(prefix);
      if (uri !== undefined) return uri;
    }
    return this.base.get(prefix);
  }

  /**
   * A start tag at `depth` ended: why it is not namespace-well-formed, or `undefined`; when it is,
   * and it declares prefixes and has content, its prefixes are in scope until `close(depth)`.
   * `attributes` are the qualified names of the attributes that have a colon or a character above
   * ASCII, `xmlns:*` excluded (they are the `declarations`).
   */
  open(
    depth: number,
    element: string,
    attributes: readonly string[],
    declarations: readonly NamespaceDeclaration[],
    selfClosing: boolean,
  ): string | undefined {
    const nameProblem = qualifiedNameProblem(element) ?? firstDefined(attributes, qualifiedNameProblem);
    if (nameProblem !== undefined) return nameProblem;
    const declared = declarationProblem(declarations);
    if (declared !== undefined) return declared;
    let own: Map<string, string> | undefined;
    for (const { prefix, uri } of declarations) if (prefix !== undefined) (own ??= new Map()).set(prefix, uri);

    const elementPrefix = prefixOf(element);
    if (elementPrefix === 'xmlns') return `element <${element}> has the prefix 'xmlns' (Namespaces in XML 1.0 §3)`;
    if (elementPrefix !== undefined && this.resolve(elementPrefix, own) === undefined) {
      return `element <${element}> uses the undeclared prefix '${elementPrefix}' (Namespaces in XML 1.0 §5, Prefix Declared)`;
    }
    // [NSC: Prefix Declared] for attributes, then [NSC: Attributes Unique]: no two attributes with
    // the same local name and the same namespace.
    const expanded = new Set<string>();
    for (const attribute of attributes) {
      const prefix = prefixOf(attribute);
      if (prefix === undefined) continue;
      const uri = this.resolve(prefix, own);
      if (uri === undefined) {
        return `attribute '${attribute}' on <${element}> uses the undeclared prefix '${prefix}' (Namespaces in XML 1.0 §5, Prefix Declared)`;
      }
      const key = `{${uri}}${attribute.slice(prefix.length + 1)}`;
      if (expanded.has(key)) return `<${element}> has two attributes named ${key} (Namespaces in XML 1.0 §6.3, Attributes Unique)`;
      expanded.add(key);
    }
    if (own !== undefined && !selfClosing) this.frames.push({ depth, prefixes: own });
    return undefined;
  }

  /** Depth of the innermost element whose declarations are in scope, or 0 when none is. */
  get innermost(): number {
    const frames = this.frames;
    return frames.length === 0 ? 0 : frames[frames.length - 1]!.depth;
  }

  /** The element opened at `depth` ended: its declarations, and any deeper ones, go out of scope. */
  close(depth: number): void {
    const frames = this.frames;
    while (frames.length > 0 && frames[frames.length - 1]!.depth >= depth) frames.pop();
  }
}

function firstDefined<T>(items: readonly T[], problem: (item: T) => string | undefined): string | undefined {
  for (const item of items) {
    const found = problem(item);
    if (found !== undefined) return found;
  }
  return undefined;
}
