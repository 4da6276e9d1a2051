import { describe, expect, it } from 'vitest';
import { BUILTIN_HOOKS } from '../../src/features/builtin-hooks.js';
import { rewriteFeatures, type FeaturesPhase } from '../../src/session/features.js';
import { SessionHooks } from '../../src/session/hooks.js';
import { parseElement } from '../../src/xml/element.js';

const MECHS =
  "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>";

const hooks = new SessionHooks(BUILTIN_HOOKS);

/** The features a client sees: the legacy server's, rewritten, plus what the built-in hooks advertise. */
function names(xml: string, phase: FeaturesPhase): string[] {
  const offered = parseElement(xml);
  const { features } = rewriteFeatures(offered, hooks.advertise(phase, offered));
  return features.getChildElements().map((c) => `${c.name}@${String(c.attrs.xmlns)}`);
}

describe('rewriteFeatures', () => {
  it.each([
    ['starttls', "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"],
    ['compression', "<compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>"],
    ['sm:3', "<sm xmlns='urn:xmpp:sm:3'><optional/></sm>"],
    ['sm:2', "<sm xmlns='urn:xmpp:sm:2'/>"],
    ['jabberd2 draft ack', "<ack xmlns='http://www.xmpp.org/extensions/xep-0198.html#ns'/>"],
    ['jabberd2 draft ack, prefixed', "<ack:ack xmlns:ack='http://www.xmpp.org/extensions/xep-0198.html#ns'/>"],
    ['XEP-0078 iq-auth', "<auth xmlns='http://jabber.org/features/iq-auth'/>"],
    ['jabberd2 unbind', "<unbind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"],
    [
      'SASL2 with Bind2 and FAST inline',
      "<authentication xmlns='urn:xmpp:sasl:2'><mechanism>PLAIN</mechanism><inline><bind xmlns='urn:xmpp:bind:0'/><fast xmlns='urn:xmpp:fast:0'/></inline></authentication>",
    ],
  ])('removes upstream %s in both phases', (_label, child) => {
    const xml = `<stream:features xmlns:stream='http://etherx.jabber.org/streams'>${child}${MECHS}</stream:features>`;
    expect(names(xml, 'pre-auth')).toEqual(['mechanisms@urn:ietf:params:xml:ns:xmpp-sasl']);
  });

  it('keeps SASL mechanisms unchanged and in order', () => {
    const offered = parseElement(`<stream:features>${MECHS}</stream:features>`);
    const { features } = rewriteFeatures(offered, hooks.advertise('pre-auth', offered));
    expect(features.toString()).toBe(parseElement(`<stream:features>${MECHS}</stream:features>`).toString());
  });

  it('adds sm:2 and sm:3 only after authentication', () => {
    const bind = "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>";
    expect(names(`<stream:features>${bind}</stream:features>`, 'post-auth')).toEqual([
      'bind@urn:ietf:params:xml:ns:xmpp-bind',
      'sm@urn:xmpp:sm:2',
      'sm@urn:xmpp:sm:3',
    ]);
    expect(names(`<stream:features>${MECHS}</stream:features>`, 'pre-auth')).not.toContain('sm@urn:xmpp:sm:3');
  });

  it('reports -PLUS mechanisms and XEP-0440 channel-binding types without removing them', () => {
    const xml =
      "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>" +
      "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-server-end-point'/></sasl-channel-binding></stream:features>";
    const { features, findings } = rewriteFeatures(parseElement(xml), []);
    expect(findings).toEqual({ channelBindingMechanisms: ['SCRAM-SHA-1-PLUS'], channelBindingTypes: true });
    expect(features.toString()).toContain('SCRAM-SHA-1-PLUS');
  });
});
