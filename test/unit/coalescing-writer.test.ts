import type { Socket } from 'node:net';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CoalescingWriter } from '../../src/transport/coalescing-writer.js';

/** A socket stand-in that records each buffer handed to it by `write()` and what reaches the wire. */
function recordingSocket(highWaterMark = 16 * 1024): { socket: Socket; writes: Buffer[]; wire: () => string } {
  const writes: Buffer[] = [];
  const received: Buffer[] = [];
  const sink = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      received.push(chunk);
      setImmediate(callback);
    },
    writev(chunks, callback) {
      for (const { chunk } of chunks) received.push(chunk as Buffer);
      setImmediate(callback);
    },
  });
  const write = sink.write.bind(sink) as (chunk: Buffer | string) => boolean;
  (sink as unknown as { write: (chunk: Buffer | string) => boolean }).write = (chunk) => {
    writes.push(Buffer.from(chunk));
    return write(chunk);
  };
  return { socket: sink as unknown as Socket, writes, wire: () => Buffer.concat(received).toString() };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('CoalescingWriter', () => {
  it('joins elements that lie back to back in one read into one write of the original bytes', async () => {
    const { socket, writes, wire } = recordingSocket();
    const writer = new CoalescingWriter(socket);
    const chunk = Buffer.from("<message id='1'/><message id='2'/><message id='3'/>");
    writer.write(chunk.subarray(0, 17));
    writer.write(chunk.subarray(17, 34));
    writer.write(chunk.subarray(34));
    await tick();
    expect(writes.map(String)).toEqual([chunk.toString()]);
    expect(wire()).toBe(chunk.toString());
  });

  it('keeps the order when an element in between is left out, replaced or is a string', async () => {
    const { socket, writes, wire } = recordingSocket();
    const writer = new CoalescingWriter(socket);
    const chunk = Buffer.from("<message id='1'/><r xmlns='urn:xmpp:sm:3'/><message id='2'/><message id='3'/>");
    writer.write(chunk.subarray(0, 17)); // message 1
    writer.write(chunk.subarray(43, 60)); // message 2: the <r/> before it stays behind
    writer.write("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    writer.write(Buffer.from("<message id='x'/>")); // a copy made elsewhere
    writer.write(chunk.subarray(60)); // message 3
    await tick();
    expect(writes.map(String)).toEqual([
      "<message id='1'/>",
      "<message id='2'/>",
      "<a xmlns='urn:xmpp:sm:3' h='1'/>",
      "<message id='x'/>",
      "<message id='3'/>",
    ]);
    expect(wire()).toBe("<message id='1'/><message id='2'/><a xmlns='urn:xmpp:sm:3' h='1'/><message id='x'/><message id='3'/>");
  });

  it('says false once the socket buffer and the run reach the high-water mark, and the socket drains', async () => {
    const { socket, writes } = recordingSocket(64);
    const writer = new CoalescingWriter(socket);
    const chunk = Buffer.alloc(100, 0x61);
    expect(writer.write(chunk.subarray(0, 40))).toBe(true);
    expect(writes).toHaveLength(0);
    expect(writer.write(chunk.subarray(40, 80))).toBe(false); // 80 bytes ≥ 64: handed over now
    expect(writes.map((b) => b.length)).toEqual([80]);
    await new Promise<void>((resolve) => socket.once('drain', resolve));
    expect(writer.write(chunk.subarray(80))).toBe(true);
  });

  it('end() hands over the pending run before the socket ends, and nothing is written after', async () => {
    const { socket, writes, wire } = recordingSocket();
    const writer = new CoalescingWriter(socket);
    writer.write(Buffer.from('<presence/>'));
    writer.end();
    writer.write(Buffer.from('<message/>'));
    writer.write('</stream:stream>');
    await tick();
    expect(writes.map(String)).toEqual(['<presence/>']);
    expect(wire()).toBe('<presence/>');
    expect(socket.writableEnded).toBe(true);
  });

  it('writes nothing to a destroyed socket', async () => {
    const { socket, writes } = recordingSocket();
    const writer = new CoalescingWriter(socket);
    writer.write(Buffer.from('<presence/>'));
    socket.destroy();
    await tick();
    expect(writes).toHaveLength(0);
  });
});
