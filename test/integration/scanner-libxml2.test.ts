import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StreamScanner } from '../../src/xml/stream-scanner.js';
import { seededRandom } from '../support/seeded-random.js';

// The scanner against a parser nobody here wrote: libxml2 (Debian's xmllint), on generated streams
// full of names and namespace declarations, right and wrong. What the scanner forwards must be what
// a strict client parser accepts (RFC 6120 §11.3: namespace-well-formed XML 1.0), and it must not
// refuse what such a parser accepts. Each stream is a whole document: the stream header, elements,
// the stream close; nothing the scanner refuses for restricted XML (RFC 6120 §11.1) is generated.

const execFileAsync = promisify(execFile);
const HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
const CLOSE = '</stream:stream>';
const XML_NS = 'http://www.w3.org/XML/1998/namespace';
const XMLNS_NS = 'http://www.w3.org/2000/xmlns/';
const CASES = 3000;
/** Files per xmllint run: one process for many documents keeps the test short. */
const BATCH = 500;

// Mostly good names and declarations, with the mistakes a fuzzer finds: unbound prefixes, undeclared
// prefixes, reserved prefixes and namespaces, two colons, characters above ASCII in and out of the
// XML 1.0 name ranges (U+00A0, U+00D7, U+037E, U+F0000 are outside; U+00B7, U+0300 only after the
// first character).
const GOOD_ELEMENT_NAMES = ['message', 'iq', 'body', 'x', 'p:a', 'q:b', 'r:c', 'xml:e', 'é', 'b\u00b7', 'd\u0300', '\u{10000}'];
const BAD_ELEMENT_NAMES = ['xmlns:f', 'a:b:c', 'p:1', ':g', 'h:', 'a\u00a0', '\u00b7c', '\u0300d', 'e\u{f0000}', 'f\u037e', 'g\u00d7'];
const GOOD_ATTRIBUTE_NAMES = ['id', 'type', 'p:a', 'q:a', 'r:a', 'xml:lang', 'p:id', 'é', 'z\u0300'];
const BAD_ATTRIBUTE_NAMES = ['x:y', 'a:b:c', 'a\u00a0', 'xmlns:', ':k'];
const GOOD_NAMESPACES = ['urn:p', 'urn:q', 'urn:p', 'http://jabber.org/protocol/chatstates'];
const BAD_NAMESPACES = ['', XML_NS, XMLNS_NS];
const GOOD_PREFIXES = ['p', 'q', 'r'];
const BAD_PREFIXES = ['xml', 'xmlns'];

/** One of `good`, or now and then one of `bad` (which may still be right in context: `xml` bound to its own namespace). */
function pick<T>(rnd: () => number, good: readonly T[], bad: readonly T[] = []): T {
  const items = bad.length > 0 && rnd() < 0.06 ? bad : good;
  return items[Math.floor(rnd() * items.length)]!;
}

function element(rnd: () => number, depth: number): string {
  const name = pick(rnd, GOOD_ELEMENT_NAMES, BAD_ELEMENT_NAMES);
  const attributes: string[] = [];
  for (let k = Math.floor(rnd() * 4); k > 0; k--) {
    const roll = rnd();
    if (roll < 0.4) attributes.push(`xmlns:${pick(rnd, GOOD_PREFIXES, BAD_PREFIXES)}='${pick(rnd, GOOD_NAMESPACES, BAD_NAMESPACES)}'`);
    else if (roll < 0.5) attributes.push(`xmlns='${pick(rnd, GOOD_NAMESPACES, BAD_NAMESPACES)}'`);
    else attributes.push(`${pick(rnd, GOOD_ATTRIBUTE_NAMES, BAD_ATTRIBUTE_NAMES)}='v'`);
  }
  const start = [name, ...attributes].join(' ');
  if (depth >= 3 || rnd() < 0.3) return `<${start}/>`;
  let content = '';
  for (let k = Math.floor(rnd() * 3); k > 0; k--) content += rnd() < 0.2 ? 'text' : element(rnd, depth + 1);
  return `<${start}>${content}</${name}>`;
}

function stream(rnd: () => number): string {
  let body = '';
  for (let k = 1 + Math.floor(rnd() * 2); k > 0; k--) body += element(rnd, 1);
  return HEADER + body + CLOSE;
}

/** The scanner's verdict: the first error's message, or undefined when it accepted the whole stream. */
function scannerVerdict(input: string): string | undefined {
  let error: string | undefined;
  const scanner = new StreamScanner(
    {
      onStreamOpen() {},
      onElement() {},
      onStreamClose() {},
      onError(e) {
        error = e.message;
      },
    },
    { maxStanzaBytes: 64 * 1024, maxDepth: 16 },
  );
  scanner.write(Buffer.from(input, 'utf8'));
  return error;
}

/**
 * libxml2's verdicts, one per file: its first error line (a well-formedness error or a namespace
 * error), or undefined. Warnings (a relative namespace URI, for one) are not errors. xmllint exits 0
 * after namespace errors, so its messages on stderr are what tells.
 */
async function libxml2Verdicts(files: readonly string[]): Promise<(string | undefined)[]> {
  const { stderr } = await execFileAsync('xmllint', ['--noout', '--nonet', ...files], { maxBuffer: 64 * 1024 * 1024 }).catch(
    (err: { stderr?: string; code?: number }) => {
      // Exit 1: a well-formedness error in some file; anything else is xmllint failing.
      if (err.code !== 1 || err.stderr === undefined) throw err;
      return { stderr: err.stderr };
    },
  );
  const firstError = new Map<string, string>();
  for (const line of stderr.split('\n')) {
    const match = /^(.+?):\d+: (?:parser|namespace) error : (.*)$/.exec(line);
    if (match !== null && !firstError.has(match[1]!)) firstError.set(match[1]!, match[2]!);
  }
  return files.map((file) => firstError.get(file));
}

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'scanner-libxml2-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('StreamScanner and libxml2 agree on names and namespaces', () => {
  it(`accepts and refuses the same ${CASES} generated streams`, async () => {
    const rnd = seededRandom(0x1b2a);
    const inputs = Array.from({ length: CASES }, () => stream(rnd));
    const disagreements: { input: string; scanner: string | undefined; libxml2: string | undefined }[] = [];
    let refused = 0;
    for (let from = 0; from < inputs.length; from += BATCH) {
      const batch = inputs.slice(from, from + BATCH);
      const files = batch.map((_, k) => join(dir, `case-${from + k}.xml`));
      await Promise.all(batch.map((input, k) => writeFile(files[k]!, input, 'utf8')));
      const verdicts = await libxml2Verdicts(files);
      batch.forEach((input, k) => {
        const scanner = scannerVerdict(input);
        const libxml2 = verdicts[k];
        if (libxml2 !== undefined) refused++;
        if ((scanner === undefined) !== (libxml2 === undefined)) disagreements.push({ input, scanner, libxml2 });
      });
    }
    expect(disagreements.slice(0, 10)).toEqual([]);
    // The generator exercises both sides: a good share of streams on each.
    expect(refused).toBeGreaterThan(CASES / 5);
    expect(refused).toBeLessThan((CASES * 4) / 5);
  }, 120_000);
});
