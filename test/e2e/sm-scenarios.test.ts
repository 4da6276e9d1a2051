/**
 * The shared stream-management scenarios (sm-scenarios.ts) end to end: the user's connections go
 * through the proxy, in front of each legacy server, over every transport; the contact is logged in
 * to the legacy server directly. test/unit/sm-scenarios.test.ts runs the same scenarios in the unit rig.
 */
import { afterAll, beforeAll, describe, it } from 'vitest';
import { startLegacyServer, type LegacyServer } from '../support/legacy-server.js';
import { describeEachLegacyServer } from '../support/legacy-suites.js';
import { startProxyFixture, USERS, type ProxyFixture } from '../support/proxy-fixture.js';
import type { Element, RawClient, RawTransport } from '../support/raw-client.js';
import { loginDirect, resumeWith } from '../support/sm-steps.js';
import { SM_SCENARIOS, type World } from '../support/sm-scenarios.js';

const TRANSPORTS: readonly RawTransport[] = ['starttls', 'directtls', 'websocket'];

/** The user (alice) through the proxy over one transport; the contact (bob) on the legacy server itself. */
class WireWorld implements World {
  private readonly clients: RawClient[] = [];

  private constructor(
    private readonly fixture: ProxyFixture,
    private readonly transport: RawTransport,
    private readonly contactClient: RawClient,
    readonly contact: string,
  ) {}

  static async start(fixture: ProxyFixture, server: LegacyServer, transport: RawTransport): Promise<WireWorld> {
    const resource = `desk-${transport}`;
    const contact = await loginDirect(server, USERS.bob, resource);
    return new WireWorld(fixture, transport, contact, `${USERS.bob.username}@${server.domain}/${resource}`);
  }

  async login(resource: string): Promise<{ phone: RawClient; jid: string }> {
    // A resource per transport: each run's sessions are its own.
    const { client, jid } = await this.fixture.login(this.transport, USERS.alice, { resource: `${resource}-${this.transport}` });
    this.clients.push(client);
    return { phone: client, jid };
  }

  async resume(previd: string, h: number): Promise<{ phone: RawClient; answer: Element }> {
    const { client, answer } = await resumeWith(this.fixture, USERS.alice, previd, h, this.transport);
    this.clients.push(client);
    return { phone: client, answer };
  }

  async contactSends(to: string, body: string): Promise<string> {
    const id = this.contactClient.sendMessage(to, body);
    await this.contactClient.syncWithServer();
    return id;
  }

  contactReceives(predicate: (message: Element) => boolean): Promise<Element> {
    return this.contactClient.expectMessage(predicate);
  }

  passes(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async close(): Promise<void> {
    for (const client of [...this.clients, this.contactClient]) await client.close();
  }
}

describeEachLegacyServer((kind) => {
  let server: LegacyServer;
  let fixture: ProxyFixture;

  beforeAll(async () => {
    server = await startLegacyServer(kind, { users: Object.values(USERS) });
    fixture = await startProxyFixture({ server });
  }, 60_000);

  afterAll(async () => {
    await fixture?.stop();
    await server?.stop();
  });

  for (const transport of TRANSPORTS) {
    describe(`over ${transport}`, () => {
      for (const scenario of SM_SCENARIOS) {
        it(scenario.name, async () => {
          const world = await WireWorld.start(fixture, server, transport);
          try {
            await scenario.run(world);
          } finally {
            await world.close();
          }
        });
      }
    });
  }
});
