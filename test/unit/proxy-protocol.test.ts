import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil } from '../support/wait.js';
import { buildHeader, buildLocalHeader, examineHeader, readHeader, tryBuildHeader } from '../../src/transport/proxy-protocol.js';

// HAProxy's proxy-protocol.txt, versions 1 (§2.1) and 2 (§2.2). The v2 headers here are written
// out byte by byte from the specification, not with the code under test.

const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/** A v2 header: version 2 with `command` (0 LOCAL, 1 PROXY), `family` byte, and the address block. */
function v2(command: number, family: number, block: number[]): Buffer {
  return Buffer.from([...V2_SIGNATURE, 0x20 | command, family, block.length >> 8, block.length & 0xff, ...block]);
}

const port = (n: number): number[] => [n >> 8, n & 0xff];
/** TCP over IPv4 (0x11): 192.0.2.7:40001 → 198.51.100.1:5223. */
const V2_TCP4 = v2(1, 0x11, [192, 0, 2, 7, 198, 51, 100, 1, ...port(40001), ...port(5223)]);
/** TCP over IPv6 (0x21): 2001:db8::7 port 40002 → 2001:db8::1 port 5222. */
const V2_TCP6 = v2(1, 0x21, [
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
  ...port(40002),
  ...port(5222),
]);

