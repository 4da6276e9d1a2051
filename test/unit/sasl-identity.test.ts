import { describe, expect, it } from 'vitest';
import { SaslIdentity } from '../../src/session/sasl-identity.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

const SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64');
const auth = (mechanism: string, initial?: string) =>
  scanFragment(Buffer.from(`<auth xmlns='${SASL}' mechanism='${mechanism}'>${initial === undefined ? '' : b64(initial)}</auth>`), LIMITS);
const response = (text: string) => scanFragment(Buffer.from(`<response xmlns='${SASL}'>${b64(text)}</response>`), LIMITS);
const abort = () => scanFragment(Buffer.from(`<abort xmlns='${SASL}'/>`), LIMITS);

function identityAfter(...elements: ReturnType<typeof auth>[]): string | undefined {
  const identity = new SaslIdentity('localhost');
  for (const element of elements) identity.fromClient(element);
  return identity.bareJid;
}

describe('SaslIdentity: the account a SASL exchange names', () => {
  it.each([
    ['PLAIN', auth('PLAIN', '\0alice\0secret'), 'alice@localhost'],
    ['PLAIN with the authzid alice@localhost, the same account', auth('PLAIN', 'alice@localhost\0alice\0secret'), 'alice@localhost'],
    // Prosody and jabberd2 ignore a PLAIN authzid and authenticate bob: it must never name alice.
    ['PLAIN with an authzid naming another account', auth('PLAIN', 'alice@localhost\0bob\0bobs-secret'), undefined],
    ['PLAIN with a non-JID authzid', auth('PLAIN', 'alice\0alice\0secret'), undefined],
    ['PLAIN with a JID as user name', auth('PLAIN', '\0alice@localhost\0secret'), undefined],
    ['PLAIN with a password holding NUL', auth('PLAIN', '\0alice\0se\0cret'), undefined],
    ['SCRAM-SHA-1', auth('SCRAM-SHA-1', 'n,,n=alice,r=abc'), 'alice@localhost'],
    ['SCRAM-SHA-256 with escapes', auth('SCRAM-SHA-256', 'n,,n=a=2Cb=3Dc,r=abc'), 'a,b=c@localhost'],
    ['SCRAM with the authzid of the same account', auth('SCRAM-SHA-1', 'n,a=alice@localhost,n=alice,r=abc'), 'alice@localhost'],
    ['SCRAM with an authzid naming another account', auth('SCRAM-SHA-1', 'y,a=alice@localhost,n=bob,r=abc'), undefined],
    ['SCRAM with channel binding', auth('SCRAM-SHA-1-PLUS', 'p=tls-exporter,,n=alice,r=abc'), 'alice@localhost'],
    // RFC 2831 has no initial response; servers read the user from a later response, each its own way.
    ['DIGEST-MD5, even with a user name in the initial response', auth('DIGEST-MD5', 'username="alice"'), undefined],
    ['EXTERNAL', auth('EXTERNAL', '='), undefined],
    ['ANONYMOUS', auth('ANONYMOUS'), undefined],
    // Mechanism names are compared exactly: 'plaın' (dotless i) upper-cases to PLAIN in JavaScript.
    ['a mechanism name that only case-folds to PLAIN', auth('pla\u0131n', '\0alice\0secret'), undefined],
    ['a lower-case mechanism name', auth('plain', '\0alice\0secret'), undefined],
  ])('%s', (_label, element, expected) => {
    expect(identityAfter(element)).toBe(expected);
  });

  it('names nothing from base64 that is not canonical (a server refuses it, RFC 6120 §6.4.2)', () => {
    const canonical = b64('\0alice\0secret');
    const noisy = `${canonical.slice(0, 4)}*${canonical.slice(4)}`;
    const element = scanFragment(Buffer.from(`<auth xmlns='${SASL}' mechanism='PLAIN'>${noisy}</auth>`), LIMITS);
    expect(identityAfter(element)).toBeUndefined();
  });

  it('names nothing when a second <auth/> is pipelined before the server answered the first', () => {
    expect(identityAfter(auth('PLAIN', '\0alice\0secret'), auth('PLAIN', '\0bob\0guess'))).toBeUndefined();
  });

  it('names nothing after an <abort/>, until the server failure ends that exchange', () => {
    const identity = new SaslIdentity('localhost');
    identity.fromClient(auth('PLAIN', '\0alice\0secret'));
    identity.fromClient(abort());
    identity.fromClient(auth('PLAIN', '\0bob\0secret'));
    expect(identity.bareJid).toBeUndefined();
    identity.onFailure();
    identity.fromClient(auth('PLAIN', '\0bob\0secret'));
    expect(identity.bareJid).toBe('bob@localhost');
  });

  it('a failed attempt and a new one: the new one counts, its later responses change nothing', () => {
    const identity = new SaslIdentity('localhost');
    identity.fromClient(auth('PLAIN', '\0mallory\0x'));
    identity.onFailure();
    identity.fromClient(auth('SCRAM-SHA-1', 'n,,n=alice,r=abc'));
    identity.fromClient(response('c=biws,r=abcdef,p=proof'));
    expect(identity.bareJid).toBe('alice@localhost');
  });
});
