import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';

/**
 * Stanzas for a full JID that no session holds any more and that nothing could answer (README,
 * What it does): answers the legacy server never read, a queue handed to a login that then failed
 * before its bind was granted. The next session that binds that full JID gets them, first and in
 * order ({@link take}); `keepMs` after the first of them was kept they are dropped, with a
 * warning that counts them. They are held outside the queue budgets: at most what the sessions
 * they come from had queued.
 */
export class KeptStanzas {
  readonly #byJid = new Map<string, { readonly stanzas: Buffer[]; readonly timer: NodeJS.Timeout }>();

  /** Full JIDs with stanzas waiting. */
  get count(): number {
    return this.#byJid.size;
  }

  /**
   * Keeps `stanzas` for `jid`, after any kept for it already, until `keepMs` after the first keep
   * for it; with 0 (the proxy stops) nothing is kept and the warning counts them at once.
   */
  keep(jid: string, stanzas: readonly Buffer[], keepMs: number, log: Logger): void {
    if (stanzas.length === 0) return;
    if (keepMs <= 0) {
      log.warn({ code: ErrorCode.KEPT_STANZAS_DROPPED, dropped: stanzas.length }, 'stanzas no session can take are dropped unanswered');
      return;
    }
    log.info({ kept: stanzas.length }, 'stanzas wait for the next session of this resource');
    // Behind what is kept already, whose time runs on: no keep makes an older stanza wait longer.
    const earlier = this.#byJid.get(jid);
    if (earlier !== undefined) {
      earlier.stanzas.push(...stanzas);
      return;
    }
    const kept = [...stanzas];
    const timer = setTimeout(() => {
      if (this.#byJid.get(jid)?.timer !== timer) return;
      this.#byJid.delete(jid);
      log.warn(
        { code: ErrorCode.KEPT_STANZAS_DROPPED, dropped: kept.length },
        'no session of this resource came back for the stanzas kept for it; they are dropped unanswered',
      );
    }, keepMs);
    timer.unref();
    this.#byJid.set(jid, { stanzas: kept, timer });
  }

  /** The proxy stops (a shutdown, or the old process of an upgrade): nothing kept can reach a session any more. */
  dropAll(log: Logger): void {
    let dropped = 0;
    for (const entry of this.#byJid.values()) {
      clearTimeout(entry.timer);
      dropped += entry.stanzas.length;
    }
    this.#byJid.clear();
    if (dropped > 0)
      log.warn(
        { code: ErrorCode.KEPT_STANZAS_DROPPED, dropped },
        'stanzas kept for sessions that did not come back are dropped unanswered at shutdown',
      );
  }

  /** Takes what is kept for the full JIDs that `matches`, in order. */
  take(matches: (jid: string) => boolean): Buffer[] {
    const taken: Buffer[] = [];
    for (const [jid, entry] of this.#byJid) {
      if (!matches(jid)) continue;
      clearTimeout(entry.timer);
      this.#byJid.delete(jid);
      taken.push(...entry.stanzas);
    }
    return taken;
  }
}
