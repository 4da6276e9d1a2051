/**
 * A fast fake legacy XMPP server for the benchmarks, so that the proxy (not a server) is measured.
 * It speaks just enough XMPP for the proxy and for the bench client: answers the stream header with
 * SASL PLAIN features, accepts any `<auth/>` with `<success/>`, answers the restarted header with
 * the bind feature and a bind request with `<user>@<domain>/<resource>`; then it echoes every byte
 * it receives back to the sender (the bench client sends only `<message/>`s by then, so each comes
 * back as a message to the sender). `</stream:stream>` is answered in kind and the socket ended.
 *
 * Runs as a peer process: `fork('fake-upstream.js')`, then the `start` command.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import { serve } from './bench-util.js';
import { PatternCounter } from './xmpp-bench-client.js';

const NS_STREAM = 'http://etherx.jabber.org/streams';

type Phase = 'header' | 'auth' | 'header2' | 'bind' | 'echo';

let nextStreamId = 1;

class FakeSession {
  private phase: Phase = 'header';
  private text = '';
  /** The account SASL named. */
  user = 'user';
  private readonly closeCounter = new PatternCounter('</stream:stream>');

  constructor(
    readonly socket: Socket,
    private readonly domain: string,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    socket.on('drain', () => socket.resume());
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'echo') {
      this.echo(chunk);
      return;
    }
    this.text += chunk.toString('latin1');
    for (;;) {
      const rest = this.step();
      if (rest === undefined) return;
      this.text = rest;
      if ((this.phase as Phase) === 'echo') {
        if (rest.length > 0) this.echo(Buffer.from(rest, 'latin1'));
        this.text = '';
        return;
      }
    }
  }

  private echo(chunk: Buffer): void {
    if (!this.socket.write(chunk)) this.socket.pause();
    if (this.closeCounter.count(chunk) > 0) this.socket.end();
  }

  /** Handles one complete piece of the set-up dialogue; returns the text after it, or undefined if incomplete. */
  private step(): string | undefined {
    const text = this.text;
    if (text.includes('</stream:stream>') && this.phase !== 'echo') {
      this.socket.end('</stream:stream>');
      return undefined;
    }
    switch (this.phase) {
      case 'header':
      case 'header2': {
        const start = text.indexOf('<stream:stream');
        const end = start === -1 ? -1 : text.indexOf('>', start);
        if (end === -1) return undefined;
        const features =
          this.phase === 'header'
            ? "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
            : "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>";
        this.socket.write(
          `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='${NS_STREAM}' id='fake-${nextStreamId++}' from='${this.domain}' version='1.0'>` +
            `<stream:features>${features}</stream:features>`,
        );
        this.phase = this.phase === 'header' ? 'auth' : 'bind';
        return text.slice(end + 1);
      }
      case 'auth': {
        const match = /<auth[^>]*?(?:\/>|>([^<]*)<\/auth>)/.exec(text);
        if (match === null) return undefined;
        const decoded = Buffer.from(match[1] ?? '', 'base64')
          .toString('utf8')
          .split('\0');
        this.user = decoded[1] || 'user';
        this.socket.write("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        this.phase = 'header2';
        return text.slice(match.index + match[0].length);
      }
      case 'bind': {
        const match = /<iq[^>]*?(?:\/>|>[\s\S]*?<\/iq>)/.exec(text);
        if (match === null) return undefined;
        const id = /\sid=(?:'([^']*)'|"([^"]*)")/.exec(match[0]);
        const resource = /<resource>([^<]*)<\/resource>/.exec(match[0])?.[1] ?? `r${nextStreamId++}`;
        this.socket.write(
          `<iq type='result' id='${id?.[1] ?? id?.[2] ?? ''}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>${this.user}@${this.domain}/${resource}</jid></bind></iq>`,
        );
        this.phase = 'echo';
        return text.slice(match.index + match[0].length);
      }
      case 'echo':
        return undefined;
    }
  }
}

/** The fake server; also usable in-process. */
export class FakeUpstream {
  private server: Server | undefined;
  private readonly sessions = new Set<FakeSession>();

  async start(domain: string): Promise<number> {
    const server = createServer((socket) => {
      const session = new FakeSession(socket, domain);
      this.sessions.add(session);
      socket.once('close', () => this.sessions.delete(session));
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, resolve));
    const address = server.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  get connections(): number {
    return this.sessions.size;
  }

  /** Writes `data` on the stream of each session of `user`, as a server routes its contacts' stanzas; how many there were. */
  sendToUser(user: string, data: string): number {
    let count = 0;
    for (const session of this.sessions) {
      if (session.user !== user) continue;
      session.socket.write(data);
      count++;
    }
    return count;
  }

  stop(): void {
    for (const session of this.sessions) session.socket.destroy();
    this.server?.close();
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const fake = new FakeUpstream();
  serve({
    start: (args: { domain: string }) => fake.start(args.domain),
    stats: () => ({ connections: fake.connections }),
  });
}
