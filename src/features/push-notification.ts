import { xml, type Element } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';
import { isEncryptedPayload, receivedCarbon } from './message-payloads.js';
import type { PushRegistration } from './push-registrations.js';

/**
 * Whether a stanza for a user who is away would make their phone show something, so that it is
 * worth a push notification (as mod_cloud_notify's `is_important`): a message with a body, an
 * encrypted message, a call invitation (XEP-0353), a subscription request. Carbons of what the
 * user's other devices received count; carbons of what the user sent do not.
 */
export function wakesUser(stanza: Element): boolean {
  if (stanza.name === 'presence') return stanza.attrs.type === 'subscribe';
  if (stanza.name !== 'message' || stanza.attrs.type === 'error' || stanza.attrs.type === 'groupchat') return false;
  const carried = receivedCarbon(stanza);
  if (carried !== undefined) return wakesUser(carried);
  if (stanza.getChild('body') !== undefined) return true;
  return stanza
    .getChildElements()
    .some((child) => isEncryptedPayload(child) || (child.name === 'propose' && child.getNS() === NS.jingleMessage));
}

/** What a notification tells the app server (XEP-0357 §5: the urn:xmpp:push:summary form). */
export interface NotificationSummary {
  readonly messageCount: number;
  /** Only when the operator allows it (config `push.withSender`). */
  readonly lastSender?: string;
  /** The body when the operator allows it (config `push.withBody`), else a placeholder. */
  readonly lastBody?: string;
}

/** XEP-0357 §5: the pubsub publish of a notification to the registration's node, with its publish-options (the sender sets the id). */
export function notificationIq(registration: PushRegistration, summary: NotificationSummary): Element {
  const form = xml('x', { xmlns: NS.dataForms, type: 'submit' }, field('FORM_TYPE', 'urn:xmpp:push:summary'));
  form.cnode(field('message-count', String(summary.messageCount)));
  if (summary.lastSender !== undefined) form.cnode(field('last-message-sender', summary.lastSender));
  if (summary.lastBody !== undefined) form.cnode(field('last-message-body', summary.lastBody));
  const pubsub = xml(
    'pubsub',
    { xmlns: NS.pubsub },
    xml('publish', { node: registration.node }, xml('item', {}, xml('notification', { xmlns: NS.push }, form))),
  );
  if (registration.publishOptions !== undefined) pubsub.cnode(xml('publish-options', {}, registration.publishOptions));
  return xml('iq', { type: 'set', to: registration.jid }, pubsub);
}

function field(name: string, value: string): Element {
  return xml('field', { var: name }, xml('value', {}, value));
}
