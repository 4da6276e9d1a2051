import type { Resolver } from 'node:dns/promises';
import { request } from 'node:https';
import type { LookupFunction } from 'node:net';
import { parse as parseXml } from 'ltx';
import type { ProxyConfig } from '../config/config.js';
import { type DnsFinding, targetAddresses } from './dns-check.js';

/** XEP-0156 §3: the XRD namespace and the link relation of an XMPP-over-WebSocket endpoint. */
const XRD_NS = 'http://docs.oasis-open.org/ns/xri/xrd-1.0';
const WEBSOCKET_LINK_REL = 'urn:xmpp:alt-connections:websocket';
const HOST_META_PATH = '/.well-known/host-meta';
const MAX_BODY_BYTES = 64 * 1024;
const TIMEOUT_MS = 5_000;

export interface HostMetaCheckOptions {
  /** HTTPS port asked; XEP-0156 §3 means 443, other values are for tests. */
  readonly port?: number;
  /** Trust anchors in place of Node's (tests); the CLI honours NODE_EXTRA_CA_CERTS instead. */
  readonly ca?: string;
}

/**
 * What a WebSocket client finds by XEP-0156 discovery for each served domain, when the proxy has a
 * WebSocket listener: `https://<domain>/.well-known/host-meta` is fetched (names resolved by
 * `resolver`, the certificate verified as a browser would), and each WebSocket link is checked
 * against the listeners. A missing or unreadable file is a warning (clients can be given the URL);
 * a link whose host has no address is an error.
 */
export async function checkHostMeta(config: ProxyConfig, resolver: Resolver, options: HostMetaCheckOptions = {}): Promise<DnsFinding[]> {
  const paths = new Set(config.listeners.flatMap((listener) => (listener.type === 'websocket' ? [listener.path] : [])));
  if (paths.size === 0) return [];
  const findings: DnsFinding[] = [];
  for (const domain of Object.keys(config.domains)) {
    const url = `https://${domain}${HOST_META_PATH}`;
    const unreachable = (why: string): DnsFinding => ({
      level: 'warning',
      text: `${url}: ${why}; WebSocket clients that discover by XEP-0156 will not find the proxy`,
    });
    let hrefs: string[];
    try {
      hrefs = websocketLinks(await fetchHostMeta(domain, resolver, options));
    } catch (err) {
      findings.push(unreachable((err as Error).message));
      continue;
    }
    if (hrefs.length === 0) {
      findings.push(unreachable(`no link of rel '${WEBSOCKET_LINK_REL}'`));
      continue;
    }
    for (const href of hrefs) findings.push(await checkLink(`${url} → ${href}`, href, paths, resolver));
  }
  return findings;
}

async function checkLink(where: string, href: string, paths: ReadonlySet<string>, resolver: Resolver): Promise<DnsFinding> {
  let link: URL;
  try {
    link = new URL(href);
  } catch {
    return { level: 'error', text: `${where}: not a URL` };
  }
  // XEP-0156 §3: clients accept only secure (wss://) endpoints from host-meta.
  if (link.protocol !== 'wss:') return { level: 'warning', text: `${where}: not wss://, which clients ignore` };
  const addresses = await targetAddresses(resolver, link.hostname);
  if (addresses.length === 0) return { level: 'error', text: `${where}: ${link.hostname} has no A or AAAA record` };
  if (!paths.has(link.pathname)) {
    return {
      level: 'warning',
      text: `${where}: the websocket listeners' paths are ${[...paths].join(', ')} (fine if a reverse proxy maps it)`,
    };
  }
  return { level: 'ok', text: `${where}: the path of a websocket listener (${link.hostname} is ${addresses.join(', ')})` };
}

/** The `href` of every WebSocket link of an XRD document (XEP-0156 §3). */
function websocketLinks(body: string): string[] {
  let xrd;
  try {
    xrd = parseXml(body);
  } catch {
    throw new Error('the answer is not XML');
  }
  if (xrd.name !== 'XRD' || xrd.attrs.xmlns !== XRD_NS) throw new Error(`the answer is not an XRD document (<${xrd.name}>)`);
  return xrd
    .getChildren('Link')
    .filter((link) => link.attrs.rel === WEBSOCKET_LINK_REL && typeof link.attrs.href === 'string')
    .map((link) => String(link.attrs.href));
}

/** GET over HTTPS, without following redirects (reported as such), body bounded. */
function fetchHostMeta(domain: string, resolver: Resolver, options: HostMetaCheckOptions): Promise<string> {
  return new Promise((resolveBody, reject) => {
    const req = request(
      {
        host: domain,
        port: options.port ?? 443,
        path: HOST_META_PATH,
        servername: domain,
        headers: { Accept: 'application/xrd+xml' },
        lookup: resolverLookup(resolver),
        ca: options.ca,
        timeout: TIMEOUT_MS,
        agent: false,
      },
      (res) => {
        const location = res.headers.location === undefined ? '' : ` (Location: ${res.headers.location})`;
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`answered HTTP ${res.statusCode}${location}`));
          return;
        }
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          body += chunk;
          if (body.length > MAX_BODY_BYTES) req.destroy(new Error(`the answer is larger than ${MAX_BODY_BYTES} bytes`));
        });
        res.on('end', () => resolveBody(body));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

/** net's `lookup` hook answered by `resolver`, so that `--dns-server` applies to the HTTPS fetch too. */
function resolverLookup(resolver: Resolver): LookupFunction {
  return (hostname, options, callback) => {
    targetAddresses(resolver, hostname).then(
      (addresses) => {
        if (addresses.length === 0) {
          callback(Object.assign(new Error(`${hostname} has no A or AAAA record`), { code: 'ENOTFOUND' }), '', 0);
          return;
        }
        const entries = addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
        if (options.all === true) (callback as unknown as (err: null, all: typeof entries) => void)(null, entries);
        else callback(null, entries[0]!.address, entries[0]!.family);
      },
      (err: Error) => callback(err, '', 0),
    );
  };
}
