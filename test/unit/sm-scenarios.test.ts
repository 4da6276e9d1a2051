/**
 * The shared stream-management scenarios (sm-scenarios.ts) in the unit rig: fake links, a fake
 * legacy server stream per session, and fake timers. test/e2e/sm-scenarios.test.ts runs the same
 * scenarios end to end.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseElement, type Element } from '../../src/xml/element.js';
import { bare } from '../../src/xml/jid.js';
import { DOMAIN, T0, Rig, advance, settle, type Connection, type FakeUpstream } from '../support/session-rig.js';
import { SM_SCENARIOS, type World } from '../support/sm-scenarios.js';

/**
 * The user's sessions in the rig; the contact is the legacy server's side of their upstream
 * streams: it writes its messages there and reads what the sessions relay.
 */
class RigWorld implements World {
  readonly contact = `alice@${DOMAIN}/desk`;
  /** The upstream stream that bound each full JID: a resumed session keeps its own. */
  private readonly upstreams = new Map<string, FakeUpstream>();
  /** What contactReceives handed out, per upstream stream: the indexes of its writes. */
  private readonly read = new Map<FakeUpstream, Set<number>>();
  private sent = 0;

  constructor(private readonly rig: Rig) {}

  async login(resource: string): Promise<{ phone: Connection; jid: string }> {
    const phone = await this.rig.connect().openAndBind(resource);
    this.upstreams.set(phone.jid, phone.upstream);
    return { phone, jid: phone.jid };
  }

  async resume(previd: string, h: number): Promise<{ phone: Connection; answer: Element }> {
    const phone = this.rig.connect();
    await phone.authenticate();
    phone.resume(previd, h);
    await settle();
    const answer = phone.client.elements().find((element) => element.name === 'resumed' || element.name === 'failed');
    if (answer === undefined) throw new Error(`<resume/> went unanswered: ${phone.client.received.join(' ')}`);
    return { phone, answer };
  }

  async contactSends(to: string, body: string): Promise<string> {
    const upstream = this.upstreams.get(to);
    if (upstream === undefined) throw new Error(`no session bound ${to}`);
    const id = `c${++this.sent}`;
    upstream.write(`<message from='${this.contact}' to='${to}' id='${id}' type='chat'><body>${body}</body></message>`);
    await settle();
    return id;
  }

  async contactReceives(predicate: (message: Element) => boolean): Promise<Element> {
    await settle();
    for (const upstream of new Set(this.upstreams.values())) {
      const read = this.read.get(upstream) ?? new Set<number>();
      this.read.set(upstream, read);
      const index = upstream.sent.findIndex((written, i) => {
        if (read.has(i) || !written.startsWith('<message')) return false;
        const message = parseElement(written);
        return bare(message.attrs.to as string) === bare(this.contact) && predicate(message);
      });
      if (index !== -1) {
        read.add(index);
        return parseElement(upstream.sent[index]!);
      }
    }
    throw new Error('the contact received no such message');
  }

  passes(ms: number): Promise<void> {
    return advance(ms);
  }
}

let rig: Rig;

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(T0);
  rig = new Rig();
});

afterEach(() => {
  vi.useRealTimers();
  expect(rig.errors).toEqual([]);
});

describe('Stream-management scenarios in the unit rig', () => {
  for (const scenario of SM_SCENARIOS) it(scenario.name, () => scenario.run(new RigWorld(rig)));
});
