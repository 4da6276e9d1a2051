/** The bare JID of a full one (RFC 7622 §3.1: everything before the resource). */
export function bare(jid: string): string {
  const slash = jid.indexOf('/');
  return slash === -1 ? jid : jid.slice(0, slash);
}

/** The resource of a full JID (RFC 7622 §3.4: everything after the first slash); '' for a bare JID. */
export function resourceOf(jid: string): string {
  const slash = jid.indexOf('/');
  return slash === -1 ? '' : jid.slice(slash + 1);
}
