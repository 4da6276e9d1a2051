import type { AppCondition } from '../errors.js';
import { escapeXml } from '../xml/escape.js';
import { NS, type SmNamespace } from '../xml/namespaces.js';
import { renderAppCondition } from '../xml/stream-error.js';

/** Why a stream-management session ended; a late `<resume/>` of it is told (README, Errors). */
export type EndedReason =
  'expired' | 'closed' | 'upstream-lost' | 'queue-overflow' | 'error' | 'shutdown' | 'kicked' | 'drained' | 'moved' | 'replaced';

/** Whether `value` names an {@link EndedReason} (one read back from another process of the proxy). */
export function isEndedReason(value: unknown): value is EndedReason {
  return typeof value === 'string' && Object.hasOwn(ENDED_TEXT, value);
}

const ENDED_TEXT: Readonly<Record<EndedReason, string>> = {
  expired: 'expired: the client did not come back within the hibernation time',
  closed: 'was closed by the client',
  'upstream-lost': 'ended because the legacy server closed it',
  'queue-overflow': 'ended because too many stanzas went unacknowledged',
  error: 'ended with a stream error',
  shutdown: 'ended when the proxy restarted',
  kicked: 'was ended by the server administrator',
  drained: 'was ended when its server was drained for maintenance',
  moved: 'moved to the new process of an upgrade',
  replaced: 'was replaced by a new login of the same resource, which got what it had queued',
};

/** The RFC 6120 §8.3.3 conditions a `<failed/>` carries here. */
type FailedCondition = 'bad-request' | 'feature-not-implemented' | 'item-not-found' | 'undefined-condition' | 'unexpected-request';

interface FailureSpec {
  readonly condition: FailedCondition;
  readonly text: string;
  readonly appCondition?: AppCondition;
}

/**
 * Every XEP-0198 `<failed/>` the proxy sends, by key: the key is the stable code in the log line
 * (`failed`), the condition and text are what the client sees ("users struggle to learn why a
 * resume failed": the text says it). The README's Errors section lists them.
 */
export const SM_FAILURES = {
  /** XEP-0198 defines no such element. */
  'unknown-request': (name: string): FailureSpec => ({
    condition: 'feature-not-implemented',
    text: `<${name}/> is not a stream management request the proxy knows`,
  }),
  /** XEP-0198 §3: "the client MUST NOT attempt to enable stream management until after it has completed resource binding". */
  'enable-before-bind': (): FailureSpec => ({ condition: 'unexpected-request', text: 'bind a resource before enabling stream management' }),
  /** XEP-0198 §3: enabled at most once per stream. */
  'enable-twice': (): FailureSpec => ({ condition: 'unexpected-request', text: 'stream management is already enabled' }),
  /** The `<enable/>` attributes are invalid (enable-decision.ts says which). */
  'enable-invalid': (why: string): FailureSpec => ({ condition: 'bad-request', text: why }),
  /** XEP-0198 §5: resumption follows authentication. */
  'resume-before-auth': (): FailureSpec => ({ condition: 'unexpected-request', text: 'authenticate before resuming' }),
  /** XEP-0198 §5: `<resume/>` takes the place of resource binding. */
  'resume-after-bind': (): FailureSpec => ({ condition: 'unexpected-request', text: 'resume must come before resource binding' }),
  /** XEP-0198 §5: `<resume/>` carries `h`. */
  'resume-without-h': (): FailureSpec => ({ condition: 'bad-request', text: '<resume/> needs an h attribute (XEP-0198 §5)' }),
  /** No such session, or one this account cannot see (XEP-0198 §5 `item-not-found`). */
  'resume-unknown-id': (): FailureSpec => ({ condition: 'item-not-found', text: 'unknown or expired session id' }),
  /** The session ended; the proxy remembers why (and its `h`). */
  'resume-ended': (reason: EndedReason): FailureSpec => ({ condition: 'item-not-found', text: `the session ${ENDED_TEXT[reason]}` }),
  /**
   * The legacy server ended the user's stream while the client was away (a restart): the session
   * cannot continue, but its queue was kept and follows the client's next bind on this stream.
   */
  'resume-upstream-restarted': (): FailureSpec => ({
    condition: 'item-not-found',
    text: 'the legacy server ended the session while you were away; bind again: the stanzas that waited for you follow the bind',
  }),
  /** The session exists but stopped being resumable (its queue overflowed, or it is ending). */
  'resume-not-resumable': (): FailureSpec => ({ condition: 'item-not-found', text: 'the session can no longer be resumed' }),
  /** The legacy server refused the identity check's bind. */
  'resume-identity-refused': (): FailureSpec => ({ condition: 'item-not-found', text: 'the legacy server refused the identity check' }),
  /** XEP-0198 §5: "the server MUST verify that the resuming entity is the same as the original entity". */
  'resume-other-account': (): FailureSpec => ({ condition: 'item-not-found', text: 'the session belongs to another account' }),
  /** XEP-0198 §6: `h` acks more than was sent; `<handled-count-too-high/>` says by how much. */
  'resume-h-too-high': (h: number, sendCount: number): FailureSpec => ({
    condition: 'undefined-condition',
    text: `h=${h} acks more than the ${sendCount} stanzas sent`,
    appCondition: { name: 'handled-count-too-high', xmlns: NS.sm3, attrs: { h: String(h), 'send-count': String(sendCount) } },
  }),
  /** `h` below the last acknowledged count: the stanzas in between are gone and cannot be replayed. */
  'resume-h-below-ack': (h: number, previous: number): FailureSpec => ({
    condition: 'undefined-condition',
    text: `h=${h} is below the last acknowledged count ${previous}`,
  }),
} as const;

export type SmFailureKey = keyof typeof SM_FAILURES;

/** One `<failed/>` answer: what the registry says for a key, and the session's `h` when the client may learn it. */
export interface SmFailure extends FailureSpec {
  readonly key: SmFailureKey;
  /** XEP-0198 §5: a `<failed/>` of a resume may carry the server's `h`, so the client knows what arrived. */
  readonly h: number | undefined;
}

/** The failure for `key`, with its arguments (the element's name, the reason, the counts). */
export function smFailure<K extends SmFailureKey>(key: K, ...args: Parameters<(typeof SM_FAILURES)[K]>): SmFailure {
  const spec = (SM_FAILURES[key] as (...a: Parameters<(typeof SM_FAILURES)[K]>) => FailureSpec)(...args);
  return { key, h: undefined, ...spec };
}

/** The same failure, telling the client `h`. */
export function withH(failure: SmFailure, h: number | undefined): SmFailure {
  return { ...failure, h };
}

/** XEP-0198 §5 syntax: `<failed xmlns h?>` with the defined condition, a `<text/>` and the application condition. */
export function renderFailed(ns: SmNamespace, failure: SmFailure): string {
  const hAttr = failure.h === undefined ? '' : ` h='${failure.h}'`;
  const app = failure.appCondition === undefined ? '' : renderAppCondition(failure.appCondition);
  return (
    `<failed xmlns='${ns}'${hAttr}><${failure.condition} xmlns='${NS.stanzas}'/>` +
    `<text xmlns='${NS.stanzas}' xml:lang='en'>${escapeXml(failure.text)}</text>${app}</failed>`
  );
}
