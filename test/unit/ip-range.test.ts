import { describe, expect, it } from 'vitest';
import { addressKey, isLoopbackHost, normalizeAddress } from '../../src/transport/ip-range.js';

describe('isLoopbackHost: traffic that never leaves the host', () => {
  it.each([
    ['localhost', true],
    ['LOCALHOST', true],
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['::', false],
    ['0.0.0.0', false],
    ['10.0.0.5', false],
    ['xmpp.example.org', false],
    ['128.0.0.1', false],
  ])('%s → %s', (host, loopback) => {
    expect(isLoopbackHost(host)).toBe(loopback);
  });
});

describe('normalizeAddress', () => {
  it.each([
    ['[2001:db8::1]:443', '2001:db8::1'],
    ['192.0.2.1:5222', '192.0.2.1'],
    ['"::ffff:192.0.2.1"', '192.0.2.1'],
    ['unknown', undefined],
  ])('%s → %s', (value, address) => {
    expect(normalizeAddress(value)).toBe(address);
  });
});

describe('addressKey: what a per-address limit counts', () => {
  it.each([
    ['192.0.2.1', 64, '192.0.2.1'],
    ['2001:db8:0:1:aaaa:bbbb:cccc:dddd', 64, '2001:db8:0:1:0:0:0:0/64'],
    ['2001:db8:0:1::5', 64, '2001:db8:0:1:0:0:0:0/64'],
    ['2001:db8::1', 128, '2001:db8:0:0:0:0:0:1/128'],
    ['2001:db8:abcd:12ff::1', 56, '2001:db8:abcd:1200:0:0:0:0/56'],
    ['::ffff:1.2.3.4', 128, '0:0:0:0:0:ffff:102:304/128'],
    ['::1', 64, '0:0:0:0:0:0:0:0/64'],
    ['not-an-address', 64, 'not-an-address'],
    // A link-local peer's zone names this host's interface (a VLAN, a Docker bridge): left out.
    ['fe80::1%eth0.100', 64, 'fe80:0:0:0:0:0:0:0/64'],
    ['fe80::1%br-1a2b', 64, 'fe80:0:0:0:0:0:0:0/64'],
  ])('%s /%i → %s', (address, prefix, key) => {
    expect(addressKey(address, prefix)).toBe(key);
  });
});
