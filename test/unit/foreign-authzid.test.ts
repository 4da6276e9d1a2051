import { describe, expect, it } from 'vitest';
import { refuseForeignAuthzid } from '../../src/features/foreign-authzid.js';
import { parseElement } from '../../src/xml/element.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const auth = (mechanism: string, initial: string) =>
  scanFragment(Buffer.from(`<auth xmlns='${SASL}' mechanism='${mechanism}'>${Buffer.from(initial).toString('base64')}</auth>`), LIMITS);

describe('refuseForeignAuthzid (RFC 6120 §6.5.6)', () => {
  it.each([
    ['PLAIN: bob authorizing as alice', auth('PLAIN', 'alice@localhost\0bob\0b-secret')],
    ['PLAIN: a bare user name as authzid', auth('PLAIN', 'alice\0bob\0b-secret')],
    ['PLAIN: alice on another domain', auth('PLAIN', 'alice@elsewhere\0alice\0a-secret')],
    ['SCRAM: a= naming another account', auth('SCRAM-SHA-256', 'n,a=alice@localhost,n=bob,r=nonce')],
  ])('refuses %s with <invalid-authzid/>', (_label, element) => {
    const answer = refuseForeignAuthzid(element, 'localhost');
    expect(answer).toBeDefined();
    const failure = parseElement(answer!);
    expect(failure.is('failure', SASL)).toBe(true);
    expect(failure.getChild('invalid-authzid')).toBeDefined();
    expect(answer).not.toContain('secret');
  });

  it.each([
    ['PLAIN without authzid', auth('PLAIN', '\0bob\0b-secret')],
    ['PLAIN with the own bare JID', auth('PLAIN', 'bob@localhost\0bob\0b-secret')],
    ['SCRAM without a=', auth('SCRAM-SHA-1', 'n,,n=bob,r=nonce')],
    ['SCRAM with the own bare JID', auth('SCRAM-SHA-1', 'n,a=bob@localhost,n=bob,r=nonce')],
    ['another mechanism', auth('DIGEST-MD5', '')],
  ])('relays %s', (_label, element) => {
    expect(refuseForeignAuthzid(element, 'localhost')).toBeUndefined();
  });
});
