/**
 * Framing benchmark: StreamScanner against ltx's parser and sax strict, on a
 * deterministic, realistic XMPP stream cut into 1-16 KiB chunks. Prints figures; never asserts on time.
 *
 *   npx tsc -p . && node dist/test/bench/scanner-bench.js [megabytes]
 *
 * Each parser runs 5 timed passes after one warm-up pass; the table shows the median. The slower
 * parsers run on a prefix of the stream (column "input MB") so the whole run stays under a minute.
 */

import os from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import { pathToFileURL } from 'node:url';
import { Element, Parser as LtxParser } from 'ltx';
import sax from 'sax';
import { StreamScanner } from '../../src/xml/stream-scanner.js';
import { seededRandom } from '../support/seeded-random.js';

/** One row of the results table. */
export interface BenchRow {
  readonly parser: string;
  /** Bytes each timed pass scanned, in MB (10^6 bytes). */
  readonly inputMB: number;
  /** Depth-1 elements each pass reported. */
  readonly stanzas: number;
  /** Median of the timed passes. */
  readonly mbPerSecond: number;
  readonly stanzasPerSecond: number;
}

export interface BenchOptions {
  /** Size of the generated stream in bytes; default 100 MB. */
  readonly targetBytes?: number;
  /** Seed of the generator and of the chunk cutter; default 0x5eed. */
  readonly seed?: number;
  /** Timed passes per parser; default 5. */
  readonly passes?: number;
}

// ---------------------------------------------------------------------------------------------
// Deterministic generator.

const WORDS = (
  'the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not what ' +
  'all were we when your can said there use an each which she do how their if will up other about out many then them these so ' +
  'meeting tomorrow lunch sounds great thanks see later call me when free ok sure maybe running late train delayed ' +
  'café naïve Grüße über façade jalapeño smörgåsbord Привет мир こんにちは 日本語 中文 你好 שלום مرحبا ' +
  '😀 👍 🎉 ❤️ €5 £3 ±1 °C … — “quoted”'
).split(' ');
/** Body tokens that must be escaped in XML. */
const ESCAPED = ['&amp;', '&lt;', '&gt;', '&quot;', '&apos;', 'R&amp;D', 'a &lt; b', '&lt;3'];
const DOMAINS = ['example.com', 'jabber.example.org', 'chat.example.net', 'xmpp.example.io'];
const CLIENTS = ['https://conversations.im', 'https://gajim.org', 'http://psi-im.org', 'https://dino.im', 'https://monal-im.org'];
const SHOWS = ['away', 'chat', 'dnd', 'xa'];
const GROUPS = ['Friends', 'Family', 'Work', 'Kollegen', 'Ünïcode grüppe', 'Buddies & Co'];

function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)]!;
}

function token(rnd: () => number, length: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let k = 0; k < length; k++) s += alphabet[Math.floor(rnd() * alphabet.length)];
  return s;
}

function jid(rnd: () => number, withResource: boolean): string {
  const bare = `${token(rnd, 4 + Math.floor(rnd() * 8))}@${pick(rnd, DOMAINS)}`;
  return withResource ? `${bare}/${token(rnd, 6)}-${token(rnd, 4)}` : bare;
}

function text(rnd: () => number, bytes: number): string {
  const parts: string[] = [];
  let size = 0;
  while (size < bytes) {
    const word = rnd() < 0.05 ? pick(rnd, ESCAPED) : pick(rnd, WORDS);
    parts.push(word);
    size += Buffer.byteLength(word) + 1;
  }
  return parts.join(' ');
}

function message(rnd: () => number): string {
  // Body sizes spread over 40 B - 3.6 KiB, most of them short.
  const bodyBytes = Math.floor(40 * Math.pow(90, rnd() * rnd()));
  const receipt = rnd() < 0.5 ? "<request xmlns='urn:xmpp:receipts'/>" : '';
  return (
    `<message from='${jid(rnd, true)}' to='${jid(rnd, true)}' type='chat' id='${token(rnd, 12)}' xml:lang='en'>` +
    `<body>${text(rnd, bodyBytes)}</body>` +
    `<active xmlns='http://jabber.org/protocol/chatstates'/>${receipt}` +
    `<stanza-id xmlns='urn:xmpp:sid:0' id='${token(rnd, 16)}' by='${pick(rnd, DOMAINS)}'/>` +
    `</message>`
  );
}

