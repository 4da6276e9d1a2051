import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { upstreamRenewal } from '../../src/features/upstream-renewal.js';
import type { SessionHandle } from '../../src/session/hooks.js';
import { NS } from '../../src/xml/namespaces.js';
import { scanFragment } from '../../src/xml/stream-scanner.js';

// What a legacy server's new session of the same JID is told again after a restart (README, What
// it does, and what it promises): the client's carbons and its last broadcast presence.

function session(): SessionHandle & { readonly upstream: string[] } {
  const upstream: string[] = [];
  return {
    upstream,
    sid: 's1',
    addressKey: '192.0.2.1',
    domain: 'example.org',
    jid: 'alice@example.org/phone',
    awaySinceMs: undefined,
    log: pino({ level: 'silent' }),
    sendUpstream: (data) => void upstream.push(data),
    serverOffers: () => false,
    holdBack: () => undefined,
    releaseHeld: () => undefined,
    hibernateFor: () => undefined,
  };
}

const LIMITS = { maxStanzaBytes: 65536, maxDepth: 16 };

/** The client sends `xml`: the hook sees it and lets it through. */
function fromClient(hook: ReturnType<typeof upstreamRenewal>, s: SessionHandle, xml: string): void {
  expect(hook.fromClient!(scanFragment(Buffer.from(xml), LIMITS), 'active', s)).toBeUndefined();
}

describe('upstreamRenewal', () => {
  it('tells a renewed stream nothing when the client told the old one nothing', () => {
    const hook = upstreamRenewal();
    const s = session();
    fromClient(hook, s, `<message to='bob@example.org'><body>hi</body></message>`);
    hook.upstreamRenewed!(s);
    expect(s.upstream).toEqual([]);
  });

  it('tells carbons first, then the last broadcast presence, as sent', () => {
    const hook = upstreamRenewal();
    const s = session();
    fromClient(hook, s, `<presence/>`);
    fromClient(hook, s, `<iq type='set' id='c1'><enable xmlns='${NS.carbons}'/></iq>`);
    fromClient(hook, s, `<presence><show>dnd</show><status>busy</status></presence>`);
    fromClient(hook, s, `<presence to='room@muc.example.org/alice'/>`);
    hook.upstreamRenewed!(s);
    expect(s.upstream).toHaveLength(2);
    expect(s.upstream[0]).toMatch(new RegExp(`^<iq type='set' id='smacks-renew-[0-9a-f]{12}'><enable xmlns='${NS.carbons}'/></iq>$`));
    expect(s.upstream[1]).toBe('<presence><show>dnd</show><status>busy</status></presence>');
  });

  it('forgets presence after a broadcast unavailable one, and carbons after a disable', () => {
    const hook = upstreamRenewal();
    const s = session();
    fromClient(hook, s, `<iq type='set' id='c1'><enable xmlns='${NS.carbons}'/></iq>`);
    fromClient(hook, s, `<presence/>`);
    fromClient(hook, s, `<presence type='unavailable' to='room@muc.example.org/alice'/>`);
    fromClient(hook, s, `<iq type='get' id='c2'><disable xmlns='${NS.carbons}'/></iq>`);
    hook.upstreamRenewed!(s);
    expect(s.upstream, 'a directed unavailable and a get change nothing').toHaveLength(2);

    const t = session();
    fromClient(hook, t, `<iq type='set' id='c1'><enable xmlns='${NS.carbons}'/></iq>`);
    fromClient(hook, t, `<presence/>`);
    fromClient(hook, t, `<presence type='unavailable'/>`);
    fromClient(hook, t, `<iq type='set' id='c2'><disable xmlns='${NS.carbons}'/></iq>`);
    hook.upstreamRenewed!(t);
    expect(t.upstream).toEqual([]);
  });

  it('keeps the answer to its own request from the client, and only that one', () => {
    const hook = upstreamRenewal();
    const s = session();
    fromClient(hook, s, `<iq type='set' id='c1'><enable xmlns='${NS.carbons}'/></iq>`);
    hook.upstreamRenewed!(s);
    const id = /id='([^']+)'/.exec(s.upstream[0]!)![1]!;
    const other = Buffer.from(`<iq type='result' id='c1' to='alice@example.org/phone'/>`);
    expect(hook.toClient!(other, 'live', s)).toBe(other);
    expect(hook.toClient!(Buffer.from(`<iq type='result' id='${id}' to='alice@example.org/phone'/>`), 'live', s)).toBeUndefined();
    const again = Buffer.from(`<iq type='result' id='${id}'/>`);
    expect(hook.toClient!(again, 'live', s), 'answered once: a second one is not the proxy’s').toBe(again);
  });

  it('carries what it keeps to the next process of an upgrade', () => {
    const before = upstreamRenewal();
    const s = session();
    fromClient(before, s, `<iq type='set' id='c1'><enable xmlns='${NS.carbons}'/></iq>`);
    fromClient(before, s, `<presence><show>away</show></presence>`);
    const carried = JSON.parse(JSON.stringify(before.handedOff!(s))) as unknown;
    const after = upstreamRenewal();
    const t = session();
    after.adopted!(t, carried);
    after.upstreamRenewed!(t);
    expect(t.upstream.map((x) => x.replace(/id='[^']+'/, "id='x'"))).toEqual([
      `<iq type='set' id='x'><enable xmlns='${NS.carbons}'/></iq>`,
      '<presence><show>away</show></presence>',
    ]);
    expect(before.handedOff!(session()), 'nothing to carry').toBeUndefined();
  });
});
