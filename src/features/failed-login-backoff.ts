import { ErrorCode } from '../errors.js';
import type { FailedLogins } from '../session/failed-logins.js';
import type { SessionHook } from '../session/hooks.js';
import { NS } from '../xml/namespaces.js';

/**
 * Refuses a SASL `<auth/>` from an address with too many failed logins (failed-logins.ts) before
 * it reaches the legacy server: RFC 6120 §6.5.12 `<temporary-auth-failure/>`, with the wait in
 * the text. The stream goes on; the client may try again later.
 */
export function failedLoginBackoff(failedLogins: FailedLogins, now: () => number): SessionHook {
  return {
    name: 'failed-login-backoff',
    phases: ['authenticating'],
    fromClient(element, _phase, session) {
      if (element.localName !== 'auth' || element.ns !== NS.sasl) return undefined;
      const waitMs = failedLogins.refusedFor(session.addressKey, now());
      if (waitMs === 0) return undefined;
      const seconds = Math.ceil(waitMs / 1000);
      session.log.info({ code: ErrorCode.LOGIN_BACKOFF, waitSeconds: seconds }, 'login refused: too many failed logins from this address');
      return {
        kind: 'answer-nonza',
        nonza:
          `<failure xmlns='${NS.sasl}'><temporary-auth-failure/>` +
          `<text xml:lang='en'>too many failed logins from your address; try again in ${seconds} s</text></failure>`,
      };
    },
  };
}