describe('examineHeader', () => {
  it.each([
    ['v1 TCP4', Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n'), { address: '192.0.2.7', port: 40001 }],
    ['v1 TCP6', Buffer.from('PROXY TCP6 2001:db8::7 2001:db8::1 40002 5222\r\n'), { address: '2001:db8::7', port: 40002 }],
    ['v2 TCP4', V2_TCP4, { address: '192.0.2.7', port: 40001 }],
    ['v2 TCP6', V2_TCP6, { address: '2001:db8::7', port: 40002 }],
  ])('names the client of a trusted source: %s, and consumes exactly the header', (_name, header, client) => {
    const next = Buffer.from([0x16, 0x03, 0x01]);
    expect(examineHeader(Buffer.concat([header, next]), true)).toEqual({ kind: 'proxied', client, consumed: header.length });
  });

  it('takes a health check (v2 LOCAL, v1 UNKNOWN) as the balancer itself', () => {
    expect(examineHeader(v2(0, 0x00, []), true)).toEqual({ kind: 'local', consumed: 16 });
    expect(examineHeader(Buffer.from('PROXY UNKNOWN\r\n<?xml'), true)).toEqual({ kind: 'local', consumed: 15 });
    expect(examineHeader(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n'), true)).toMatchObject({ kind: 'local' });
  });

  it('waits for more bytes whatever the cut, and decides the same once they came', () => {
    for (const header of [Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n'), V2_TCP4]) {
      for (let cut = 1; cut < header.length; cut++) {
        expect(examineHeader(header.subarray(0, cut), true), `cut at ${cut}`).toEqual({ kind: 'incomplete' });
      }
    }
    // An untrusted source's first bytes could still turn into a header: wait until they cannot.
    expect(examineHeader(Buffer.from('PROX'), false)).toEqual({ kind: 'incomplete' });
    expect(examineHeader(Buffer.from([0x0d, 0x0a]), false)).toEqual({ kind: 'incomplete' });
  });

  it('refuses a trusted source without a valid header', () => {
    const refused = (bytes: Buffer | string) => examineHeader(Buffer.from(bytes), true).kind;
    expect(refused('<?xml version="1.0"?>')).toBe('refused');
    expect(refused(Buffer.from([0x16, 0x03, 0x01, 0x00]))).toBe('refused');
    expect(refused('PROXY TCP4 192.0.2.7 198.51.100.1 40001\r\n')).toBe('refused');
    expect(refused('PROXY TCP4 2001:db8::7 198.51.100.1 40001 5223\r\n')).toBe('refused');
    expect(refused('PROXY TCP4 192.0.2.7 198.51.100.1 70000 5223\r\n')).toBe('refused');
    expect(refused(`PROXY TCP4 ${'1'.repeat(120)}`)).toBe('refused');
    // §2.1 has no IPv6 zone; Node's isIPv6 takes one, ipaddr.js does not: refused, never thrown.
    expect(refused('PROXY TCP6 fe80::1%a.b 2001:db8::1 40002 5222\r\n')).toBe('refused');
    expect(refused(Buffer.from([...V2_SIGNATURE, 0x20, 0x11, 0x10, 0x00]))).toBe('refused');
    expect(refused(Buffer.from([...V2_SIGNATURE, 0x31, 0x11, 0x00, 0x00]))).toBe('refused');
  });

  it('lets an untrusted source through without a header and refuses it with one', () => {
    expect(examineHeader(Buffer.from('<?xml'), false)).toEqual({ kind: 'direct' });
    expect(examineHeader(Buffer.from([0x16, 0x03, 0x01]), false)).toEqual({ kind: 'direct' });
    expect(examineHeader(Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n'), false).kind).toBe('refused');
    expect(examineHeader(V2_TCP4, false).kind).toBe('refused');
  });
});

describe('buildHeader and buildLocalHeader', () => {
  it('write what the specification says', () => {
    const client = { address: '192.0.2.7', port: 40001 };
    const listener = { address: '198.51.100.1', port: 5223 };
    expect(buildHeader('v1', client, listener).toString('latin1')).toBe('PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n');
    expect(buildHeader('v2', client, listener)).toEqual(V2_TCP4);
    expect(buildHeader('v1', { address: '2001:db8::7', port: 40002 }, { address: '2001:db8::1', port: 5222 }).toString('latin1')).toBe(
      'PROXY TCP6 2001:db8::7 2001:db8::1 40002 5222\r\n',
    );
    expect(buildHeader('v2', { address: '2001:db8::7', port: 40002 }, { address: '2001:db8::1', port: 5222 })).toEqual(V2_TCP6);
    // v2 LOCAL keeps an address block (ejabberd reads an empty one wrongly); v1 spells the addresses out.
    expect(buildLocalHeader('v2', client, listener)).toEqual(
      Buffer.concat([V2_TCP4.subarray(0, 12), Buffer.from([0x20]), V2_TCP4.subarray(13)]),
    );
    expect(buildLocalHeader('v1', client, listener).toString('latin1')).toBe('PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n');
  });

  it('builds no header for an end that is not an IP address (tryBuildHeader), instead of throwing', () => {
    const listener = { address: '198.51.100.1', port: 5223 };
    expect(tryBuildHeader('v2', { address: '?', port: 0 }, listener, 'proxy')).toBeUndefined();
    expect(
      tryBuildHeader('v1', { address: 'fe80::1%eth0.100', port: 1 }, { address: 'fe80::2', port: 5222 }, 'proxy')?.toString('latin1'),
    ).toBe('PROXY TCP6 fe80::1 fe80::2 1 5222\r\n');
    expect(tryBuildHeader('v1', { address: '192.0.2.7', port: 40001 }, listener, 'proxy')?.toString('latin1')).toBe(
      'PROXY TCP4 192.0.2.7 198.51.100.1 40001 5223\r\n',
    );
  });

  it('sends an IPv4 client to an IPv6 listener as IPv4-mapped IPv6, which reads back as the IPv4 client', () => {
    const header = buildHeader('v2', { address: '192.0.2.7', port: 40001 }, { address: '2001:db8::1', port: 5222 });
    expect(examineHeader(header, true)).toEqual({
      kind: 'proxied',
      client: { address: '192.0.2.7', port: 40001 },
      consumed: header.length,
    });
    const line = buildHeader('v1', { address: '192.0.2.7', port: 40001 }, { address: '2001:db8::1', port: 5222 });
    expect(line.toString('latin1')).toBe('PROXY TCP6 ::ffff:c000:207 2001:db8::1 40001 5222\r\n');
    expect(examineHeader(line, true)).toMatchObject({ kind: 'proxied', client: { address: '192.0.2.7' } });
  });
});

describe('readHeader on a socket', () => {
  let server: Server | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
    server = undefined;
  });

  /** Connects to a local server; returns the server's end of the connection and the client's. */
  async function pair(): Promise<{ accepted: Socket; client: Socket }> {
    const accepted = new Promise<Socket>((resolve) => {
      server = createServer((socket) => {
        sockets.push(socket);
        resolve(socket);
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const client = connect((server!.address() as { port: number }).port, '127.0.0.1');
    sockets.push(client);
    client.setNoDelay(true);
    return { accepted: await accepted, client };
  }

  it('reads a header written a byte at a time, and leaves what followed it to be read', async () => {
    const { accepted, client } = await pair();
    const reading = readHeader(accepted, true, 5000);
    const bytes = Buffer.concat([V2_TCP4, Buffer.from('<?xml')]);
    for (const byte of bytes.subarray(0, V2_TCP4.length + 2)) {
      client.write(Buffer.from([byte]));
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    client.write(bytes.subarray(V2_TCP4.length + 2));
    expect(await reading).toEqual({ kind: 'proxied', client: { address: '192.0.2.7', port: 40001 } });
    let rest = '';
    accepted.on('data', (chunk: Buffer) => (rest += chunk.toString()));
    await waitUntil(() => rest.length >= 5, 'the bytes after the header');
    expect(rest).toBe('<?xml');
  });

  it('gives an untrusted client its first bytes back untouched', async () => {
    const { accepted, client } = await pair();
    const reading = readHeader(accepted, false, 5000);
    client.write('<?xml version');
    expect(await reading).toEqual({ kind: 'direct' });
    expect((await new Promise<Buffer>((resolve) => accepted.once('data', resolve))).toString()).toBe('<?xml version');
  });

  it('refuses a source that says nothing in time; tells apart one that closes first (a health check)', async () => {
    const silent = await pair();
    expect(await readHeader(silent.accepted, true, 50)).toMatchObject({ kind: 'refused' });
    const closing = await pair();
    const reading = readHeader(closing.accepted, true, 5000);
    closing.client.end('PROXY TCP4');
    expect(await reading).toEqual({ kind: 'closed' });
  });
});
