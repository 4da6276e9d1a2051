/**
 * A real client library through the proxy: slixmpp (Debian 12's python3-slixmpp 1.8; the version
 * the client reports is printed with each test) with its own XEP-0198 plugin (xep_0198), driven by
 * test/e2e/clients/slixmpp_client.py under Debian's /usr/bin/python3 (the `python3` on PATH may
 * lack slixmpp). Verified against every legacy server under test, over STARTTLS and direct TLS:
 * login (the SASL mechanism slixmpp picks is printed), `<enable resume='true'/>`, a chat both ways,
 * an abrupt cut of the client's connection, the client's own reconnect and `<resumed/>`, the
 * messages sent meanwhile received once, in order, with a delay stamp, and nothing duplicated at
 * either end (see clients/resume-scenario.ts). Also its XEP-0352 plugin (xep_0352), which sends
 * `<inactive/>` only where the stream features offer `<csi/>`, against the proxy's own CSI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChildClient } from '../support/child-client.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import { Element } from '../support/raw-client.js';
import { describeRealClientResumption } from './clients/resume-scenario.js';

const PYTHON = '/usr/bin/python3';
const SCRIPT = new URL('./clients/slixmpp_client.py', import.meta.url).pathname;

describeRealClientResumption({
  library: 'slixmpp',
  start: (params) =>
    ChildClient.start('slixmpp client', PYTHON, [
      SCRIPT,
      '--jid',
      params.jid,
      '--password',
      params.password,
      '--host',
      params.host,
      '--port',
      String(params.port),
      '--tls',
      params.tls === 'directtls' ? 'direct' : 'starttls',
      '--reconnect-delay-ms',
      String(params.reconnectDelayMs),
    ]),
});

describe('slixmpp xep_0352 (client state indication) through the proxy', () => {
  describeEachLegacyServer((kind) => {
    let fixture: ProxyFixture;

    beforeAll(async () => {
      fixture = await startProxyFixture({ kind });
    }, 60_000);

    afterAll(async () => {
      await fixture?.stop();
    });

    it('finds <csi/>, goes inactive, gets the latest presence only with the next message, before it', async () => {
      const bob = await fixture.login('directtls', USERS.bob, { resource: 'csi-contact' });
      const client = ChildClient.start('slixmpp client', PYTHON, [
        SCRIPT,
        ...['--jid', `${USERS.alice.username}@${fixture.domain}/csi`, '--password', USERS.alice.password],
        ...['--host', '127.0.0.1', '--port', String(fixture.ports.directtls), '--tls', 'direct', '--reconnect-delay-ms', '60000'],
      ]);
      try {
        await client.expectEvent('csi_enabled', () => true, "slixmpp's xep_0352 to see the proxy's <csi/>");
        const alice = String((await client.expectEvent('session_start')).jid);
        await client.expectEvent('sm_enabled');
        client.send('inactive');
        // Directed presence (RFC 6121 §4.6) reaches Alice's full JID without a subscription.
        const presence = (status: string) => new Element('presence', { to: alice }).c('status').t(status).root();
        // The legacy server handles Bob's stanzas in order, after slixmpp's <inactive/> reached the proxy.
        await new Promise((resolve) => setTimeout(resolve, 300));
        for (const status of ['one', 'two', 'three']) bob.client.send(presence(status));
        await bob.client.syncWithServer();
        await new Promise((resolve) => setTimeout(resolve, 700));
        client.assertNone((e) => e.event === 'presence', "Bob's presence while Alice is inactive");
        bob.client.sendMessage(alice, 'wake up', 'csi-wake');
        await client.expectEvent('message', (e) => e.id === 'csi-wake', 'the message');
        const seen = client.events.filter((e) => e.event === 'presence' && e.from === bob.jid);
        expect(seen.map((e) => e.status)).toEqual(['three']);
        expect(seen[0]!.delay, 'stamped with when it arrived').not.toBeNull();
        const wake = client.events.findIndex((e) => e.event === 'message' && e.id === 'csi-wake');
        expect(client.events.indexOf(seen[0]!), 'the held presence before the message').toBeLessThan(wake);
        client.send('active');
        bob.client.send(presence('four'));
        await client.expectEvent('presence', (e) => e.status === 'four', 'presence at once once active');
      } finally {
        await client.stop();
        await bob.client.close();
      }
    }, 30_000);
  });
});
