/**
 * Stream-management scenarios written once and run in two places. They use the verbs that the unit
 * rig's `Connection` (session-rig.ts) and the wire client (raw-client.ts) share. The unit run
 * (test/unit/sm-scenarios.test.ts) uses fake links and fake timers. The end-to-end run
 * (test/e2e/sm-scenarios.test.ts) goes through the proxy, in front of each legacy server, over
 * every transport. A scenario asserts only what both runs must show.
 */
import type { Element } from 'ltx';
import { expect } from 'vitest';

/** One connection of the user: the verbs the unit rig and the wire client share. */
interface Phone {
  enableSm(options: { resume?: boolean; max?: number }): Element | Promise<Element>;
  sendMessage(to: string, body: string): string;
  /** `<a h/>`. */
  ack(h: number): void;
  /** `<r/>`: the `h` of the `<a/>` that answers it. */
  ackRequest(): number | Promise<number>;
  /** The first message to this connection that satisfies `predicate` and was not handed out before. */
  expectMessage(predicate?: (message: Element) => boolean): Element | Promise<Element>;
  /** The connection is gone without a stream close (a phone losing its network). */
  drop(): void;
}

/** Where a scenario runs: the user's connections, a contact on the legacy server, and time. */
export interface World {
  /** The contact's full JID. */
  readonly contact: string;
  /** A new connection of the user, authenticated and bound to `resource`. */
  login(resource: string): Promise<{ phone: Phone; jid: string }>;
  /** A new connection of the user, authenticated, that sends `<resume previd h/>`: the answer is `<resumed/>` or `<failed/>`. */
  resume(previd: string, h: number): Promise<{ phone: Phone; answer: Element }>;
  /** The contact sends a chat message to `to`: returns its id once the legacy server has routed it. */
  contactSends(to: string, body: string): Promise<string>;
  /** The first message to the contact that satisfies `predicate` and was not handed out before. */
  contactReceives(predicate: (message: Element) => boolean): Promise<Element>;
  /** `ms` pass: the fake clock moves in the unit rig, real time passes end to end. */
  passes(ms: number): Promise<void>;
}

interface SmScenario {
  readonly name: string;
  run(world: World): Promise<void>;
}

async function messages(phone: Phone, count: number): Promise<Element[]> {
  const got: Element[] = [];
  for (let i = 0; i < count; i++) got.push(await phone.expectMessage());
  return got;
}

/** The bodies of `got`, in their order. */
export function bodies(got: readonly Element[]): string[] {
  return got.map((message) => message.getChildText('body') ?? '');
}

export const SM_SCENARIOS: readonly SmScenario[] = [
  {
    name: 'an <r/> counts what the client sent (XEP-0198 §4), and the contact gets it in order',
    async run(world) {
      const { phone } = await world.login('count');
      expect((await phone.enableSm({ resume: true })).name).toBe('enabled');
      for (const body of ['one', 'two', 'three']) phone.sendMessage(world.contact, body);
      expect(await phone.ackRequest()).toBe(3);
      const got = [];
      for (let i = 0; i < 3; i++) got.push(await world.contactReceives((message) => message.attrs.type === 'chat'));
      expect(bodies(got)).toEqual(['one', 'two', 'three']);
    },
  },
  {
    name: 'after a cut, a resume replays what the client did not acknowledge, in order, then what came meanwhile (XEP-0198 §5)',
    async run(world) {
      const { phone, jid } = await world.login('cut');
      const enabled = await phone.enableSm({ resume: true });
      const previd = enabled.attrs.id as string;
      for (const body of ['one', 'two', 'three']) await world.contactSends(jid, body);
      expect(bodies(await messages(phone, 3))).toEqual(['one', 'two', 'three']);
      phone.ack(1);
      phone.sendMessage(world.contact, 'before the cut');
      // The round trip shows the proxy read the ack and the message before the cut.
      expect(await phone.ackRequest()).toBe(1);
      phone.drop();
      await world.contactSends(jid, 'four');

      const { phone: back, answer } = await world.resume(previd, 1);
      expect(answer.name).toBe('resumed');
      expect(answer.attrs.h).toBe('1');
      expect(bodies(await messages(back, 3))).toEqual(['two', 'three', 'four']);
      back.sendMessage(world.contact, 'back');
      const chat = (message: Element): boolean => message.attrs.type === 'chat';
      expect(bodies([await world.contactReceives(chat), await world.contactReceives(chat)])).toEqual(['before the cut', 'back']);
    },
  },
  {
    name: 'when the hibernation runs out, what the client did not acknowledge goes back to its sender (XEP-0198 §5)',
    async run(world) {
      const { phone, jid } = await world.login('expiry');
      const enabled = await phone.enableSm({ resume: true, max: 2 });
      expect(enabled.attrs.max).toBe('2');
      const id = await world.contactSends(jid, 'never acknowledged');
      expect((await phone.expectMessage()).attrs.id).toBe(id);
      phone.drop();
      await world.passes(2_500);
      const bounce = await world.contactReceives((message) => message.attrs.type === 'error' && message.attrs.id === id);
      expect(bounce.getChild('error')).toBeDefined();
      // XEP-0198 §5: the ended session is remembered: its <failed/> carries the h it had.
      const { answer } = await world.resume(enabled.attrs.id as string, 0);
      expect(answer.name).toBe('failed');
      expect(answer.attrs.h).toBe('0');
    },
  },
];
