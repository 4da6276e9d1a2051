/**
 * A real client library through the proxy: slixmpp (Debian 12's python3-slixmpp 1.8; the version
 * the client reports is printed with each test) with its own XEP-0198 plugin (xep_0198), driven by
 * test/e2e/clients/slixmpp_client.py under Debian's /usr/bin/python3 (the `python3` on PATH may
 * lack slixmpp). Verified against every legacy server under test, over STARTTLS and direct TLS:
 * login (the SASL mechanism slixmpp picks is printed), `<enable resume='true'/>`, a chat both ways,
 * an abrupt cut of the client's connection, the client's own reconnect and `<resumed/>`, the
 * messages sent meanwhile received once, in order, with a delay stamp, and nothing duplicated at
 * either end (see clients/resume-scenario.ts).
 */
import { ChildClient } from '../support/child-client.js';
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