function presence(rnd: () => number): string {
  const status = rnd() < 0.6 ? `<status>${text(rnd, Math.floor(rnd() * 120))}</status>` : '';
  return (
    `<presence from='${jid(rnd, true)}' to='${jid(rnd, false)}'>` +
    `<show>${pick(rnd, SHOWS)}</show>${status}<priority>${Math.floor(rnd() * 50)}</priority>` +
    `<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='${pick(rnd, CLIENTS)}' ver='${token(rnd, 27)}='/>` +
    `<x xmlns='vcard-temp:x:update'><photo>${token(rnd, 40)}</photo></x>` +
    `</presence>`
  );
}

function roster(rnd: () => number): string {
  const items: string[] = [];
  const count = 2 + Math.floor(rnd() * 26);
  for (let k = 0; k < count; k++) {
    const name = rnd() < 0.7 ? ` name="${text(rnd, 6 + Math.floor(rnd() * 14))}"` : '';
    const group = rnd() < 0.6 ? `<group>${pick(rnd, GROUPS).replace('&', '&amp;')}</group>` : '';
    items.push(`<item jid='${jid(rnd, false)}'${name} subscription='${pick(rnd, ['both', 'to', 'from'])}'>${group}</item>`);
  }
  return (
    `<iq type='result' id='${token(rnd, 10)}' to='${jid(rnd, true)}'>` +
    `<query xmlns='jabber:iq:roster' ver='${token(rnd, 8)}'>${items.join('')}</query></iq>`
  );
}

function pubsub(rnd: () => number): string {
  return (
    `<iq type='set' id='${token(rnd, 10)}' from='${jid(rnd, true)}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>` +
    `<publish node='urn:xmpp:avatar:metadata'><item id='${token(rnd, 40)}'><metadata xmlns='urn:xmpp:avatar:metadata'>` +
    `<info bytes='${Math.floor(rnd() * 40000)}' id='${token(rnd, 40)}' height='96' width='96' type='image/png'/>` +
    `</metadata></item></publish></pubsub></iq>`
  );
}

const STREAM_HEAD =
  "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' " +
  "from='example.com' id='bench-0001' version='1.0' xml:lang='en'>" +
  "<stream:features><sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>";

/**
 * A realistic server-to-client stream of about `targetBytes` bytes (header, features, then a mix of
 * chat messages, presences with caps, roster results and pubsub sets, with the odd SM nonza and
 * whitespace keepalive), the same for the same seed. No closing tag.
 */
export function generateXmppStream(targetBytes = 100_000_000, seed = 0x5eed): Buffer {
  const rnd = seededRandom(seed);
  const parts: Buffer[] = [Buffer.from(STREAM_HEAD)];
  let size = parts[0]!.length;
  let batch: string[] = [];
  let h = 0;
  while (size < targetBytes) {
    const r = rnd();
    let s: string;
    if (r < 0.5) s = message(rnd);
    else if (r < 0.78) s = presence(rnd);
    else if (r < 0.9) s = roster(rnd);
    else if (r < 0.97) s = pubsub(rnd);
    else if (r < 0.985) s = "<r xmlns='urn:xmpp:sm:3'/>";
    else if (r < 0.995) s = `<a xmlns='urn:xmpp:sm:3' h='${(h += 17)}'/>`;
    else s = ' ';
    batch.push(s);
    if (batch.length === 1000) {
      const b = Buffer.from(batch.join(''));
      parts.push(b);
      size += b.length;
      batch = [];
    }
  }
  if (batch.length > 0) parts.push(Buffer.from(batch.join('')));
  return Buffer.concat(parts);
}

