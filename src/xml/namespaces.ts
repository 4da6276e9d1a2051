/** XML namespaces the proxy reads or writes. */
export const NS = {
  client: 'jabber:client',
  stream: 'http://etherx.jabber.org/streams',
  streams: 'urn:ietf:params:xml:ns:xmpp-streams',
  stanzas: 'urn:ietf:params:xml:ns:xmpp-stanzas',
  tls: 'urn:ietf:params:xml:ns:xmpp-tls',
  sasl: 'urn:ietf:params:xml:ns:xmpp-sasl',
  sasl2: 'urn:xmpp:sasl:2',
  bind: 'urn:ietf:params:xml:ns:xmpp-bind',
  session: 'urn:ietf:params:xml:ns:xmpp-session',
  compressFeature: 'http://jabber.org/features/compress',
  compress: 'http://jabber.org/protocol/compress',
  sm3: 'urn:xmpp:sm:3',
  sm2: 'urn:xmpp:sm:2',
  /** jabberd2's pre-standard XEP-0198 draft feature. */
  smDraft: 'http://www.xmpp.org/extensions/xep-0198.html#ns',
  /** XEP-0078 non-SASL authentication: the stream feature and the query. */
  iqAuthFeature: 'http://jabber.org/features/iq-auth',
  iqAuth: 'jabber:iq:auth',
  saslChannelBinding: 'urn:xmpp:sasl-cb:0',
  delay: 'urn:xmpp:delay',
  ping: 'urn:xmpp:ping',
  carbons: 'urn:xmpp:carbons:2',
  errors: 'urn:xmpp:errors',
  framing: 'urn:ietf:params:xml:ns:xmpp-framing',
  /** XEP-0352 client state indication. */
  csi: 'urn:xmpp:csi:0',
  forward: 'urn:xmpp:forward:0',
  chatStates: 'http://jabber.org/protocol/chatstates',
  muc: 'http://jabber.org/protocol/muc',
  mucUser: 'http://jabber.org/protocol/muc#user',
  /** XEP-0249 direct MUC invitation. */
  conferenceInvite: 'jabber:x:conference',
  /** XEP-0384 OMEMO, the version clients deploy and the current one. */
  omemo: 'eu.siacs.conversations.axolotl',
  omemo2: 'urn:xmpp:omemo:2',
  /** XEP-0373 OpenPGP for XMPP, and XEP-0027's legacy signing and encryption. */
  openpgp: 'urn:xmpp:openpgp:0',
  legacyPgp: 'jabber:x:encrypted',
  /** XEP-0380 explicit message encryption. */
  eme: 'urn:xmpp:eme:0',
  /** XEP-0353 Jingle Message Initiation (call invitations). */
  jingleMessage: 'urn:xmpp:jingle-message:0',
  /** XEP-0357 push notifications. */
  push: 'urn:xmpp:push:0',
  /** The proxy's own element in the user's private XML storage: push registrations (push-registrations.ts). */
  pushStorage: 'urn:x-smacks-proxy:push:0',
  /** XEP-0049 private XML storage. */
  private: 'jabber:iq:private',
  dataForms: 'jabber:x:data',
  pubsub: 'http://jabber.org/protocol/pubsub',
  discoInfo: 'http://jabber.org/protocol/disco#info',
} as const;

/** The XEP-0198 namespaces a client may use; the proxy answers in the one the client used. */
export type SmNamespace = typeof NS.sm3 | typeof NS.sm2;

export function isSmNamespace(ns: string | undefined): ns is SmNamespace {
  return ns === NS.sm3 || ns === NS.sm2;
}

/** XEP-0198 §2: only iq, message and presence in the content namespace are counted (`localName` and `ns` of a scanned element). */
export function isStanza(element: { readonly localName: string; readonly ns: string | undefined }): boolean {
  const name = element.localName;
  return (name === 'message' || name === 'presence' || name === 'iq') && element.ns === NS.client;
}
