/**
 * `npm run demo`: the point of smacks-proxy in a minute. Starts a throwaway legacy Prosody
 * (Debian's package, mod_smacks off), the proxy in front of it and two scripted clients; cuts one
 * client's connection while the other sends messages, resumes, and tells what happened.
 */
import { startProsody } from '../support/prosody.js';
import { startProxyFixture, USERS } from '../support/proxy-fixture.js';
import { NS } from '../support/raw-client.js';

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function main(): Promise<void> {
  say('smacks-proxy demo: XEP-0198 stream management in front of a server that has none.\n');
  const prosody = await startProsody({ users: Object.values(USERS) });
  say(`1. A legacy Prosody runs on 127.0.0.1:${prosody.c2sPort} without mod_smacks.`);
  const fixture = await startProxyFixture({ server: prosody });
  say(`   The proxy listens on 127.0.0.1:${fixture.ports.starttls} (STARTTLS) and :${fixture.ports.directtls} (direct TLS).\n`);
  try {
    const alice = await fixture.login('directtls', USERS.alice, { resource: 'phone', sm: true });
    const bob = await fixture.login('starttls', USERS.bob, { resource: 'laptop' });
    say(`2. ${alice.jid} logged in through the proxy (SASL and bind relayed to Prosody),`);
    say(`   and enabled stream management; the proxy answered <enabled id='${alice.smId!.slice(0, 6)}…' resume='true'/>.`);
    say(`   ${bob.jid} logged in too, without stream management.\n`);

    bob.client.sendMessage(alice.jid, 'Are you on the train?', 'm0');
    await alice.client.expectMessage((m) => m.attrs.id === 'm0');
    alice.client.ack();
    say('3. Bob: "Are you on the train?" Alice received it and acknowledged it: <a h=\'1\'/>.\n');

    alice.client.drop();
    say("4. The train enters a tunnel: alice's TCP connection is cut, no </stream:stream>.");
    await waitFor(() => [...fixture.proxy.registry.sessions()].some((s) => s.stateName === 'hibernating'));
    say('   The proxy keeps her Prosody session open ("hibernation"): bob still sees her online.\n');

    const lines = ['Tunnel?', 'Call me when you are out.', "I'll be at the station at 6."];
    lines.forEach((body, i) => bob.client.sendMessage(alice.jid, body, `m${i + 1}`));
    bob.client.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>");
    await bob.client.expect((el) => el.attrs.id === 'sync', 'a round trip');
    say(`5. Bob sends ${lines.length} more messages. Prosody delivers them to alice's session;`);
    say(`   the proxy queues them, unacknowledged, with the time each arrived.\n`);

    const started = Date.now();
    const phone = await fixture.connect('directtls');
    await phone.authenticatePlain('alice', USERS.alice.password);
    const resumed = await phone.resume(alice.smId!, alice.client.stanzasReceived);
    if (resumed.name !== 'resumed') throw new Error(`resume failed: ${resumed.toString()}`);
    say(`6. Out of the tunnel, alice's phone reconnects, authenticates (relayed to Prosody, which`);
    say(`   tells the proxy it is really alice), and sends <resume previd h='${alice.client.stanzasReceived}'/>.`);
    say(`   The proxy answers <resumed h='${String(resumed.attrs.h)}'/> after ${Date.now() - started} ms and replays what she missed:`);
    for (let i = 0; i < lines.length; i++) {
      const message = await phone.expectMessage();
      const stamp = message.getChild('delay', NS.delay)?.attrs.stamp as string;
      say(`     ${String(message.attrs.from)}: "${message.getChildText('body') ?? ''}" (delayed, sent ${stamp})`);
    }
    phone.ack();
    say(`   Alice acknowledges <a h='${phone.stanzasReceived}'/>: nothing was lost, nothing came twice,`);
    say('   no roster reload, no presence flap. Prosody never knew.\n');

    await phone.close();
    await bob.client.close();
    say('7. Both close their streams cleanly. That is all: run `npm test` to see every rule checked.');
  } finally {
    await fixture.stop();
    await prosody.stop();
  }
}

async function waitFor(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('the demo timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
