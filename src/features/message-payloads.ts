import type { Element } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/**
 * What the features that judge a stanza's importance share (client-state-indication.ts: may it
 * wait; push-notification.ts: would it wake the user).
 */

/** XEP-0280 §6: the message a `<received/>` carbon forwards; `undefined` when it is no such carbon. */
export function receivedCarbon(message: Element): Element | undefined {
  return message.getChild('received', NS.carbons)?.getChild('forwarded', NS.forward)?.getChild('message');
}

/** An encrypted payload (OMEMO in both versions, OpenPGP for XMPP, XEP-0027, XEP-0380): nobody can tell it is unimportant. */
export function isEncryptedPayload(child: Element): boolean {
  const ns = child.getNS() as string | undefined;
  return ns === NS.omemo || ns === NS.omemo2 || ns === NS.openpgp || ns === NS.legacyPgp || ns === NS.eme;
}
