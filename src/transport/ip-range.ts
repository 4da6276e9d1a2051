import { BlockList, isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { ConfigError, ErrorCode } from '../errors.js';

/** One IP address, or a subnet in CIDR notation (RFC 4632 §3.1 for IPv4, RFC 4291 §2.3 for IPv6). */
export interface IpRange {
  readonly family: 'ipv4' | 'ipv6';
  readonly address: string;
  /** Prefix length in bits; undefined for a single address. */
  readonly prefix: number | undefined;
}

/** What parseIpRange found: the range, or why the entry is not one (for the config error message). */
export type IpRangeResult = { readonly ok: true; readonly range: IpRange } | { readonly ok: false; readonly reason: string };

const IPV4_MAPPED = /^::ffff:([0-9.]+)$/i;
const PREFIX = /^[0-9]{1,3}$/;

/**
 * Parses `address` or `address/prefix` (IPv4 prefix 0..32, IPv6 prefix 0..128). An IPv4-mapped
 * IPv6 address (`::ffff:192.0.2.1`, prefix 96..128) is read as the IPv4 address it maps, since
 * peer addresses are compared in that form.
 */
export function parseIpRange(entry: string): IpRangeResult {
  const slash = entry.indexOf('/');
  const addressPart = slash < 0 ? entry : entry.slice(0, slash);
  const prefixPart = slash < 0 ? undefined : entry.slice(slash + 1);
  const family = isIP(addressPart);
  if (family === 0) return { ok: false, reason: `'${addressPart}' is not an IPv4 or IPv6 address` };
  const maxBits = family === 6 ? 128 : 32;
  let prefix: number | undefined;
  if (prefixPart !== undefined) {
    prefix = PREFIX.test(prefixPart) ? Number(prefixPart) : Number.NaN;
    if (!(prefix >= 0 && prefix <= maxBits)) {
      return { ok: false, reason: `prefix '/${prefixPart}' is not a whole number of bits in 0..${maxBits} for an IPv${family} address` };
    }
  }
  const mapped = family === 6 ? IPV4_MAPPED.exec(addressPart)?.[1] : undefined;
  if (mapped !== undefined && isIP(mapped) === 4 && (prefix === undefined || prefix >= 96)) {
    return { ok: true, range: { family: 'ipv4', address: mapped, prefix: prefix === undefined ? undefined : prefix - 96 } };
  }
  return { ok: true, range: { family: family === 6 ? 'ipv6' : 'ipv4', address: addressPart, prefix } };
}

/**
 * An IP address from a socket or a forwarding header, without port, brackets, quotes or the
 * IPv4-mapped IPv6 prefix; `undefined` when it is not an IP address.
 */
export function normalizeAddress(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  let address = value.trim();
  if (address.length >= 2 && address.startsWith('"') && address.endsWith('"')) address = address.slice(1, -1);
  if (address.startsWith('[')) {
    const end = address.indexOf(']');
    if (end < 0) return undefined;
    address = address.slice(1, end);
  } else if (/^[0-9.]+:[0-9]+$/.test(address)) {
    address = address.slice(0, address.indexOf(':'));
  }
  const mapped = IPV4_MAPPED.exec(address);
  if (mapped?.[1] !== undefined) address = mapped[1];
  return isIP(address) === 0 ? undefined : address;
}

/** True for `localhost` and the loopback addresses (127.0.0.0/8, `::1`): traffic that never leaves the host. */
export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const address = normalizeAddress(host);
  return address !== undefined && (address === '::1' || (isIP(address) === 4 && address.startsWith('127.')));
}

/**
 * What a per-address limit counts a client as: an IPv4 address itself, an IPv6 address as its
 * network of `ipv6PrefixLength` bits (`2001:db8:0:1::/64`), since one host usually holds a whole
 * /64 (RFC 4291 §2.5.4). Anything else (a WebSocket client named by a trusted proxy in a form that
 * is not an address) counts as itself.
 */
export function addressKey(address: string, ipv6PrefixLength: number): string {
  // A link-local peer carries its zone (`fe80::1%eth0.100`), which ipaddr.js does not take: the
  // zone names this host's interface, not the client, and is left out.
  const unzoned = address.replace(/%.*$/, '');
  const words = isIP(unzoned) === 6 && ipaddr.IPv6.isValid(unzoned) ? ipaddr.IPv6.parse(unzoned).parts : undefined;
  if (words === undefined) return address;
  const masked = words.map((word, i) => {
    const kept = Math.min(16, Math.max(0, ipv6PrefixLength - i * 16));
    return kept === 0 ? 0 : word & (0xffff << (16 - kept)) & 0xffff;
  });
  return `${masked.map((word) => word.toString(16)).join(':')}/${ipv6PrefixLength}`;
}

/**
 * The addresses and ranges of a config list (`trustedProxies`, `proxyProtocolFrom`), for
 * `BlockList.check`. The config was validated already; an entry that fails anyway is a config error.
 */
export function addressList(entries: readonly string[], key: string): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const parsed = parseIpRange(entry);
    if (!parsed.ok) {
      throw new ConfigError(ErrorCode.CONFIG_INVALID, `${key} entry '${entry}' is not an IP address or address/prefix: ${parsed.reason}`);
    }
    const { address, prefix, family } = parsed.range;
    if (prefix === undefined) list.addAddress(address, family);
    else list.addSubnet(address, prefix, family);
  }
  return list;
}
