import { InvariantError } from '../errors.js';
import { isSeq, nextSeq } from './sequence.js';

/**
 * The proxy's `h`: how many stanzas from the client it has handled (XEP-0198 §4).
 *
 * XEP-0198 §4 (https://xmpp.org/extensions/xep-0198.html#acking): "The counter for the received
 * stanzas ('h') is set to zero and started after receiving either <enable/> or <enabled/>", so the
 * session creates this object when `<enable/>` is *received* (a stanza pipelined right behind it
 * already counts) and, as the README promises, calls {@link handled} once the stanza is written to the
 * upstream socket. Only `<message/>`, `<presence/>` and `<iq/>` count; nonzas never do.
 */
export class InboundCounter {
  #h: number;

  /**
   * @param initial starting value, default 0 (a fresh `<enable/>` always starts at 0, also after a
   *   failed resume). A sequence value in [0, 2^32 - 1].
   * @throws InvariantError if `initial` is not a sequence value.
   */
  constructor(initial = 0) {
    if (!isSeq(initial)) throw new InvariantError(`inbound counter initial value ${initial} is not in [0, 4294967295]`);
    this.#h = initial;
  }

  /** One more stanza handled. XEP-0198 §4: after 2^32 - 1 the counter becomes 0. */
  handled(): void {
    this.#h = nextSeq(this.#h);
  }

  /** Stanzas handled so far, modulo 2^32: the value to put in `<a h/>` and `<resumed h/>`. */
  get h(): number {
    return this.#h;
  }
}
