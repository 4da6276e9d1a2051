import { isIPv4, isIPv6, type Socket } from 'node:net';
import {
  Command,
  INETProtocol,
  IPv4Address,
  IPv4ProxyAddress,
  IPv6Address,
  IPv6ProxyAddress,
  Peer,
  TransportProtocol,
  V1ProxyProtocol,
  V2ProxyProtocol,
} from 'proxy-protocol-js';
import ipaddr from 'ipaddr.js';

/**
 * The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a load balancer in front of
 * the proxy tells it who the client is, in a header before the client's first byte; the proxy
 * tells the legacy server the same. Parsing and building are proxy-protocol-js's; this file frames
 * the header on a socket and decides what it means for the connection.
 */

/** An end of a TCP connection: the client as the load balancer saw it, or the listener it reached. */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/** What the first bytes of a connection say about its client. */
export type HeaderVerdict =
  /** A trusted source named the client. `consumed` bytes were the header. */
  | { readonly kind: 'proxied'; readonly client: Endpoint; readonly consumed: number }
  /** A trusted source's own connection (v2 `LOCAL`, v1 `UNKNOWN`: a health check): the peer is the client. */
  | { readonly kind: 'local'; readonly consumed: number }
  /** No header, from a source that need not send one: the peer is the client, nothing consumed. */
  | { readonly kind: 'direct' }
  /** Refused: a trusted source without a valid header, or a header from a source not trusted to send one. */
  | { readonly kind: 'refused'; readonly reason: string }
  /** Too few bytes to decide. */
  | { readonly kind: 'incomplete' };

const V1_SIGNATURE = Buffer.from('PROXY ');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** proxy-protocol.txt §2.1: a v1 line is at most 107 bytes, CRLF included. */
const V1_MAX_BYTES = 107;
/** §2.2: 16 bytes, then the address block and TLVs; a load balancer's TLVs (SSL, AWS VPC id) fit in far less. */
const V2_FIXED_BYTES = 16;
const V2_MAX_BYTES = 1024;

/**
 * Reads what `bytes` (everything received so far) say, for a connection from a source that is
 * `trusted` to send a header (it must then send one) or not (it must then send none).
 */
export function examineHeader(bytes: Buffer, trusted: boolean): HeaderVerdict {
  const v1 = startsLike(bytes, V1_SIGNATURE);
  const v2 = startsLike(bytes, V2_SIGNATURE);
  if (v1 === 'partly' || v2 === 'partly') return { kind: 'incomplete' };
  if (v1 === 'no' && v2 === 'no')
    return trusted ? { kind: 'refused', reason: 'no PROXY protocol header from a trusted source' } : { kind: 'direct' };
  if (!trusted) return { kind: 'refused', reason: 'a PROXY protocol header from a source not in proxyProtocolFrom' };
  return v1 === 'yes' ? examineV1(bytes) : examineV2(bytes);
}

function examineV1(bytes: Buffer): HeaderVerdict {
  const end = bytes.subarray(0, V1_MAX_BYTES).indexOf('\r\n');
  if (end < 0)
    return bytes.length >= V1_MAX_BYTES ? { kind: 'refused', reason: 'PROXY v1 line longer than 107 bytes' } : { kind: 'incomplete' };
  const consumed = end + 2;
  const line = bytes.toString('latin1', 0, consumed);
  // §2.1: "PROXY UNKNOWN" may end right there; the rest of the line is then ignored.
  if (line.startsWith('PROXY UNKNOWN')) return { kind: 'local', consumed };
  let parsed: V1ProxyProtocol;
  try {
    parsed = V1ProxyProtocol.parse(line);
  } catch {
    return { kind: 'refused', reason: 'malformed PROXY v1 line' };
  }
  const { ipAddress, port } = parsed.source;
  const family = parsed.inetProtocol === INETProtocol.TCP4 ? isIPv4(ipAddress) : isIPv6(ipAddress);
  // §2.1 knows no IPv6 zone (`%eth0`), which isIPv6 accepts and ipaddr.js does not.
  if (!family || !ipaddr.isValid(ipAddress) || !validPort(port) || !validPort(parsed.destination.port))
    return { kind: 'refused', reason: 'malformed PROXY v1 addresses' };
  return { kind: 'proxied', client: { address: clientAddress(ipAddress), port }, consumed };
}

