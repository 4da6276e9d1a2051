import { describe, expect, it } from 'vitest';
import { negotiateMax, newSmId, parseResumeFlag } from '../../src/sm/enable-decision.js';

describe('parseResumeFlag (XEP-0198 §3, xs:boolean)', () => {
  it.each<[string | undefined, boolean | 'invalid']>([
    ['true', true],
    ['1', true],
    ['false', false],
    ['0', false],
    [undefined, false],
    ['', 'invalid'],
    ['True', 'invalid'],
    ['TRUE', 'invalid'],
    ['yes', 'invalid'],
    ['on', 'invalid'],
    [' true', 'invalid'],
    ['true ', 'invalid'],
    ['01', 'invalid'],
    ['2', 'invalid'],
  ])('parseResumeFlag(%j) = %s', (value, expected) => {
    expect(parseResumeFlag(value)).toBe(expected);
  });
});

describe('negotiateMax', () => {
  it.each<[clientMax: string | undefined, defaultSeconds: number, maxSeconds: number, expected: number]>([
    [undefined, 300, 600, 300],
    ['60', 300, 600, 60],
    ['600', 300, 600, 600],
    ['601', 300, 600, 600],
    ['86400', 300, 600, 600],
    ['1', 300, 600, 1],
    ['060', 300, 600, 60], // leading zeros: still a positiveInteger
    ['9'.repeat(400), 300, 600, 600], // unbounded positiveInteger, capped
    // invalid → default
    ['0', 300, 600, 300],
    ['000', 300, 600, 300],
    ['-5', 300, 600, 300],
    ['+60', 300, 600, 300],
    ['1.5', 300, 600, 300],
    ['1e3', 300, 600, 300],
    [' 30', 300, 600, 300],
    ['', 300, 600, 300],
    ['abc', 300, 600, 300],
    // a default above the maximum never escapes it
    [undefined, 900, 600, 600],
    ['bad', 900, 600, 600],
    // a default of 0 is resumption turned off: the client's max does not turn it on
    [undefined, 0, 600, 0],
    ['300', 0, 600, 0],
  ])('negotiateMax(%j, %d, %d) = %d', (clientMax, defaultSeconds, maxSeconds, expected) => {
    expect(negotiateMax(clientMax, defaultSeconds, maxSeconds)).toBe(expected);
  });
});

describe('newSmId', () => {
  it('is 24 base64url characters (144 random bits), no padding', () => {
    for (let i = 0; i < 100; i++) expect(newSmId()).toMatch(/^[A-Za-z0-9_-]{24}$/);
  });

  it('does not repeat', () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => newSmId()));
    expect(ids.size).toBe(10_000);
  });
});