/** Cuts `stream` into chunks of 1-16 KiB (subarrays, no copies), the same for the same seed. */
export function cutIntoChunks(stream: Buffer, seed = 0xc4a7, minBytes = 1024, maxBytes = 16 * 1024): Buffer[] {
  const rnd = seededRandom(seed);
  const chunks: Buffer[] = [];
  for (let at = 0; at < stream.length;) {
    const size = minBytes + Math.floor(rnd() * (maxBytes - minBytes + 1));
    chunks.push(stream.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// Contestants. Each scans the chunks and returns the number of depth-1 elements.

type Contestant = (chunks: readonly Buffer[]) => number;

const scanner: Contestant = (chunks) => {
  let stanzas = 0;
  let failure: Error | undefined;
  const s = new StreamScanner(
    {
      onStreamOpen() {},
      onElement() {
        stanzas++;
      },
      onStreamClose() {},
      onError(error) {
        failure = error;
      },
    },
    { maxStanzaBytes: 256 * 1024, maxDepth: 32 },
  );
  for (const chunk of chunks) s.write(chunk);
  if (failure !== undefined) throw failure;
  return stanzas;
};

/**
 * ltx's Parser building one ltx Element per stanza, as xmpp.js does, counting depth-1 'element'
 * events. Its Element option keeps the stream root from collecting every stanza (the stock Parser
 * builds one tree of the whole document, which a stream never finishes).
 */
const ltx: Contestant = (chunks) => {
  class StanzaElement extends Element {
    override cnode<T extends Element | string>(child: T): T {
      if (this.parent === null && typeof child === 'object') {
        // A child of the stream element: a stanza. Link it up but do not keep it.
        child.parent = this;
        return child;
      }
      return super.cnode(child);
    }
  }
  const parser = new LtxParser({ Element: StanzaElement });
  const events = (parser as unknown as { parser: NodeJS.EventEmitter }).parser;
  let depth = 0;
  let stanzas = 0;
  let failure: unknown;
  events.on('startElement', () => {
    depth++;
  });
  events.on('endElement', () => {
    if (--depth === 1) stanzas++; // the 'element' event of xmpp.js's parser
  });
  parser.on('error', (err: unknown) => {
    failure = err;
  });
  for (const chunk of chunks) parser.write(chunk);
  if (failure !== undefined) throw failure;
  return stanzas;
};

function saxContestant(xmlns: boolean): Contestant {
  return (chunks) => {
    const parser = sax.parser(true, xmlns ? { xmlns: true } : {});
    // sax takes strings; a StringDecoder keeps characters split between chunks intact.
    const decoder = new StringDecoder('utf8');
    let depth = 0;
    let stanzas = 0;
    parser.onopentag = () => {
      depth++;
    };
    parser.onclosetag = () => {
      if (--depth === 1) stanzas++;
    };
    parser.onerror = (err) => {
      throw err;
    };
    for (const chunk of chunks) parser.write(decoder.write(chunk));
    return stanzas;
  };
}

// ---------------------------------------------------------------------------------------------
// Runner.

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** The first chunks adding up to at least `bytes`. */
function prefix(chunks: readonly Buffer[], bytes: number): Buffer[] {
  const out: Buffer[] = [];
  let size = 0;
  for (const chunk of chunks) {
    if (size >= bytes) break;
    out.push(chunk);
    size += chunk.length;
  }
  return out;
}

function measure(name: string, run: Contestant, chunks: readonly Buffer[], passes: number): BenchRow {
  const bytes = chunks.reduce((sum, c) => sum + c.length, 0);
  run(prefix(chunks, Math.min(bytes, 5_000_000))); // warm-up
  const seconds: number[] = [];
  let stanzas = 0;
  for (let k = 0; k < passes; k++) {
    const start = process.hrtime.bigint();
    stanzas = run(chunks);
    seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  const t = median(seconds);
  return { parser: name, inputMB: bytes / 1e6, stanzas, mbPerSecond: bytes / 1e6 / t, stanzasPerSecond: stanzas / t };
}

/** Generates the stream and measures every contestant; resolves to one row each. */
export async function runScannerBench(options: BenchOptions = {}): Promise<BenchRow[]> {
  const targetBytes = options.targetBytes ?? 100_000_000;
  const passes = options.passes ?? 5;
  const chunks = cutIntoChunks(generateXmppStream(targetBytes, options.seed ?? 0x5eed));
  // The slow parsers get a quarter of the stream, to bound the run.
  const quarter = prefix(chunks, targetBytes / 4);
  const rows: BenchRow[] = [];
  rows.push(measure('StreamScanner (strict, UTF-8 checked, exact bytes)', scanner, chunks, passes));
  await new Promise((resolve) => setImmediate(resolve));
  rows.push(measure('ltx Parser (xmpp.js style, ltx Element per stanza)', ltx, chunks, passes));
  await new Promise((resolve) => setImmediate(resolve));
  rows.push(measure('sax strict', saxContestant(false), quarter, passes));
  await new Promise((resolve) => setImmediate(resolve));
  rows.push(measure('sax strict, xmlns: true', saxContestant(true), quarter, passes));
  return rows;
}

/** The rows as a Markdown table with the machine it ran on. */
export function formatBenchTable(rows: readonly BenchRow[]): string {
  const lines = [
    `Node ${process.version}, ${os.cpus()[0]?.model ?? 'unknown CPU'} (${os.cpus().length} cores); chunks of 1-16 KiB; median of 5`,
    '',
    '| parser | input MB | stanzas | MB/s | stanzas/s |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.parser} | ${r.inputMB.toFixed(1)} | ${r.stanzas} | ${r.mbPerSecond.toFixed(1)} | ${Math.round(r.stanzasPerSecond).toLocaleString('en-US')} |`,
    ),
  ];
  return lines.join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const mb = Number(process.argv[2] ?? 100);
  const rows = await runScannerBench({ targetBytes: mb * 1e6 });
  console.log(formatBenchTable(rows));
}
