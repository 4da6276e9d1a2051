import { describe, expect, it } from 'vitest';
import { StreamSetup, type ResumeRequest, type SetupPort } from '../../src/session/stream-setup.js';
import { parseElement } from '../../src/xml/element.js';
import { NS } from '../../src/xml/namespaces.js';
import { scanFragment, type ScannedElement } from '../../src/xml/stream-scanner.js';

const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };
const el = (text: string): ScannedElement => scanFragment(Buffer.from(text), LIMITS);
const IDENTITY_BIND_ID = 'smacks-proxy-bind-s1';
const plain = (authcid: string) =>
  el(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${Buffer.from(`\0${authcid}\0secret`).toString('base64')}</auth>`);
const SUCCESS = el(`<success xmlns='${NS.sasl}'/>`);
const bindRequest = (id: string) => el(`<iq type='set' id='${id}'><bind xmlns='${NS.bind}'><resource>r</resource></bind></iq>`);
const bindResult = (id: string, jid: string) => el(`<iq type='result' id='${id}'><bind xmlns='${NS.bind}'><jid>${jid}</jid></bind></iq>`);
const REQUEST: ResumeRequest = { ns: NS.sm3, previd: 'prev', h: 0 };

/** A bind that waits for an ended session of the same JID, as `beforeBind` saw it. */
interface WaitingBind {
  readonly resource: string | undefined;
  readonly account: string | undefined;
  readonly send: (inherited: readonly Buffer[]) => void;
}

/**
 * A session as stream setup sees it: every call recorded, in order. Binds go out at once unless
 * `lingering` is set: then they wait in `waiting` (an ended session of that JID closing upstream).
 */
function recordingPort(): SetupPort & { readonly calls: string[]; lingering: boolean; readonly waiting: WaitingBind[] } {
  const calls: string[] = [];
  const text = (data: Buffer | string) => data.toString();
  const waiting: WaitingBind[] = [];
  const port = {
    calls,
    lingering: false,
    waiting,
    beforeBind: (resource: string | undefined, account: string | undefined, send: (inherited: readonly Buffer[]) => void) => {
      if (port.lingering) waiting.push({ resource, account, send });
      else send([]);
    },
    inheritedLost: (inherited: readonly Buffer[]) => void calls.push(`lost ${inherited.length}`),
    toClient: (data) => void calls.push(`client ${text(data)}`),
    toServer: (data) => void calls.push(`server ${text(data)}`),
    saslSucceeded: () => void calls.push('sasl succeeded'),
    saslFailed: (condition, attempt) =>
      void calls.push(`sasl failed ${condition} ${attempt?.mechanism ?? '-'} ${attempt?.username ?? '-'}`),
    waitForServer: () => void calls.push('wait'),
    serverAnswered: () => void calls.push('answered'),
    bound: (jid: string, inherited: readonly Buffer[], held: readonly ScannedElement[]) =>
      void calls.push(
        `bound ${jid}${inherited.map((bytes) => ` + ${bytes.toString()}`).join('')}${held.length > 0 ? `, then held ${held.map((e) => e.localName).join(',')}` : ''}`,
      ),
    redeliver: (held: readonly ScannedElement[]) => void calls.push(`redeliver ${held.map((e) => e.localName).join(',')}`),
    identityKnown: (_request: ResumeRequest, bareJid: string | undefined) => void calls.push(`identity ${bareJid ?? '(refused)'}`),
  } satisfies SetupPort & Record<string, unknown>;
  return port;
}

function authenticated(authcid = 'alice'): { setup: StreamSetup; port: ReturnType<typeof recordingPort> } {
  const port = recordingPort();
  const setup = new StreamSetup('localhost', IDENTITY_BIND_ID, port);
  setup.fromClient(plain(authcid));
  setup.fromServer(SUCCESS);
  port.calls.length = 0;
  return { setup, port };
}

describe('StreamSetup: SASL and bind relayed and watched (RFC 6120 §6, §7)', () => {
  it('relays SASL, and restarts after <success/> has reached the client', () => {
    const port = recordingPort();
    const setup = new StreamSetup('localhost', IDENTITY_BIND_ID, port);
    expect(setup.featuresPhase).toBe('pre-auth');
    setup.fromClient(plain('alice'));
    setup.fromServer(SUCCESS);
    expect(port.calls.slice(1)).toEqual([`client <success xmlns='${NS.sasl}'/>`, 'sasl succeeded']);
    expect(setup.phaseName).toBe('authenticated');
    expect(setup.featuresPhase).toBe('post-auth');
  });

  it('reports a SASL <failure/> with its condition, the mechanism and the user name, then relays it; the next <auth/> starts afresh', () => {
    const port = recordingPort();
    const setup = new StreamSetup('localhost', IDENTITY_BIND_ID, port);
    setup.fromClient(plain('alice'));
    setup.fromServer(el(`<failure xmlns='${NS.sasl}'><not-authorized/></failure>`));
    expect(port.calls.slice(1)).toEqual([
      'sasl failed not-authorized PLAIN alice',
      `client <failure xmlns='${NS.sasl}'><not-authorized/></failure>`,
    ]);
    setup.fromClient(el(`<auth xmlns='${NS.sasl}' mechanism='EXTERNAL'>=</auth>`));
    setup.fromServer(el(`<failure xmlns='${NS.sasl}'><invalid-mechanism/></failure>`));
    expect(port.calls.at(-2)).toBe('sasl failed invalid-mechanism EXTERNAL -');
  });

  it('holds what the client pipelines behind its bind, and hands it back once bound', () => {
    const { setup, port } = authenticated();
    setup.fromClient(bindRequest('b1'));
    expect(setup.hold(el("<enable xmlns='urn:xmpp:sm:3'/>"))).toBe(true);
    setup.fromServer(bindResult('b1', 'alice@localhost/r'));
    expect(port.calls).toEqual([
      'wait',
      expect.stringMatching(/^server <iq type='set' id='b1'>/),
      expect.stringMatching(/^client <iq type='result' id='b1'>/),
      'answered',
      'bound alice@localhost/r, then held enable',
    ]);
  });

  it('holds a bind of a resource whose ended session still lingers upstream, and gives the new session what that one received behind its close', () => {
    const { setup, port } = authenticated();
    port.lingering = true;
    setup.fromClient(bindRequest('b1'));
    expect(setup.hold(el(`<enable xmlns='${NS.sm3}'/>`))).toBe(true);
    expect(port.calls).toEqual(['wait']);
    expect(port.waiting.map((w) => [w.resource, w.account])).toEqual([['r', 'alice@localhost']]);
    port.waiting[0]!.send([Buffer.from("<message id='late'/>")]);
    expect(port.calls.slice(1)).toEqual([`server ${bindRequest('b1').bytes.toString()}`]);
    setup.fromServer(bindResult('b1', 'alice@localhost/r'));
    expect(port.calls.slice(3)).toEqual(['answered', "bound alice@localhost/r + <message id='late'/>, then held enable"]);
  });

  it('reports the inherited stanzas as lost when the legacy server refuses the bind they waited for', () => {
    const { setup, port } = authenticated();
    port.lingering = true;
    setup.fromClient(bindRequest('b1'));
    port.waiting[0]!.send([Buffer.from("<message id='late'/>")]);
    setup.fromServer(el(`<iq type='error' id='b1'><error type='cancel'><conflict xmlns='${NS.stanzas}'/></error></iq>`));
    expect(port.calls).toContain('lost 1');
    expect(setup.phaseName).toBe('authenticated');
  });

  it('binds only on the answer to the client request from the server itself', () => {
    const { setup, port } = authenticated();
    setup.fromClient(bindRequest('b1'));
    setup.fromServer(
      el(`<iq type='result' id='b1' from='mallory@localhost/x'><bind xmlns='${NS.bind}'><jid>mallory@localhost/x</jid></bind></iq>`),
    );
    setup.fromServer(bindResult('other', 'alice@localhost/r'));
    expect(port.calls.filter((call) => call.startsWith('bound'))).toEqual([]);
    expect(setup.hold(el('<presence/>'))).toBe(true);
  });

  it('stays authenticated after a refused bind, so the client may try again', () => {
    const { setup, port } = authenticated();
    setup.fromClient(bindRequest('b1'));
    setup.fromServer(el(`<iq type='error' id='b1'><error type='cancel'><conflict xmlns='${NS.stanzas}'/></error></iq>`));
    expect(port.calls.slice(-2)).toEqual(['answered', 'redeliver ']);
    expect(setup.phaseName).toBe('authenticated');
    expect(setup.hold(el('<presence/>'))).toBe(false);
  });
});

describe('StreamSetup: the account of a <resume/> (XEP-0198 §5)', () => {
  it('takes the account from the SASL exchange, after the restarted stream’s features', () => {
    const { setup, port } = authenticated();
    setup.resume(REQUEST, 'alice@localhost');
    expect(port.calls).toEqual(['wait']);
    expect(setup.hold(el('<presence/>'))).toBe(true);
    setup.featuresRelayed();
    expect(port.calls).toEqual(['wait', 'identity alice@localhost']);
    expect(setup.resumeAccepted().map((e) => e.localName)).toEqual(['presence']);
  });

  it('answers at once when the features were already relayed', () => {
    const { setup, port } = authenticated();
    setup.featuresRelayed();
    setup.resume(REQUEST, 'alice@localhost');
    expect(port.calls).toEqual(['wait', 'identity alice@localhost']);
  });

  it("asks the legacy server with a throwaway bind when SASL does not name the session's account", () => {
    const { setup, port } = authenticated('bob');
    setup.resume(REQUEST, 'alice@localhost');
    expect(port.calls).toEqual(['wait', `server <iq type='set' id='${IDENTITY_BIND_ID}'><bind xmlns='${NS.bind}'/></iq>`]);
    setup.fromServer(bindResult(IDENTITY_BIND_ID, 'bob@localhost/tmp'));
    expect(port.calls.at(-1)).toBe('identity bob@localhost');
  });

  it('after a refused resume, answers the client’s bind with the resource the identity check bound', () => {
    const { setup, port } = authenticated('bob');
    setup.resume(REQUEST, 'alice@localhost');
    setup.hold(el("<enable xmlns='urn:xmpp:sm:3'/>"));
    setup.fromServer(bindResult(IDENTITY_BIND_ID, 'bob@localhost/tmp'));
    setup.resumeRefused();
    expect(port.calls.slice(-2)).toEqual(['answered', 'redeliver enable']);
    port.calls.length = 0;
    setup.fromClient(bindRequest('b2'));
    expect(port.calls).toHaveLength(2);
    expect(parseElement(port.calls[0]!.slice('client '.length)).getChild('bind', NS.bind)?.getChildText('jid')).toBe('bob@localhost/tmp');
    expect(port.calls[1]).toBe('bound bob@localhost/tmp');
  });

  it('reports a refused identity bind as an unknown account', () => {
    const { setup, port } = authenticated('bob');
    setup.resume(REQUEST, 'alice@localhost');
    setup.fromServer(
      el(`<iq type='error' id='${IDENTITY_BIND_ID}'><error type='cancel'><not-allowed xmlns='${NS.stanzas}'/></error></iq>`),
    );
    expect(port.calls.at(-1)).toBe('identity (refused)');
  });
});
