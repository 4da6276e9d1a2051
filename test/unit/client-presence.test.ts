import { describe, expect, it } from 'vitest';
import { ClientPresence } from '../../src/session/client-presence.js';

function after(...stanzas: string[]): boolean {
  const presence = new ClientPresence();
  for (const xml of stanzas) presence.observe(xml.slice(1, xml.search(/[ />]/)), Buffer.from(xml));
  return presence.shown;
}

describe('ClientPresence: whether the user must be announced unavailable when the session ends (RFC 6121 §4.5, §4.6)', () => {
  it.each([
    ['nothing sent', [], false],
    ['initial presence', ['<presence/>'], true],
    ['a status update', ['<presence><show>away</show></presence>'], true],
    ['directed presence only', ["<presence to='room@muc.example.com/me'/>"], true],
    ['then broadcast unavailable', ['<presence/>', "<presence type='unavailable'/>"], false],
    ['directed unavailable leaves the rest shown', ['<presence/>', "<presence to='x@example.com' type='unavailable'/>"], true],
    ['subscription requests show nothing', ["<presence to='x@example.com' type='subscribe'/>"], false],
    ['messages are not presence', ["<message to='x@example.com'><body>hi</body></message>"], false],
  ])('%s', (_label, stanzas, shown) => {
    expect(after(...stanzas)).toBe(shown);
  });
});
