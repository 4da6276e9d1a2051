import type { SessionHook } from '../session/hooks.js';
import { replayDelayStamp } from './delay-stamp.js';
import { foreignAuthzidRefusal } from './foreign-authzid.js';
import { legacyAuthRefusal } from './legacy-auth.js';
import { pingWhileAway } from './ping-while-away.js';
import { streamManagementOffer } from './stream-management-offer.js';
import { transportRefusals } from './transport-refusals.js';
import { upstreamRenewal } from './upstream-renewal.js';

/**
 * The hooks every session runs (session/hooks.ts), in order. A feature that changes what flows
 * adds its hook here, after these; the refusals come first so that nothing a feature does can see
 * an element the proxy refuses.
 */
export const BUILTIN_HOOKS: readonly SessionHook[] = [
  transportRefusals,
  foreignAuthzidRefusal,
  legacyAuthRefusal,
  pingWhileAway,
  replayDelayStamp,
  streamManagementOffer,
  upstreamRenewal(),
];
