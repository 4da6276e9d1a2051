import { createServer, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, UpstreamError } from '../../src/errors.js';
import { UpstreamLink, type UpstreamHandler, type UpstreamTarget } from '../../src/upstream/upstream-link.js';
import { waitUntil } from '../support/wait.js';

// The upstream hop against scripted legacy servers on loopback: how it closes, how it times out.

const log = pino({ level: 'silent' });
const TLS_NS = 'urn:ietf:params:xml:ns:xmpp-tls';
const SERVER_HEADER =
  "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>";
/** UpstreamLink waits this long for the server's close before destroying the socket. */
const CLOSE_WAIT_MS = 2000;

interface ScriptedServer {
  readonly port: number;
  readonly sockets: Socket[];
  /** The sockets whose peer (the proxy) ended or dropped the connection. */
  readonly ended: Set<Socket>;
}

const servers: Array<{ server: Server; sockets: Socket[] }> = [];

afterEach(async () => {
  for (const { server, sockets } of servers.splice(0)) {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

/** A scripted legacy server: `onData` gets each chunk its connection receives, as text. */
async function startServer(onData: (socket: Socket, text: string) => void): Promise<ScriptedServer> {
  const sockets: Socket[] = [];
  const ended = new Set<Socket>();
  // allowHalfOpen: the server never ends its side by itself, so only the proxy can end the connection.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.push(socket);
    socket.on('error', () => ended.add(socket));
    socket.on('end', () => ended.add(socket));
    socket.on('data', (chunk: Buffer) => onData(socket, chunk.toString('utf8')));
  });
  servers.push({ server, sockets });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, sockets, ended };
}

function target(port: number, patch: Partial<UpstreamTarget> = {}): UpstreamTarget {
  return { domain: 'localhost', host: '127.0.0.1', port, security: 'plain', connectTimeoutMs: 500, rejectUnauthorized: false, ...patch };
}

/** A handler that records events and, like a closed session, does nothing about them. */
function recordingHandler(): UpstreamHandler & { events: string[]; endedClean: boolean | undefined } {
  const handler = {
    events: [] as string[],
    endedClean: undefined as boolean | undefined,
    onStreamOpen: () => handler.events.push('open'),
    onElement: () => handler.events.push('element'),
    onStreamClose: () => handler.events.push('close'),
    onFailure: (error: UpstreamError) => handler.events.push(`failure ${error.code}`),
    onEnd: (clean: boolean) => {
      handler.endedClean = clean;
      handler.events.push('end');
    },
    onDrain: () => undefined,
  };
  return handler;
}

describe('UpstreamLink.close (RFC 6120 §4.4)', () => {
  it("ends the socket as soon as the server's </stream:stream> answers ours", async () => {
    let serverEndedAtMs: number | undefined;
    const server = await startServer((socket, text) => {
      if (text.includes('<stream:stream')) socket.write(SERVER_HEADER);
      if (text.includes('</stream:stream>')) {
        socket.write('</stream:stream>');
        socket.once('end', () => {
          serverEndedAtMs = Date.now();
          socket.end();
        });
      }
    });
    const link = await UpstreamLink.connect(target(server.port), log);
    const handler = recordingHandler();
    link.setHandler(handler);
    link.sendHeader({ to: 'localhost', version: '1.0' });
    await waitUntil(() => handler.events.includes('open'), "the server's stream header");
    const closedAtMs = Date.now();
    link.close();
    await waitUntil(() => handler.endedClean !== undefined, 'the upstream link to end', CLOSE_WAIT_MS * 2);
    expect(handler.events).toEqual(['open', 'close', 'end']);
    expect(handler.endedClean).toBe(true);
    expect(serverEndedAtMs, 'the server to see our FIN').toBeDefined();
    expect(serverEndedAtMs! - closedAtMs).toBeLessThan(CLOSE_WAIT_MS / 2);
    expect(Date.now() - closedAtMs, 'the link to end without waiting for its destroy timer').toBeLessThan(CLOSE_WAIT_MS / 2);
  });

  it("ends the socket at once when the server's </stream:stream> came before ours", async () => {
    const server = await startServer((socket, text) => {
      if (text.includes('<stream:stream')) socket.write(SERVER_HEADER + '</stream:stream>');
    });
    const link = await UpstreamLink.connect(target(server.port), log);
    const handler = recordingHandler();
    link.setHandler(handler);
    link.sendHeader({ to: 'localhost', version: '1.0' });
    await waitUntil(() => handler.events.includes('close'), "the server's stream close");
    link.close();
    await waitUntil(() => server.ended.size === 1, 'the server to see our FIN', CLOSE_WAIT_MS / 2);
  });
});

