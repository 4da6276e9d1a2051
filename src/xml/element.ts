import { Element, createElement, parse } from 'ltx';

export { Element };

/**
 * Parses the bytes of one complete element that the stream scanner has already checked
 * (well-formed, restricted XML, UTF-8). Only used off the hot path: elements the proxy must
 * understand, never every stanza.
 */
export function parseElement(bytes: Buffer | string): Element {
  return parse(typeof bytes === 'string' ? bytes : bytes.toString('utf8'));
}

/** Builds an element with ltx's builder (`xml('a', { h: '1' })`). */
export const xml = createElement;
