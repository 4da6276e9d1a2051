import { xml, type Element } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';

/**
 * One XEP-0357 registration: the app server (`jid`), its node for this device, the client's
 * publish-options form (the app server's secret, typically), and the resource of the session that
 * enabled it: a session notifies the registrations of its own resource (mobile clients keep one
 * resource per installation), as mod_cloud_notify ties a registration to the session that made it.
 */
export interface PushRegistration {
  readonly jid: string;
  readonly node: string;
  readonly resource: string;
  readonly publishOptions: Element | undefined;
}

/**
 * Where the registrations of an account live: the user's private XML storage on the legacy server
 * (XEP-0049), under an element of the proxy's own namespace, read and written through the user's
 * own stream. The proxy keeps no database, and the registrations survive sessions, restarts and
 * upgrades of the proxy (README, Push notifications).
 */
const STORAGE_ELEMENT = 'push-registrations';

/** The registrations in a private-storage `<query/>` answer; what does not parse is left out. */
export function readRegistrations(query: Element | undefined): PushRegistration[] {
  const stored = query?.getChild(STORAGE_ELEMENT, NS.pushStorage);
  if (stored === undefined) return [];
  return stored.getChildren('registration').flatMap((entry) => {
    const { jid, node, resource } = entry.attrs as Record<string, unknown>;
    if (typeof jid !== 'string' || typeof node !== 'string' || typeof resource !== 'string' || jid === '' || node === '') return [];
    return [{ jid, node, resource, publishOptions: entry.getChild('x', NS.dataForms) }];
  });
}

/** The private-storage `<query/>` that stores `registrations` (XEP-0049 §3: a set replaces the whole element). */
export function storageQuery(registrations: readonly PushRegistration[]): Element {
  const stored = xml(STORAGE_ELEMENT, { xmlns: NS.pushStorage });
  for (const registration of registrations) {
    const entry = xml('registration', { jid: registration.jid, node: registration.node, resource: registration.resource });
    if (registration.publishOptions !== undefined) entry.cnode(registration.publishOptions);
    stored.cnode(entry);
  }
  return xml('query', { xmlns: NS.private }, stored);
}

/** The same registration: one app server node (XEP-0357 §6: enabling it again replaces it). */
export function sameRegistration(a: Pick<PushRegistration, 'jid' | 'node'>, b: Pick<PushRegistration, 'jid' | 'node'>): boolean {
  return a.jid === b.jid && a.node === b.node;
}