describe('UpstreamLink.connect with STARTTLS on the hop (RFC 6120 §5.4)', () => {
  it('gives up when the TLS handshake after <proceed/> does not complete within the connect timeout, and drops the socket', async () => {
    const server = await startServer((socket, text) => {
      if (text.includes('<stream:stream'))
        socket.write(SERVER_HEADER + `<stream:features><starttls xmlns='${TLS_NS}'><required/></starttls></stream:features>`);
      // <proceed/>, then silence: the ClientHello is never answered.
      if (text.includes('<starttls')) socket.write(`<proceed xmlns='${TLS_NS}'/>`);
    });
    const startedMs = Date.now();
    const error = await UpstreamLink.connect(target(server.port, { security: 'starttls' }), log).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(UpstreamError);
    expect((error as UpstreamError).code).toBe(ErrorCode.UPSTREAM_TLS);
    expect((error as UpstreamError).condition).toBe('remote-connection-failed');
    expect((error as UpstreamError).message).toContain('TLS handshake not complete within 500 ms');
    expect(Date.now() - startedMs).toBeLessThan(1500);
    await waitUntil(() => server.sockets.length === 1 && server.ended.size === 1, 'the proxy to drop the stalled connection', 1000);
  });
});

describe('UpstreamLink.release and UpstreamLink.adopt (an open stream moves to a new link)', () => {
  /** Server header declaring a prefix that the server's elements rely on (Namespaces in XML 1.0 §6.1). */
  const HEADER_WITH_PREFIX = SERVER_HEADER.replace(" id='s1'", " xmlns:ext='urn:example:ext' id='s1'");

  function elementRecorder(): ReturnType<typeof recordingHandler> & { elements: string[] } {
    const handler = Object.assign(recordingHandler(), { elements: [] as string[] });
    handler.onElement = (element) => {
      handler.events.push('element');
      handler.elements.push(element.bytes.toString('utf8'));
    };
    return handler;
  }

  it('carries the stream across without a byte to the server, the header namespaces still in scope', async () => {
    const received: string[] = [];
    const server = await startServer((socket, text) => {
      received.push(text);
      if (text.includes('<stream:stream')) socket.write(HEADER_WITH_PREFIX + "<message id='1'/><message id='2'><bo");
    });
    const old = await UpstreamLink.connect(target(server.port), log);
    const oldHandler = elementRecorder();
    old.setHandler(oldHandler);
    old.sendHeader({ to: 'localhost', version: '1.0' });
    await waitUntil(() => oldHandler.elements.length === 1, 'the first message');

    expect(old.release(), 'a release while an element is half read').toBeUndefined();
    expect(old.ended).toBe(false);
    server.sockets[0]!.write("dy>hi</body></message><message id='3'><ext:x/></message>");
    await waitUntil(() => oldHandler.elements.length === 3, 'the rest of the stream on the old link');

    const released = old.release();
    expect(released).toBeDefined();
    expect(old.ended).toBe(true);
    // What the server sends in between waits in the socket for the adopter.
    server.sockets[0]!.write("<message id='4'><ext:x/></message>");
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(oldHandler.elements).toHaveLength(3);

    const adopted = UpstreamLink.adopt(released!, target(server.port), log);
    const newHandler = elementRecorder();
    adopted.setHandler(newHandler);
    adopted.resume();
    await waitUntil(() => newHandler.elements.length === 1, 'the message sent during the hand-over');
    expect(newHandler.events, 'no second stream open reported').toEqual(['element']);
    expect(newHandler.elements[0]).toBe("<message xmlns:ext='urn:example:ext' id='4'><ext:x/></message>");
    expect(oldHandler.elements[2]).toBe("<message xmlns:ext='urn:example:ext' id='3'><ext:x/></message>");

    const before = received.join('');
    adopted.send("<presence id='p'/>");
    await waitUntil(() => received.join('').length > before.length, 'the server to read from the adopted link');
    expect(received.join('').slice(before.length)).toBe("<presence id='p'/>");

    server.sockets[0]!.once('end', () => server.sockets[0]!.end());
    server.sockets[0]!.write('</stream:stream>');
    await waitUntil(() => newHandler.events.includes('close'), "the server's close on the adopted link");
    adopted.close();
    await waitUntil(() => newHandler.endedClean !== undefined, 'the adopted link to end');
    expect(newHandler.endedClean).toBe(true);
    expect(
      oldHandler.events.filter((e) => e !== 'element'),
      'the released link reports nothing more',
    ).toEqual(['open']);
  });

  it('refuses before the server answered, while closing, and after the server closed', async () => {
    const server = await startServer((socket, text) => {
      if (text.includes('<stream:stream')) socket.write(SERVER_HEADER);
    });
    const link = await UpstreamLink.connect(target(server.port), log);
    const handler = recordingHandler();
    link.setHandler(handler);
    expect(link.release(), 'no server header yet').toBeUndefined();
    link.sendHeader({ to: 'localhost', version: '1.0' });
    await waitUntil(() => handler.events.includes('open'), "the server's stream header");
    server.sockets[0]!.write('</stream:stream>');
    await waitUntil(() => handler.events.includes('close'), "the server's close");
    expect(link.release(), 'the server closed its stream').toBeUndefined();
    link.close();
    expect(link.release(), 'closing').toBeUndefined();
  });
});
