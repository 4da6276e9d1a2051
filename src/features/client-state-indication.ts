import { parseElement, xml, type Element } from '../xml/element.js';
import { NS, isStanza } from '../xml/namespaces.js';
import { bare } from '../xml/jid.js';
import { addDelay } from './delay-stamp.js';
import { isEncryptedPayload, receivedCarbon } from './message-payloads.js';
import type { HoldVerdict, SessionHandle, SessionHook } from '../session/hooks.js';

/**
 * What may wait while the client says it is inactive (XEP-0352 §3.2's examples, in the manner of
 * Prosody's mod_csi_simple and ejabberd's mod_client_state):
 * - presence that only tells availability (no type, or `unavailable`), latest per sender: an
 *   earlier one from the same full JID is superseded;
 * - messages without anything a user would want at once: chat states only (latest per sender),
 *   receipts and markers, headlines (PEP), groupchat messages that do not mention the user.
 * Everything else is important and goes out at once, after what was held: an iq (a request to the
 * client, or the answer to its own), a message with a body or a subject, an encrypted payload
 * (OMEMO, OpenPGP, XEP-0380), a call or Jingle Message invitation, a groupchat invitation, an
 * error, a subscription request and every other presence type, and a carbon of what the user sent
 * from another device. A received carbon (XEP-0280) is judged by the message it carries.
 *
 * `mentionable`: the words that mention the user in a room's message (its nickname there, and the
 * account's local part), or `undefined` when the user's joining of that room was not seen: then
 * every message of the room with a body is important.
 */
export function holdVerdict(stanza: Element, mentionable: (room: string) => readonly string[] | undefined): HoldVerdict | undefined {
  const type = stanza.attrs.type as string | undefined;
  const from = (stanza.attrs.from as string | undefined) ?? '';
  if (stanza.name === 'presence') {
    return type === undefined || type === 'unavailable' ? { key: `presence ${from}` } : undefined;
  }
  if (stanza.name !== 'message' || type === 'error') return undefined;
  if (type === 'headline') return {};
  if (stanza.getChild('sent', NS.carbons) !== undefined) return undefined;
  const carried = receivedCarbon(stanza);
  if (carried !== undefined) return holdVerdict(carried, mentionable) === undefined ? undefined : {};
  if (stanza.getChildElements().some(isImportantPayload)) return undefined;
  const body = stanza.getChildText('body');
  if (type === 'groupchat' && body !== null) {
    const words = mentionable(bare(from));
    const text = body.toLowerCase();
    return words !== undefined && !words.some((word) => word !== '' && text.includes(word.toLowerCase())) ? {} : undefined;
  }
  if (body !== null || stanza.getChild('subject') !== undefined) return undefined;
  const chatStateOnly = stanza.getChildElements().every((child) => child.getNS() === NS.chatStates || child.name === 'thread');
  return chatStateOnly ? { key: `chat-state ${from}` } : {};
}

/** Payloads that matter without a body: encryption, calls, invitations. */
function isImportantPayload(child: Element): boolean {
  if (isEncryptedPayload(child)) return true;
  const ns = child.getNS() as string | undefined;
  if (ns === NS.mucUser) return child.getChild('invite') !== undefined;
  return ns === NS.jingleMessage || ns === NS.conferenceInvite;
}

const MUC = Buffer.from(NS.muc, 'utf8');
/** Rooms remembered per session at most: joins that failed or ended in a kick are never seen leaving. */
const MAX_ROOMS = 256;

/**
 * The rooms a session's client joined, with its nickname in each (XEP-0045 §7.2: a presence to
 * `room@service/nick` with `<x xmlns='http://jabber.org/protocol/muc'/>`; later presence to the
 * room without a type changes the nickname, `unavailable` leaves).
 */
function observeJoin(rooms: Map<string, string>, presence: Element): void {
  const to = presence.attrs.to as string | undefined;
  const slash = to?.indexOf('/') ?? -1;
  if (to === undefined || slash === -1) return;
  const room = to.slice(0, slash);
  const type = presence.attrs.type as string | undefined;
  if (type === 'unavailable') rooms.delete(room);
  else if (type === undefined && (rooms.has(room) || (presence.getChild('x', NS.muc) !== undefined && rooms.size < MAX_ROOMS))) {
    rooms.set(room, to.slice(slash + 1));
  }
}

/**
 * XEP-0352 client state indication, done by the proxy when the legacy server does not offer it:
 * `<csi/>` is advertised after authentication (when `enabled()`), the client's `<inactive/>` and
 * `<active/>` are answered here (XEP-0352 §4.2: there is no reply), and while the client is
 * inactive the stanzas {@link holdVerdict} lets wait are held (session/held-stanzas.ts). When the
 * legacy server offers CSI itself, its feature and the client's nonzas pass unchanged.
 */
export function clientStateIndication(enabled: () => boolean, now: () => number): SessionHook {
  const joined = new WeakMap<SessionHandle, Map<string, string>>();
  return {
    name: 'client-state-indication',
    phases: ['authenticated', 'active'],
    fromClient(element, _phase, session) {
      if (element.ns === NS.csi && (element.localName === 'active' || element.localName === 'inactive')) {
        if (session.serverOffers('csi', NS.csi)) return undefined;
        session.holdBack(element.localName === 'inactive');
        return { kind: 'consumed' };
      }
      // The client's radio is awake as it sends: what waits goes now, and holding goes on (as
      // mod_csi_simple flushes on data from the client).
      if (isStanza(element)) session.releaseHeld();
      if (element.localName === 'presence') {
        if (element.bytes.includes(MUC) || joined.has(session)) {
          const rooms = joined.get(session) ?? new Map<string, string>();
          observeJoin(rooms, parseElement(element.bytes));
          if (rooms.size > 0) joined.set(session, rooms);
          else joined.delete(session);
        }
      }
      return undefined;
    },
    hold(bytes, session) {
      const jid = session.jid ?? '';
      const verdict = holdVerdict(parseElement(bytes), (room) => {
        const nick = joined.get(session)?.get(room);
        return nick === undefined ? undefined : [nick, jid.slice(0, Math.max(0, jid.indexOf('@')))];
      });
      // As mod_csi_simple does: what waits tells the client when it arrived (XEP-0203), from the user's server.
      return verdict === undefined ? undefined : { ...verdict, bytes: addDelay(bytes, now(), bare(jid)) };
    },
    advertise: (phase, offered) =>
      phase === 'post-auth' && enabled() && offered.getChild('csi', NS.csi) === undefined ? [xml('csi', { xmlns: NS.csi })] : [],
    // An upgrade: the rooms joined, with the nicknames, go to the next process with the session.
    handedOff: (session) => {
      const rooms = joined.get(session);
      return rooms === undefined ? undefined : Object.fromEntries(rooms);
    },
    adopted(session, carried) {
      if (typeof carried !== 'object' || carried === null) return;
      const rooms = Object.entries(carried as Record<string, unknown>)
        .filter((entry): entry is [string, string] => typeof entry[1] === 'string')
        .slice(0, MAX_ROOMS);
      if (rooms.length > 0) joined.set(session, new Map(rooms));
    },
  };
}
