import { describe, expect, it } from 'vitest';
import { renderFailed, smFailure, SM_FAILURES, withH, type SmFailureKey } from '../../src/sm/failures.js';
import { parseElement } from '../../src/xml/element.js';

const SM3 = 'urn:xmpp:sm:3';
const STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

describe('XEP-0198 <failed/> registry', () => {
  it('renders the condition, the text and h in the namespace of the request', () => {
    const failed = parseElement(renderFailed('urn:xmpp:sm:2', withH(smFailure('resume-ended', 'expired'), 7)));
    expect(failed.attrs).toEqual({ xmlns: 'urn:xmpp:sm:2', h: '7' });
    expect(failed.getChild('item-not-found', STANZAS)).toBeDefined();
    expect(failed.getChildText('text', STANZAS)).toBe('the session expired: the client did not come back within the hibernation time');
  });

  it('carries the application condition of a too-high h (XEP-0198 §6)', () => {
    const failed = parseElement(renderFailed(SM3, withH(smFailure('resume-h-too-high', 9, 4), 2)));
    expect(failed.getChild('undefined-condition', STANZAS)).toBeDefined();
    expect(failed.getChild('handled-count-too-high', SM3)?.attrs).toMatchObject({ h: '9', 'send-count': '4' });
    expect(failed.attrs.h).toBe('2');
  });

  it('escapes texts built from what the client sent', () => {
    const failed = parseElement(renderFailed(SM3, smFailure('unknown-request', "x'<&")));
    expect(failed.getChildText('text', STANZAS)).toBe("<x'<&/> is not a stream management request the proxy knows");
  });

  it('gives every key its own text, so a user can tell them apart', () => {
    const texts = (Object.keys(SM_FAILURES) as SmFailureKey[]).map((key) => {
      const make = SM_FAILURES[key] as (...args: unknown[]) => { text: string };
      return make('x', 1, 2).text;
    });
    expect(new Set(texts).size).toBe(texts.length);
  });
});
