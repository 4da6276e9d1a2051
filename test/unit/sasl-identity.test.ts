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
    ['PLAIN with a bare-JID authzid', auth('PLAIN', 'bob@localhost\0alice\0secret'), 'bob@localhost'],
    ['PLAIN with a non-JID authzid', auth('PLAIN', 'bob\0alice\0secret'), undefined],
    ['PLAIN with a JID as user name', auth('PLAIN', '\0alice@localhost\0secret'), undefined],
    ['PLAIN with a password holding NUL', auth('PLAIN', '\0alice\0se\0cret'), undefined],
    ['SCRAM-SHA-1', auth('SCRAM-SHA-1', 'n,,n=alice,r=abc'), 'alice@localhost'],
    ['SCRAM-SHA-256 with escapes', auth('SCRAM-SHA-256', 'n,,n=a=2Cb=3Dc,r=abc'), 'a,b=c@localhost'],
    ['SCRAM with authzid', auth('SCRAM-SHA-1', 'y,a=carol@localhost,n=alice,r=abc'), 'carol@localhost'],
    ['SCRAM with channel binding', auth('SCRAM-SHA-1-PLUS', 'p=tls-exporter,,n=alice,r=abc'), 'alice@localhost'],
    ['EXTERNAL', auth('EXTERNAL', '='), undefined],
    ['ANONYMOUS', auth('ANONYMOUS'), undefined],
    ['a lower-case mechanism name', auth('plain', '\0alice\0secret'), 'alice@localhost'],
  ])('%s', (_label, element, expected) => {
    expect(identityAfter(element)).toBe(expected);
  });

  it('DIGEST-MD5: the user name of the digest response', () => {
    const digest = 'charset=utf-8,username="al\\"ice",realm="localhost",nonce="n",nc=00000001,cnonce="c",digest-uri="xmpp/localhost",response=0123,qop=auth';
    expect(identityAfter(auth('DIGEST-MD5'), response(digest))).toBe('al"ice@localhost');
    expect(identityAfter(auth('DIGEST-MD5'), response(`${digest},authzid="dave@localhost"`))).toBe('dave@localhost');
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

  it('a failed attempt and a new one: the new one counts', () => {
    const identity = new SaslIdentity('localhost');
    identity.fromClient(auth('PLAIN', '\0mallory\0x'));
    identity.onFailure();
    identity.fromClient(auth('SCRAM-SHA-1', 'n,,n=alice,r=abc'));
    identity.fromClient(response('c=biws,r=abcdef,p=proof'));
    expect(identity.bareJid).toBe('alice@localhost');
  });
});
