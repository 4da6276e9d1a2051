import { describe } from 'vitest';
import { legacyServersUnderTest, type LegacyServerKind } from './legacy-server.js';

/**
 * One `describe` per legacy server under test, named 'in front of <kind>'. jabberd2's tests get one
 * retry: jabberd2 2.7 keys sessions by socket number, and a connection accepted just after another
 * session ended can be killed with internal-server-error after SASL success, a server bug no client
 * can avoid and the proxy cannot replay (README, Compatibility). A test must still pass on its own.
 */
export function describeEachLegacyServer(suite: (kind: LegacyServerKind) => void): void {
  for (const kind of legacyServersUnderTest()) {
    describe(`in front of ${kind}`, { retry: kind === 'jabberd2' ? 1 : 0 }, () => suite(kind));
  }
}
