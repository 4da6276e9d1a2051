import { parseElement } from '../xml/element.js';

/**
 * Whether the client's presence is out there: it sent available presence, broadcast (RFC 6121
 * §4.2) or directed (§4.6), and no broadcast unavailable presence since (which also ends directed
 * presence, §4.6.3). When the session ends, the legacy server is told the user is gone before the
 * stream closes (lingering-upstream.ts), but only then: an unavailable presence from a client that
 * never showed itself would still go to every contact.
 */
export class ClientPresence {
  #shown: boolean;

  /** `shown`: as it was in the process that handed the session over (an upgrade). */
  constructor(shown = false) {
    this.#shown = shown;
  }

  get shown(): boolean {
    return this.#shown;
  }

  /** Sees each stanza the client sends; parses presence only. */
  observe(localName: string, bytes: Buffer): void {
    if (localName !== 'presence') return;
    const presence = parseElement(bytes);
    const type = presence.attrs.type as string | undefined;
    if (type === undefined) this.#shown = true;
    else if (type === 'unavailable' && presence.attrs.to === undefined) this.#shown = false;
  }
}
