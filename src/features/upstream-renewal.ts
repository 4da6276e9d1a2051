import { randomBytes } from 'node:crypto';
import type { SessionHandle, SessionHook } from '../session/hooks.js';
import { parseElement } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

const CARBONS = Buffer.from(NS.carbons, 'utf8');
/** The id prefix of the proxy's own carbons request on a renewed stream. */
const OWN_ID_PREFIX = 'smacks-renew-';

/** What the client told the legacy server about its session that a new upstream session must hear again. */
interface Told {
  /** Its last broadcast available presence (RFC 6121 §4.2), as it sent it; none after a broadcast unavailable one. */
  presence: Buffer | undefined;
  /** XEP-0280 carbons enabled (and not disabled since). */
  carbons: boolean;
  /** The id of the proxy's own carbons request whose answer is on its way. */
  pending: string | undefined;
}

/** What an upgrade carries to the next process (hooks.ts `handedOff`): plain JSON data. */
interface Carried {
  readonly presence?: string;
  readonly carbons?: boolean;
}

/**
 * When a legacy server restarts while a client is away, the proxy resumes the client over a new
 * upstream stream bound to the same full JID (README, What it promises). That new session of the
 * legacy server has heard nothing: this hook tells it again what the client had told the old one,
 * in the order a client sets up a session: carbons (XEP-0280 §6) first, so that messages the
 * presence attracts are copied, then the last broadcast presence (RFC 6121 §4.2.1), which also
 * makes the server send the contacts' presence to the client again. The answer to the proxy's own
 * carbons request is the proxy's: the client never sees it. Directed presence (chat rooms) is not
 * sent again: the rooms saw the user leave when the server stopped, and joining again is the
 * client's (XEP-0410).
 */
export function upstreamRenewal(): SessionHook {
  const told = new WeakMap<SessionHandle, Told>();
  const of = (session: SessionHandle): Told => {
    let state = told.get(session);
    if (state === undefined) {
      state = { presence: undefined, carbons: false, pending: undefined };
      told.set(session, state);
    }
    return state;
  };
  return {
    name: 'upstream-renewal',
    phases: ['active'],
    fromClientKinds: ['presence', 'iq'],
    fromClient(element, _phase, session) {
      if (element.localName === 'presence') {
        const presence = parseElement(element.bytes);
        if (presence.attrs.to !== undefined) return undefined;
        const type = presence.attrs.type as string | undefined;
        // A copy: the element's bytes may be a view of a socket chunk.
        if (type === undefined) of(session).presence = Buffer.from(element.bytes);
        else if (type === 'unavailable') of(session).presence = undefined;
        return undefined;
      }
      if (element.localName === 'iq' && element.bytes.includes(CARBONS)) {
        const iq = parseElement(element.bytes);
        if (iq.attrs.type !== 'set') return undefined;
        if (iq.getChild('enable', NS.carbons) !== undefined) of(session).carbons = true;
        else if (iq.getChild('disable', NS.carbons) !== undefined) of(session).carbons = false;
      }
      return undefined;
    },
    kinds: ['iq'],
    toClient(bytes, _delivery, session) {
      const pending = told.get(session)?.pending;
      if (pending === undefined || !bytes.includes(pending)) return bytes;
      const iq = parseElement(bytes);
      if (iq.attrs.id !== pending || (iq.attrs.type !== 'result' && iq.attrs.type !== 'error')) return bytes;
      of(session).pending = undefined;
      if (iq.attrs.type === 'error') session.log.warn('the legacy server refused carbons on the renewed stream');
      return undefined;
    },
    upstreamRenewed(session) {
      const state = told.get(session);
      if (state === undefined) return;
      if (state.carbons) {
        state.pending = `${OWN_ID_PREFIX}${randomBytes(6).toString('hex')}`;
        session.sendUpstream(`<iq type='set' id='${state.pending}'><enable xmlns='${NS.carbons}'/></iq>`);
      }
      if (state.presence !== undefined) session.sendUpstream(state.presence.toString('utf8'));
    },
    handedOff(session) {
      const state = told.get(session);
      if (state === undefined || (state.presence === undefined && !state.carbons)) return undefined;
      const carried: Carried = { presence: state.presence?.toString('utf8'), carbons: state.carbons };
      return carried;
    },
    adopted(session, carried) {
      if (typeof carried !== 'object' || carried === null) return;
      const { presence, carbons } = carried as Carried;
      const state = of(session);
      if (typeof presence === 'string' && presence.startsWith('<presence')) state.presence = Buffer.from(presence, 'utf8');
      state.carbons = carbons === true;
    },
  };
}
