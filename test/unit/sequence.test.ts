import { describe, expect, it } from 'vitest';
import { InboundCounter } from '../../src/sm/inbound-counter.js';
import { MAX_SEQ, addSeq, isSeq, nextSeq, parseH, seqDistance } from '../../src/sm/sequence.js';
import { InvariantError } from '../../src/errors.js';

describe('nextSeq', () => {
  it.each([
    [0, 1],
    [41, 42],
    [4294967294, 4294967295],
    [4294967295, 0], // XEP-0198 §4: reset from 2^32-1 back to zero
  ])('nextSeq(%d) = %d', (n, expected) => {
    expect(nextSeq(n)).toBe(expected);
  });
});

describe('addSeq', () => {
  it.each([
    [0, 0, 0],
    [5, 3, 8],
    [4294967290, 5, 4294967295],
    [4294967290, 6, 0],
    [4294967290, 10, 4],
    [4294967295, 4294967295, 4294967294],
    [7, 2 ** 32, 7],
  ])('addSeq(%d, %d) = %d', (n, k, expected) => {
    expect(addSeq(n, k)).toBe(expected);
  });
});

describe('seqDistance', () => {
  it.each([
    [0, 0, 0],
    [3, 8, 5],
    [8, 3, 4294967291],
    [4294967295, 0, 1],
    [4294967290, 4, 10],
    [4, 4294967290, 4294967286],
    [1, 0, 4294967295],
  ])('seqDistance(%d, %d) = %d', (from, to, expected) => {
    expect(seqDistance(from, to)).toBe(expected);
  });
});

describe('isSeq', () => {
  it.each([
    [0, true],
    [MAX_SEQ, true],
    [MAX_SEQ + 1, false],
    [-1, false],
    [1.5, false],
    [Number.NaN, false],
  ])('isSeq(%d) = %s', (n, expected) => {
    expect(isSeq(n)).toBe(expected);
  });
});

describe('parseH', () => {
  it.each<[string | undefined, number | undefined]>([
    ['0', 0],
    ['1', 1],
    ['42', 42],
    ['01', 1], // leading zeros are in the xs:unsignedInt lexical space
    ['0000000000000000000000000000007', 7],
    ['4294967295', 4294967295],
    ['4294967296', undefined],
    ['99999999999999999999999999', undefined],
    ['9'.repeat(400), undefined], // Number() gives Infinity
    [undefined, undefined],
    ['', undefined],
    ['-1', undefined],
    ['-0', undefined],
    ['+1', undefined],
    [' 1', undefined],
    ['1 ', undefined],
    ['1.0', undefined],
    ['1e3', undefined],
    ['0x1', undefined],
    ['0b1', undefined],
    ['1_000', undefined],
    ['١', undefined], // Arabic-Indic digit one: not ASCII
    ['NaN', undefined],
    ['Infinity', undefined],
  ])('parseH(%j) = %s', (value, expected) => {
    expect(parseH(value)).toBe(expected);
  });
});

describe('InboundCounter', () => {
  it('starts at 0 and counts handled stanzas', () => {
    const counter = new InboundCounter();
    expect(counter.h).toBe(0);
    counter.handled();
    counter.handled();
    expect(counter.h).toBe(2);
  });

  it('wraps from 4294967295 to 0 (XEP-0198 §4)', () => {
    const counter = new InboundCounter(4294967294);
    counter.handled();
    expect(counter.h).toBe(4294967295);
    counter.handled();
    expect(counter.h).toBe(0);
    counter.handled();
    expect(counter.h).toBe(1);
  });

  it.each([-1, 2 ** 32, 0.5, Number.NaN])('rejects initial value %d', (initial) => {
    expect(() => new InboundCounter(initial)).toThrow(InvariantError);
  });
});
