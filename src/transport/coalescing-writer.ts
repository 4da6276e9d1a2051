import type { Socket } from 'node:net';

/**
 * Writes whole elements to a socket, coalescing what one tick writes (the hot path).
 *
 * The socket is corked at the first write of a tick and uncorked at the next tick, so the elements
 * of a burst leave in one TLS record or TCP segment. On top of that, elements that lie back to back
 * in memory, as the elements the scanner cut from one read do (each is a `subarray` of that chunk),
 * are joined into one view before they reach the socket: a read of a hundred stanzas from the
 * legacy server becomes one `socket.write()` of the original bytes, not a hundred, and nothing is
 * copied. Joining views that are adjacent in memory always yields exactly their concatenation,
 * whatever buffers they come from.
 *
 * `write()` returns what `socket.write()` would: false once the socket's buffer, counting the run
 * not yet handed to it, reaches its high-water mark. The run is handed over at that moment, so a
 * false always comes from the socket itself and its `drain` event follows.
 */
export class CoalescingWriter {
  private readonly socket: Socket;
  /** First element of the run of adjacent bytes not yet written; the run is `runLength` long. */
  private run: Buffer | undefined;
  private runLength = 0;
  private corked = false;

  constructor(socket: Socket) {
    this.socket = socket;
  }

  write(data: Buffer | string): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) return true;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.flush);
    }
    if (typeof data === 'string') {
      this.writeRun();
      return this.socket.write(data);
    }
    const run = this.run;
    if (run !== undefined && data.buffer === run.buffer && data.byteOffset === run.byteOffset + this.runLength) {
      this.runLength += data.length;
    } else {
      this.writeRun();
      this.run = data;
      this.runLength = data.length;
    }
    if (this.socket.writableLength + this.runLength < this.socket.writableHighWaterMark) return true;
    return this.writeRun();
  }

  /** Hands everything to the socket and uncorks it (at the end of the tick, or before the socket changes hands). */
  readonly flush = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.writeRun();
    this.socket.uncork();
  };

  /** Hands everything to the socket, then ends it (a FIN once the buffer is written). */
  end(): void {
    this.flush();
    this.socket.end();
  }

  private writeRun(): boolean {
    const run = this.run;
    if (run === undefined) return true;
    this.run = undefined;
    if (this.socket.destroyed || this.socket.writableEnded) return true;
    return this.socket.write(this.runLength === run.length ? run : Buffer.from(run.buffer, run.byteOffset, this.runLength));
  }
}
