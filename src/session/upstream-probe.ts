import { randomBytes } from 'node:crypto';
import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import type { ScannedElement } from '../xml/stream-scanner.js';

/**
 * One round trip on a hibernating session's upstream stream: an XEP-0199 ping to the legacy server
 * (RFC 6120 §8.2.3: every iq of type get is answered, with an error at least, so a server without
 * XEP-0199 answers too). A stream answers in order, so an answer proves that the stream was still
 * the user's session after everything the server did before it read the ping; a stream the server
 * ended meanwhile never answers.
 *
 * The resume of a session whose account the legacy server confirmed by binding a resource uses it
 * (README, Resumption and the legacy server): on a server that allows one resource per account
 * that bind replaces the hibernated session, and the replacement must be seen before `<resumed/>`,
 * not after.
 */
export class UpstreamProbe {
  private readonly id = `smacks-probe-${randomBytes(6).toString('hex')}`;
  private settle!: () => void;
  #settled = false;
  private readonly timer: NodeJS.Timeout;
  /** Settles when the legacy server answered, when {@link settled} was called, or after `timeoutMs`. */
  readonly done: Promise<void>;

  constructor(send: (data: string) => void, domain: string, timeoutMs: number) {
    this.done = new Promise((resolve) => {
      this.settle = resolve;
    });
    this.timer = setTimeout(() => this.settled(), timeoutMs);
    this.timer.unref();
    send(`<iq type='get' id='${this.id}' to='${escapeXml(domain)}'><ping xmlns='${NS.ping}'/></iq>`);
  }

  /** Whether `element`, from the legacy server, is the answer (then it is the proxy's own: the client never sees it). */
  answers(element: ScannedElement): boolean {
    if (element.localName !== 'iq' || !element.bytes.includes(this.id)) return false;
    const iq = parseElement(element.bytes);
    if (iq.attrs.id !== this.id || (iq.attrs.type !== 'result' && iq.attrs.type !== 'error')) return false;
    this.settled();
    return true;
  }

  /** Nothing more to wait for: answered, timed out, or the session is no longer hibernating. */
  settled(): void {
    this.#settled = true;
    clearTimeout(this.timer);
    this.settle();
  }

  /** Whether {@link done} has settled: a later resume needs a round trip of its own. */
  get isSettled(): boolean {
    return this.#settled;
  }
}
