import { describe, expect, it } from 'vitest';
import { sanitizeForLog } from '../../src/xml/sanitize.js';

const el = (xml: string, ns: string | undefined, localName: string) => ({ bytes: Buffer.from(xml), name: localName, localName, ns });

describe('sanitizeForLog', () => {
  it('never shows a SASL payload', () => {
    const auth = el(
      "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>",
      'urn:ietf:params:xml:ns:xmpp-sasl',
      'auth',
    );
    const line = sanitizeForLog(auth);
    expect(line).not.toContain('AGFsaWNl');
    expect(line).toContain('auth');
  });

  it('shortens the SM-ID of a <resume/> or <enabled/>', () => {
    const resume = sanitizeForLog(el("<resume xmlns='urn:xmpp:sm:3' previd='Abc123xyzSECRETpart' h='4'/>", 'urn:xmpp:sm:3', 'resume'));
    expect(resume).toBe("<resume xmlns='urn:xmpp:sm:3' previd='Abc123…' h='4'/>");
    const enabled = sanitizeForLog(
      el(`<enabled xmlns="urn:xmpp:sm:2" id="Abc123xyzSECRETpart" resume="true"/>`, 'urn:xmpp:sm:2', 'enabled'),
    );
    expect(enabled).toBe(`<enabled xmlns="urn:xmpp:sm:2" id="Abc123…" resume="true"/>`);
  });

  it('shows other elements as they are', () => {
    expect(sanitizeForLog(el("<r xmlns='urn:xmpp:sm:3'/>", 'urn:xmpp:sm:3', 'r'))).toBe("<r xmlns='urn:xmpp:sm:3'/>");
  });
});