function examineV2(bytes: Buffer): HeaderVerdict {
  if (bytes.length < V2_FIXED_BYTES) return { kind: 'incomplete' };
  const consumed = V2_FIXED_BYTES + bytes.readUInt16BE(14);
  if (consumed > V2_MAX_BYTES) return { kind: 'refused', reason: `PROXY v2 header of ${consumed} bytes (at most ${V2_MAX_BYTES})` };
  if (bytes.length < consumed) return { kind: 'incomplete' };
  let parsed: V2ProxyProtocol;
  try {
    parsed = V2ProxyProtocol.parse(new Uint8Array(bytes.subarray(0, consumed)));
  } catch {
    return { kind: 'refused', reason: 'malformed PROXY v2 header' };
  }
  // §2.2: LOCAL is the balancer's own connection; UNSPEC and UNIX carry no client address to use.
  if (parsed.command === Command.LOCAL) return { kind: 'local', consumed };
  const address = parsed.proxyAddress;
  if (address instanceof IPv4ProxyAddress)
    return { kind: 'proxied', client: { address: address.sourceAddress.address.join('.'), port: address.sourcePort }, consumed };
  if (address instanceof IPv6ProxyAddress) {
    return {
      kind: 'proxied',
      client: { address: clientAddress(ipaddr.fromByteArray(address.sourceAddress.address).toString()), port: address.sourcePort },
      consumed,
    };
  }
  return { kind: 'local', consumed };
}

/** A client address as the per-address limits count it: an IPv4-mapped IPv6 address is the IPv4 client it is. */
function clientAddress(address: string): string {
  return ipaddr.process(address).toString();
}

/** Whether `bytes` start with `signature` (`yes`), could still (`partly`: all of `bytes` match its start), or do not. */
function startsLike(bytes: Buffer, signature: Buffer): 'yes' | 'partly' | 'no' {
  const n = Math.min(bytes.length, signature.length);
  if (bytes.compare(signature, 0, n, 0, n) !== 0) return 'no';
  return n === signature.length ? 'yes' : 'partly';
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 0 && port <= 65535;
}

/** What reading the header found, once decided: {@link HeaderVerdict} without the byte counts. */
export type HeaderOutcome =
  | { readonly kind: 'proxied'; readonly client: Endpoint }
  | { readonly kind: 'local' }
  | { readonly kind: 'direct' }
  | { readonly kind: 'refused'; readonly reason: string }
  /** The connection closed before anything was decided: a balancer's TCP health check (connect, close). */
  | { readonly kind: 'closed' };

/**
 * Reads a fresh socket's first bytes until {@link examineHeader} decides, then leaves the socket as
 * if untouched except for the header: what followed it is pushed back (`unshift`) for whoever reads
 * next (a TLS server, an HTTP server, a client link). Bounded by `timeoutMs` and by the header's
 * size; a socket that closes first is `closed`.
 */
export function readHeader(socket: Socket, trusted: boolean, timeoutMs: number): Promise<HeaderOutcome> {
  return new Promise((resolve) => {
    let received: Buffer = Buffer.alloc(0);
    const finish = (outcome: HeaderOutcome, rest: Buffer): void => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('close', onClose);
      socket.off('error', onClose);
      if (rest.length > 0) socket.unshift(rest);
      resolve(outcome);
    };
    const onReadable = (): void => {
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      }
      const verdict = examineHeader(received, trusted);
      switch (verdict.kind) {
        case 'incomplete':
          return;
        case 'direct':
        case 'refused':
          finish(verdict, verdict.kind === 'direct' ? received : Buffer.alloc(0));
          return;
        case 'local':
          finish({ kind: 'local' }, received.subarray(verdict.consumed));
          return;
        case 'proxied':
          finish({ kind: 'proxied', client: verdict.client }, received.subarray(verdict.consumed));
      }
    };
    const onClose = (): void => finish({ kind: 'closed' }, Buffer.alloc(0));
    const timer = setTimeout(() => finish({ kind: 'refused', reason: `no decision within ${timeoutMs} ms` }, Buffer.alloc(0)), timeoutMs);
    timer.unref();
    socket.on('readable', onReadable);
    socket.once('close', onClose);
    socket.once('error', onClose);
  });
}

