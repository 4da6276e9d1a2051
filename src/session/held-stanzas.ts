/**
 * Stanzas for the attached client that a session hook held back (XEP-0352 client state
 * indication: presence and chat states while the client says it is inactive), in arrival order.
 * They were never sent, so stream management has not counted them: they go out (and are counted)
 * when released, or join the unacked queue when the client link is lost, or are answered like
 * unacked stanzas when the session ends. An entry held under a key replaces the earlier entry with
 * that key (only the latest presence of a contact matters) and moves to the end, so what is
 * released keeps the order in which the surviving stanzas arrived.
 *
 * Pure bookkeeping: the session decides when to hold and when to release.
 */
export class HeldStanzas {
  /** Whether the client asked to be spared what can wait (`<inactive/>`); every client link starts without. */
  holding = false;
  // A Map keeps insertion order; delete + set moves a superseded key to the end. Unkeyed entries get a number of their own.
  readonly #entries = new Map<string | number, Buffer>();
  #unkeyed = 0;
  #bytes = 0;
  #superseded = 0;

  /** Stanzas held now. */
  get length(): number {
    return this.#entries.size;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Stanzas dropped because a later one with the same key replaced them, since the session began. */
  get superseded(): number {
    return this.#superseded;
  }

  /** Holds `bytes`; with a `key`, the earlier stanza held under it is dropped (never sent, never counted). */
  hold(bytes: Buffer, key: string | undefined): void {
    const id = key ?? this.#unkeyed++;
    const earlier = this.#entries.get(id);
    if (earlier !== undefined) {
      this.#entries.delete(id);
      this.#bytes -= earlier.length;
      this.#superseded++;
    }
    this.#entries.set(id, bytes);
    this.#bytes += bytes.length;
  }

  /** Takes the oldest stanza held, or `undefined` when none is. */
  shift(): Buffer | undefined {
    const first = this.#entries.entries().next();
    if (first.done === true) return undefined;
    const [id, bytes] = first.value;
    this.#entries.delete(id);
    this.#bytes -= bytes.length;
    return bytes;
  }

  /** Empties the buffer; returns what it held, oldest first. */
  take(): Buffer[] {
    const held = [...this.#entries.values()];
    this.#entries.clear();
    this.#bytes = 0;
    return held;
  }
}
