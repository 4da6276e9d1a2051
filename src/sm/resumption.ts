import { bare, resourceOf } from '../xml/jid.js';
import { smFailure, withH, type EndedReason, type SmFailure } from './failures.js';
import type { AckCheck } from './unacked-queue.js';

/**
 * What a `<resume previd h/>` finds under its SM-ID, as the session registry reports it at the
 * moment of the decision (XEP-0198 §5). Plain data: the decision below needs no session.
 */
export type ResumeCandidate =
  /** No session with that id, live or remembered. */
  | { readonly kind: 'unknown' }
  /**
   * The session is in the other process of an upgrade (README, Upgrading): handed over from this
   * one, or announced and not arrived yet. Where the client connects again, it finds it.
   */
  | { readonly kind: 'elsewhere' }
  /** The session ended; the registry remembers how, its account (and the domain it was opened to) and its final `h`. */
  | { readonly kind: 'ended'; readonly reason: EndedReason; readonly bareJid: string; readonly domain: string; readonly h: number }
  /** A live session (attached or hibernating). */
  | {
      readonly kind: 'live';
      /** Its account, once bound. */
      readonly bareJid: string | undefined;
      /** Its full JID, once bound. */
      readonly jid: string | undefined;
      /** The domain its client's stream was opened to. */
      readonly domain: string | undefined;
      /** It can still be resumed (its queue never overflowed, it is not ending). */
      readonly resumable: boolean;
      /** The legacy server ended its stream while its client was away: its queue waits for the next bind. */
      readonly upstreamGone: boolean;
      /**
       * Its stream is gone and no other session took its full JID (a restart, not a resource
       * conflict): a resuming stream may bind that JID and become the session's.
       */
      readonly renewable: boolean;
      /** Its handled count, told to the client in a `<failed/>` about `h`. */
      readonly h: number;
      /** The client's `h` against the session's unacked queue. */
      readonly ack: AckCheck;
    };

export type ResumeDecision =
  /**
   * With `renewUpstream`, the session's own upstream stream is gone (the legacy server restarted)
   * and the resuming stream bound the very same full JID: that stream becomes the session's.
   */
  | { readonly ok: true; readonly renewUpstream?: true }
  /** With `takeQueue`, the resuming stream takes the session's unacked stanzas, for its client's next bind. */
  | { readonly ok: false; readonly failure: SmFailure; readonly takeQueue?: true }
  /**
   * No answer: the connection is dropped as in a network cut, so that the client connects again
   * and resumes where the session is now (an upgrade moves it between processes). A `<failed/>`
   * would make it bind afresh, and the legacy server end the session it could have resumed.
   */
  | { readonly ok: false; readonly reconnect: true };

/**
 * Who is resuming: the account the new stream authenticated as (bare JID, as the legacy server
 * binds it) and the domain the stream was opened to. Both must be the session's: two domains of
 * the proxy may share a legacy server that binds the same bare JID for both.
 */
export interface ResumingAccount {
  readonly bareJid: string;
  readonly domain: string;
  /** The full JID the resuming stream bound, when the legacy server told the account by a bind. */
  readonly boundJid?: string;
}

function sameAccount(
  candidate: { readonly bareJid: string | undefined; readonly domain: string | undefined },
  account: ResumingAccount,
): boolean {
  return candidate.bareJid !== undefined && sameBareJid(candidate.bareJid, account.bareJid) && candidate.domain === account.domain;
}

/**
 * Two bare JIDs as the legacy server bound them name the same account when they are equal but for
 * the case of ASCII letters: every server's rule (stringprep Nodeprep and Nameprep, RFC 3920 App. A
 * and RFC 3491; PRECIS UsernameCaseMapped, RFC 8265 §3.3) maps `A`-`Z` to `a`-`z`, and ejabberd binds
 * the user name as typed (`ALICE@…`). Nothing else is folded: beyond ASCII the servers' rules
 * differ (case folding, width, normalisation forms), and a fold one server does not make would let
 * one account resume another's session. Another spelling beyond ASCII case is refused instead.
 */
