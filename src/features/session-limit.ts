import { ErrorCode } from '../errors.js';
import type { SessionHook } from '../session/hooks.js';
import { parseElement } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';

/**
 * `limits.maxSessions` at bind: RFC 6120 §7.6.2.1, "If the account has reached a limit on the
 * number of simultaneous connected resources allowed, the server MUST return a
 * <resource-constraint/> stanza error"; here the limit is the proxy's, over all accounts. A resume
 * binds nothing, so it is never refused by it, and connections still logging in never count.
 */
export function sessionLimit(boundSessions: () => number, maxSessions: () => number): SessionHook {
  return {
    name: 'session-limit',
    phases: ['authenticated'],
    fromClient(element, _phase, session) {
      const limit = maxSessions();
      if (element.localName !== 'iq' || !element.bytes.includes(NS.bind) || boundSessions() < limit) return undefined;
      const iq = parseElement(element.bytes);
      if (iq.attrs.type !== 'set' || iq.getChild('bind', NS.bind) === undefined) return undefined;
      session.log.warn({ code: ErrorCode.TOO_MANY_SESSIONS, limit }, 'session limit reached; bind refused');
      const id = typeof iq.attrs.id === 'string' ? ` id='${escapeXml(iq.attrs.id)}'` : '';
      return {
        kind: 'answer-stanza',
        stanza:
          `<iq type='error'${id}><error type='wait'><resource-constraint xmlns='${NS.stanzas}'/>` +
          `<text xmlns='${NS.stanzas}' xml:lang='en'>the proxy holds its maximum of ${limit} sessions (maxSessions)</text></error></iq>`,
      };
    },
  };
}