/** The PROXY protocol versions the proxy can send to a legacy server. */
export type ProxyProtocolVersion = 'v1' | 'v2';

/**
 * The header of the proxy's own connection (a probe), `local` and `remote` being its two ends: v2
 * `LOCAL` (§2.2: the receiver uses the connection's own addresses), with those addresses in its
 * address block all the same (ejabberd 23.01 reads an empty block as "whatever bytes come next",
 * swallowing the stream header); in v1, the addresses spelled out, since servers treat §2.1's
 * `UNKNOWN` unevenly (ejabberd 23.01 drops the connection).
 */
export function buildLocalHeader(version: ProxyProtocolVersion, local: Endpoint, remote: Endpoint): Buffer {
  return build(version, local, remote, Command.LOCAL);
}

/**
 * The header that tells a legacy server (see below), or undefined when an end is not an IP
 * address the header can carry (a client named by a reverse proxy in another form).
 */
export function tryBuildHeader(
  version: ProxyProtocolVersion,
  client: Endpoint,
  listener: Endpoint,
  command: 'proxy' | 'local',
): Buffer | undefined {
  // A zone (`%eth0`) names this host's interface and has no place in a header (§2.1, §2.2).
  const [source, destination] = [client, listener].map((end) => ({ ...end, address: end.address.replace(/%.*$/, '') })) as [
    Endpoint,
    Endpoint,
  ];
  if (!ipaddr.isValid(source.address) || !ipaddr.isValid(destination.address)) return undefined;
  return command === 'local' ? buildLocalHeader(version, source, destination) : buildHeader(version, source, destination);
}

/**
 * The header that tells a legacy server (Prosody's mod_net_proxy, ejabberd's `use_proxy_protocol`)
 * who the client is: `client` as the proxy knows it, `listener` the address it reached.
 */
export function buildHeader(version: ProxyProtocolVersion, client: Endpoint, listener: Endpoint): Buffer {
  return build(version, client, listener, Command.PROXY);
}

function build(version: ProxyProtocolVersion, client: Endpoint, listener: Endpoint, command: Command): Buffer {
  // One family for both ends: with one IPv6 end, the IPv4 one goes as IPv4-mapped IPv6.
  const [source, destination] = [ipaddr.process(client.address), ipaddr.process(listener.address)];
  const v6 = source.kind() === 'ipv6' || destination.kind() === 'ipv6';
  const bytes = (address: ipaddr.IPv4 | ipaddr.IPv6): number[] =>
    v6 && address.kind() === 'ipv4' ? (address as ipaddr.IPv4).toIPv4MappedAddress().toByteArray() : address.toByteArray();
  if (version === 'v1') {
    const text = (address: ipaddr.IPv4 | ipaddr.IPv6): string => ipaddr.fromByteArray(bytes(address)).toString();
    const protocol = v6 ? INETProtocol.TCP6 : INETProtocol.TCP4;
    const line = new V1ProxyProtocol(protocol, new Peer(text(source), client.port), new Peer(text(destination), listener.port)).build();
    return Buffer.from(line, 'latin1');
  }
  const addresses = v6
    ? new IPv6ProxyAddress(IPv6Address.createFrom(bytes(source)), client.port, IPv6Address.createFrom(bytes(destination)), listener.port)
    : new IPv4ProxyAddress(IPv4Address.createFrom(bytes(source)), client.port, IPv4Address.createFrom(bytes(destination)), listener.port);
  return Buffer.from(new V2ProxyProtocol(command, TransportProtocol.STREAM, addresses).build());
}