export function sameBareJid(a: string, b: string): boolean {
  return a === b || (a.length === b.length && asciiLower(a) === asciiLower(b));
}

/** Two full JIDs name the same resource of the same account: {@link sameBareJid}, and resources equal byte for byte. */
export function sameFullJid(a: string, b: string): boolean {
  return resourceOf(a) === resourceOf(b) && sameBareJid(bare(a), bare(b));
}

/** One string per full JID that {@link sameFullJid} takes for the same one: a map key. */
export function fullJidKey(bareJid: string, resource: string): string {
  return `${asciiLower(bareJid)}/${resource}`;
}

function asciiLower(text: string): string {
  return text.replace(/[A-Z]+/g, (letters) => letters.toLowerCase());
}

/**
 * The answer before the resuming client's account is known (it has authenticated, but which
 * account that is comes from the SASL exchange or the legacy server): an unknown id is refused at
 * once; anything else waits for the identity, since what an ended session remembers (how it
 * ended, its `h`) is told to its own account only.
 */
export function decideBeforeIdentity(candidate: ResumeCandidate): ResumeDecision | undefined {
  if (candidate.kind === 'elsewhere') return { ok: false, reconnect: true };
  return candidate.kind === 'unknown' ? { ok: false, failure: smFailure('resume-unknown-id') } : undefined;
}

/**
 * The decision once the resuming client's account is known (`account`: its bare JID; `undefined`
 * when the legacy server refused the identity check). XEP-0198 §5: "the server MUST verify that
 * the resuming entity is the same as the original entity"; an `h` the queue cannot take
 * (XEP-0198 §6: above what was sent; or below what the client already acknowledged) refuses the
 * resume and leaves the session as it was. The same decision serves a `<resume/>` nonza and,
 * later, a resume inline in SASL2.
 */
export function decideResume(candidate: ResumeCandidate, account: ResumingAccount | undefined): ResumeDecision {
  if (account === undefined) return { ok: false, failure: smFailure('resume-identity-refused') };
  switch (candidate.kind) {
    case 'elsewhere':
      return { ok: false, reconnect: true };
    case 'unknown':
      // It was live when the `<resume/>` arrived, and has gone since without a trace.
      return { ok: false, failure: smFailure('resume-not-resumable') };
    case 'ended':
      // How it ended and its h go to its own account only; any other learns no more than of an unknown id.
      if (!sameAccount(candidate, account)) return { ok: false, failure: smFailure('resume-unknown-id') };
      return { ok: false, failure: withH(smFailure('resume-ended', candidate.reason), candidate.h) };
    case 'live': {
      if (candidate.bareJid === undefined) return { ok: false, failure: smFailure('resume-not-resumable') };
      if (!sameAccount(candidate, account)) return { ok: false, failure: smFailure('resume-other-account') };
      if (!candidate.resumable) return { ok: false, failure: smFailure('resume-not-resumable') };
      const { ack } = candidate;
      if (ack.kind === 'too-high') return { ok: false, failure: withH(smFailure('resume-h-too-high', ack.h, ack.sendCount), candidate.h) };
      if (ack.kind === 'backwards') return { ok: false, failure: withH(smFailure('resume-h-below-ack', ack.h, ack.previous), candidate.h) };
      // Its upstream session is gone, and with it the full JID: the client binds again, and gets the queue then.
      if (candidate.upstreamGone) {
        // The same resource on a new stream: contacts see the same full JID, so the client resumes
        // as if nothing happened. Another one would be a JID the client never learns from
        // <resumed/>: it binds afresh instead, and the queue follows that bind.
        if (candidate.renewable && account.boundJid !== undefined && account.boundJid === candidate.jid)
          return { ok: true, renewUpstream: true };
        return { ok: false, failure: withH(smFailure('resume-upstream-restarted'), candidate.h), takeQueue: true };
      }
      return { ok: true };
    }
  }
}
