import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import type { SessionHook } from '../session/hooks.js';

const PING = Buffer.from(NS.ping, 'utf8');

/**
 * XEP-0199 §4.2: the legacy server pings the client; while the client is away the proxy answers
 * on its behalf, so the server keeps the session. Returns the `<iq type='result'/>` to send
 * upstream, or `undefined` when `stanza` is not a ping request.
 */
export function pingAnswer(stanza: Buffer): string | undefined {
  if (!stanza.includes(PING)) return undefined;
  const iq = parseElement(stanza);
  if (iq.name !== 'iq' || iq.attrs.type !== 'get' || iq.getChild('ping', NS.ping) === undefined) return undefined;
  const to = iq.attrs.from as string | undefined;
  return `<iq type='result'${to === undefined ? '' : ` to='${escapeXml(to)}'`} id='${escapeXml((iq.attrs.id as string | undefined) ?? '')}'/>`;
}

/**
 * A ping for a hibernating session is answered upstream and not queued: the client would answer
 * it too late to matter, and a replayed ping only costs its radio. While the client is attached,
 * it answers its own pings.
 */
export const pingWhileAway: SessionHook = {
  name: 'ping-while-away',
  deliveries: ['queued'],
  kinds: ['iq'],
  toClient(bytes, _delivery, session) {
    const pong = pingAnswer(bytes);
    if (pong === undefined) return bytes;
    session.sendUpstream(pong);
    return undefined;
  },
};
