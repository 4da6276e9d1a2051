/**
 * Client state indication (XEP-0352): what an inactive phone receives in an hour, with and without
 * the proxy holding back what can wait.
 *
 * One scripted hour (seeded, the same for both runs): 50 contacts change presence 10 times each,
 * 6 conversations each bring 4 chat states and one message with a body, and the server pings the
 * client every 5 minutes (XEP-0199, an iq: important). The fake upstream writes them on the phone's
 * stream as a server routes its contacts' stanzas; the phone sends nothing but its acks. The hour
 * is played back 4 ms per event: every event would reach the phone on its own in a real hour, so
 * each one gets a write of its own unless held. "Wake-ups" are the chunks the client's TLS socket
 * delivers (one per proxy write burst); the client acks every `<r/>` at once, as a phone would
 * (acks are stream management, not stanzas: they release nothing).
 */
import { fmtInt, sleep, table } from './bench-util.js';
import { DOMAIN, proxyConfig, startProxy, type BenchContext } from './bench-context.js';
import { FakeUpstream } from './fake-upstream.js';
import { seededRandom } from '../support/seeded-random.js';
import { BenchXmpp, attr } from './xmpp-bench-client.js';

const CONTACTS = 50;
const PRESENCE_PER_CONTACT = 10;
const CONVERSATIONS = 6;
const CHAT_STATES_PER_CONVERSATION = 4;
const PINGS = 12;
const EVENT_GAP_MS = 4;
const SHOWS = ['away', 'chat', 'dnd', 'xa'];

interface HourEvent {
  readonly atSeconds: number;
  readonly stanza: string;
}

/** The scripted hour, in time order. */
function scriptedHour(me: string): HourEvent[] {
  const rnd = seededRandom(0xc51);
  const at = () => Math.floor(rnd() * 3600);
  const events: HourEvent[] = [];
  for (let c = 0; c < CONTACTS; c++) {
    for (let i = 0; i < PRESENCE_PER_CONTACT; i++) {
      const show = SHOWS[Math.floor(rnd() * SHOWS.length)]!;
      events.push({
        atSeconds: at(),
        stanza: `<presence from='contact${c}@${DOMAIN}/phone' to='${me}'><show>${show}</show><status>status ${i} of contact ${c}</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>`,
      });
    }
  }
  for (let c = 0; c < CONVERSATIONS; c++) {
    const start = at();
    const from = `contact${c}@${DOMAIN}/phone`;
    for (let i = 0; i < CHAT_STATES_PER_CONVERSATION; i++) {
      const state = i % 2 === 0 ? 'composing' : 'paused';
      events.push({
        atSeconds: start + i,
        stanza: `<message from='${from}' to='${me}' type='chat'><${state} xmlns='http://jabber.org/protocol/chatstates'/></message>`,
      });
    }
    events.push({
      atSeconds: start + CHAT_STATES_PER_CONVERSATION,
      stanza: `<message from='${from}' to='${me}' type='chat' id='m${c}'><body>message ${c}</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>`,
    });
  }
  for (let i = 0; i < PINGS; i++) {
    events.push({
      atSeconds: i * 300 + 150,
      stanza: `<iq from='${DOMAIN}' to='${me}' type='get' id='ping${i}'><ping xmlns='urn:xmpp:ping'/></iq>`,
    });
  }
  return events.sort((a, b) => a.atSeconds - b.atSeconds);
}

interface HourFigures {
  readonly bytes: number;
  readonly wakeUps: number;
  readonly presence: number;
  readonly chatStates: number;
  readonly messages: number;
}

async function playHour(ctx: BenchContext, csi: boolean): Promise<HourFigures> {
  const upstream = new FakeUpstream();
  const upstreamPort = await upstream.start(DOMAIN);
  const proxy = await startProxy(ctx, { ...(proxyConfig(upstreamPort) as object), clientStateIndication: { enabled: csi } });
  try {
    const client = await BenchXmpp.login(
      { host: '127.0.0.1', port: proxy.port, tls: true, domain: DOMAIN, username: 'phone', password: 'x' },
      'csi',
    );
    await client.enableSm(true);
    const counts = { presence: 0, chatStates: 0, messages: 0 };
    client.onStanza = (element) => {
      if (element.localName === 'presence') counts.presence++;
      else if (element.localName === 'message') {
        if (attr(element.bytes, 'id')?.startsWith('m') === true) counts.messages++;
        else counts.chatStates++;
      }
    };
    // Settle: what setup wrote is not the hour's.
    if (csi) client.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    await sleep(200);
    let bytes = 0;
    let wakeUps = 0;
    client.socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      wakeUps++;
    });
    for (const event of scriptedHour(client.jid!)) {
      if (upstream.sendToUser('phone', event.stanza) !== 1) throw new Error("the fake upstream has no single stream of the phone's");
      await sleep(EVENT_GAP_MS);
    }
    await sleep(500);
    client.close();
    return { bytes, wakeUps, ...counts };
  } finally {
    await proxy.peer.stop();
    upstream.stop();
  }
}

export async function runCsiBench(ctx: BenchContext): Promise<string> {
  const events = CONTACTS * PRESENCE_PER_CONTACT + CONVERSATIONS * (CHAT_STATES_PER_CONVERSATION + 1) + PINGS;
  ctx.progress('csi: an hour without client state indication');
  const without = await playHour(ctx, false);
  ctx.progress('csi: the same hour, inactive');
  const inactive = await playHour(ctx, true);
  const row = (name: string, f: HourFigures) => [
    name,
    fmtInt(f.bytes),
    fmtInt(f.wakeUps),
    fmtInt(f.presence),
    fmtInt(f.chatStates),
    fmtInt(f.messages),
  ];
  return [
    `test/bench/csi-bench.ts: one scripted hour of ${events} stanzas for a phone with stream management (${CONTACTS} contacts × ${PRESENCE_PER_CONTACT} presence changes, ` +
      `${CONVERSATIONS} conversations of ${CHAT_STATES_PER_CONVERSATION} chat states and a message, a server ping every 5 minutes), played back ${EVENT_GAP_MS} ms per stanza ` +
      "by the fake upstream on the phone's stream. Bytes are TLS payload bytes to the client (`<r/>` included); wake-ups are the writes that reached its socket.",
    '',
    table(
      ['client', 'bytes per hour', 'wake-ups per hour', 'presence received', 'chat states received', 'messages received'],
      [row('active (no CSI)', without), row('inactive (CSI by the proxy)', inactive)],
    ),
    '',
    `Inactive: ${((1 - inactive.bytes / without.bytes) * 100).toFixed(0)}% fewer bytes, ${((1 - inactive.wakeUps / without.wakeUps) * 100).toFixed(0)}% fewer wake-ups; ` +
      'the inactive phone gets every message and ping when it arrives, each after the latest held presence of every contact that changed since the wake-up before.',
  ].join('\n');
}
