import { randomUUID } from 'node:crypto';
import { parseElement, xml, type Element } from '../xml/element.js';
import { escapeXml } from '../xml/escape.js';
import { NS } from '../xml/namespaces.js';
import { bare, resourceOf } from '../xml/jid.js';
import { isElementNamed } from '../xml/stanza-bytes.js';
import type { FromClientVerdict, SessionHandle, SessionHook } from '../session/hooks.js';
import { notificationIq, wakesUser } from './push-notification.js';
import { readRegistrations, sameRegistration, storageQuery, type PushRegistration } from './push-registrations.js';

/** config `push`, read at each use (a reload applies at once). */
export interface PushSettings {
  readonly enabled: boolean;
  /** At most one notification per session per this many ms. */
  readonly intervalMs: number;
  /** How long a session with registrations hibernates; 0 = as any other. */
  readonly hibernationMs: number;
  readonly withSender: boolean;
  readonly withBody: boolean;
}

/** The ids of the proxy's own iqs on a user's stream; a client's ids never start so. */
const ID_PREFIX = 'smacks-proxy-push-';
const ID_PREFIX_BYTES = Buffer.from(ID_PREFIX, 'latin1');
const PUSH_NS = Buffer.from(NS.push, 'latin1');
const DISCO_INFO = Buffer.from(NS.discoInfo, 'latin1');
/** XEP-0357 §7: the app server's answers that say the registration is gone for good. */
const GONE = new Set(['item-not-found', 'not-authorized', 'registration-required', 'forbidden']);

/** What the proxy does with the answer to one of its iqs: the bytes to deliver to the client in its place, or nothing. */
type Answered = (answer: Element) => Buffer | undefined;

/** One of the proxy's iqs in flight: who may answer it (RFC 6120 §8.1.2.1: the entity it was sent to), and what follows. */
interface Pending {
  readonly from: string | undefined;
  readonly answered: Answered;
  /** A notification's: an app server may never answer (or be unreachable), so it gives way to newer requests. */
  readonly evictable: boolean;
}

/** The proxy's iqs in flight per session at most; the oldest notification gives way first. */
const MAX_PENDING = 16;
/** Registration changes waiting per session at most (they run one after another); beyond, `resource-constraint`. */
const MAX_UPDATES = 8;
/** Registrations per account at most; the oldest goes first (mod_cloud_notify's push_max_devices). */
const MAX_REGISTRATIONS = 5;
/** What `last-message-body` says when the body is not sent (mod_cloud_notify's push_notification_important_body): iOS app servers show a notification only with one. */
const PLACEHOLDER_BODY = 'New Message!';

interface PushState {
  /** This account's registrations as stored, once read (at bind); `undefined` until then. */
  registrations: PushRegistration[] | undefined;
  readonly pending: Map<string, Pending>;
  /** The hibernation the counts are for ({@link SessionHandle.awaySinceMs}). */
  awaySinceMs: number | undefined;
  /** Registration changes waiting for the one in flight (read-modify-write must not interleave). */
  readonly updates: (() => void)[];
  updating: boolean;
  /** Armed when a notification was held back by the interval: sends it at the interval's end. */
  trailing: NodeJS.Timeout | undefined;
  /** Stanzas that would wake the user since the client went away, and how many of them were notified. */
  wakers: number;
  notified: number;
  lastNotifiedMs: number | undefined;
  lastSender: string | undefined;
  lastBody: string | undefined;
}

/**
 * XEP-0357 push notifications for legacy servers without them, as Prosody's mod_cloud_notify does
 * them: the client's `<enable/>` and `<disable/>` iqs to its own account are answered here, the
 * registrations kept in the user's private XML storage (push-registrations.ts), `urn:xmpp:push:0`
 * added to the disco#info answer of the user's own bare JID, and while a session hibernates, a
 * stanza that would wake the user makes the proxy publish a notification to each registration of
 * the session's resource, through the user's own stream, at most once per `intervalMs`. An app
 * server's error that says the registration is gone removes it.
 */
export function pushNotifications(settings: () => PushSettings, now: () => number): readonly SessionHook[] {
  const states = new WeakMap<SessionHandle, PushState>();
  const stateOf = (session: SessionHandle): PushState => {
    let state = states.get(session);
    if (state === undefined) {
      state = {
        registrations: undefined,
        pending: new Map(),
        awaySinceMs: undefined,
        updates: [],
        updating: false,
        trailing: undefined,
        wakers: 0,
        notified: 0,
        lastNotifiedMs: undefined,
        lastSender: undefined,
        lastBody: undefined,
      };
      states.set(session, state);
    }
    return state;
  };

  /**
   * Sends an iq on the user's behalf; `answered` gets its result or error, taken only from the entity
   * it was sent to (the user's own account when it has no `to`). The id is random: no contact can
   * guess it and answer in the server's or the app server's place. When MAX_PENDING are in flight,
   * the oldest notification is forgotten (its answer, when it comes, is dropped); false (nothing
   * sent) when none can be.
   */
  const request = (session: SessionHandle, iq: Element, answered: Answered, evictable = false): boolean => {
    const pending = stateOf(session).pending;
    if (pending.size >= MAX_PENDING) {
      const oldest = [...pending].find(([, entry]) => entry.evictable);
      if (oldest === undefined) return false;
      pending.delete(oldest[0]);
    }
    const id = `${ID_PREFIX}${randomUUID()}`;
    iq.attrs.id = id;
    pending.set(id, { from: iq.attrs.to as string | undefined, answered, evictable });
    session.sendUpstream(iq.toString());
    return true;
  };

  /**
   * Reads the stored registrations, applies `change`, writes them back; `done` gets the write's
   * answer. Changes of one session run one after another, so that two enables cannot both read the
   * same element and the second write lose the first. False when MAX_UPDATES are waiting.
   */
  const update = (session: SessionHandle, change: (stored: PushRegistration[]) => PushRegistration[], done: Answered): boolean => {
    const state = stateOf(session);
    if (state.updates.length >= MAX_UPDATES) return false;
    const next = (): void => {
      state.updating = false;
      state.updates.shift()?.();
    };
    const finish = (answer: Element): Buffer | undefined => {
      const reply = done(answer);
      next();
      return reply;
    };
    const run = (): void => {
      state.updating = true;
      const read = request(session, xml('iq', { type: 'get' }, storageQuery([])), (stored) => {
        if (stored.attrs.type !== 'result') return finish(stored);
        const registrations = change(readRegistrations(stored.getChild('query', NS.private)));
        const written = request(session, xml('iq', { type: 'set' }, storageQuery(registrations)), (answer) => {
          if (answer.attrs.type === 'result') state.registrations = registrations;
          return finish(answer);
        });
        return written ? undefined : finish(xml('iq', { type: 'error' }));
      });
      if (!read) {
        done(xml('iq', { type: 'error' }));
        next();
      }
    };
    if (state.updating) state.updates.push(run);
    else run();
    return true;
  };

  /** The client's `<enable/>` or `<disable/>` (XEP-0357 §5, §6) to its own account; `undefined` for any other iq. */
  const onClientIq = (iq: Element, session: SessionHandle): FromClientVerdict => {
    const jid = session.jid ?? '';
    const account = bare(jid);
    const command = iq.getChild('enable', NS.push) ?? iq.getChild('disable', NS.push);
    const to = iq.attrs.to as string | undefined;
    if (iq.attrs.type !== 'set' || command === undefined || (to !== undefined && to.toLowerCase() !== account.toLowerCase()))
      return undefined;
    const id = (iq.attrs.id as string | undefined) ?? '';
    const answer = (type: 'result' | 'error', error = ''): string =>
      `<iq type='${type}' id='${escapeXml(id)}' to='${escapeXml(jid)}'${to === undefined ? '' : ` from='${escapeXml(account)}'`}>${error}</iq>`;
    const appServer = command.attrs.jid as string | undefined;
    const node = command.attrs.node as string | undefined;
    // As mod_cloud_notify: the user's own account is no app server (its PEP would get the notifications).
    const own = appServer !== undefined && bare(appServer).toLowerCase() === account.toLowerCase();
    if (appServer === undefined || appServer === '' || own || (command.name === 'enable' && (node === undefined || node === ''))) {
      return { kind: 'answer-stanza', stanza: answer('error', `<error type='modify'><bad-request xmlns='${NS.stanzas}'/></error>`) };
    }
    const resource = resourceOf(jid);
    const change =
      command.name === 'enable'
        ? (stored: PushRegistration[]) =>
            [
              ...stored.filter((r) => !sameRegistration(r, { jid: appServer, node: node! })),
              { jid: appServer, node: node!, resource, publishOptions: command.getChild('x', NS.dataForms) },
            ].slice(-MAX_REGISTRATIONS)
        : // XEP-0357 §6: without a node, every registration with that app server goes.
          (stored: PushRegistration[]) => stored.filter((r) => r.jid !== appServer || (node !== undefined && r.node !== node));
    const sent = update(session, change, (written) => {
      if (written.attrs.type === 'result') {
        session.log.info(
          { push: command.name, appServer },
          command.name === 'enable' ? 'push notifications enabled' : 'push notifications disabled',
        );
        return Buffer.from(answer('result'));
      }
      session.log.warn({ push: command.name, appServer }, 'push registrations could not be stored in private XML storage');
      return Buffer.from(answer('error', `<error type='wait'><internal-server-error xmlns='${NS.stanzas}'/></error>`));
    });
    if (!sent)
      return { kind: 'answer-stanza', stanza: answer('error', `<error type='wait'><resource-constraint xmlns='${NS.stanzas}'/></error>`) };
    // Answered once the private storage is written: the answer to the proxy's write becomes the client's.
    return { kind: 'consumed' };
  };

  const notify = (session: SessionHandle, state: PushState): void => {
    const config = settings();
    const mine = registrationsOf(state, session);
    if (mine.length === 0) return;
    const at = now();
    if (state.lastNotifiedMs !== undefined && at - state.lastNotifiedMs < config.intervalMs) {
      // Not now: at the interval's end, for what arrived meanwhile, if the session is still away then.
      if (state.trailing === undefined) {
        const away = state.awaySinceMs;
        state.trailing = setTimeout(
          () => {
            state.trailing = undefined;
            if (session.awaySinceMs === away && state.wakers > state.notified) notify(session, state);
          },
          state.lastNotifiedMs + config.intervalMs - at,
        );
        state.trailing.unref();
      }
      return;
    }
    state.lastNotifiedMs = at;
    state.notified = state.wakers;
    const summary = {
      messageCount: state.wakers,
      ...(config.withSender && state.lastSender !== undefined ? { lastSender: state.lastSender } : {}),
      lastBody: config.withBody && state.lastBody !== undefined ? state.lastBody : PLACEHOLDER_BODY,
    };
    for (const registration of mine) {
      const sent = request(
        session,
        notificationIq(registration, summary),
        (answer) => {
          const condition = answer
            .getChild('error')
            ?.getChildElements()
            .find((c) => c.getNS() === NS.stanzas)?.name;
          if (answer.attrs.type !== 'error' || condition === undefined || !GONE.has(condition)) return undefined;
          session.log.info({ appServer: registration.jid, condition }, 'push registration refused by its app server; removed');
          update(
            session,
            (stored) => stored.filter((r) => !sameRegistration(r, registration)),
            () => undefined,
          );
          return undefined;
        },
        true,
      );
      if (!sent) session.log.debug({ appServer: registration.jid }, 'push notification skipped: too many requests in flight');
    }
    session.log.debug({ count: mine.length, messageCount: summary.messageCount }, 'push notification published');
  };

  /** Counts `bytes` if it would wake the user; true when it does. */
  const counted = (state: PushState, bytes: Buffer): boolean => {
    const stanza = parseElement(bytes);
    if (!wakesUser(stanza)) return false;
    state.wakers++;
    state.lastSender = bare((stanza.attrs.from as string | undefined) ?? '');
    state.lastBody = stanza.getChildText('body') ?? undefined;
    return true;
  };

  /** The registrations this session notifies, once the hibernation it counts for is the current one. */
  const awayWithRegistrations = (state: PushState, session: SessionHandle): boolean => {
    if (state.awaySinceMs !== session.awaySinceMs) {
      // Away again since the last count: what the client got meanwhile needed no notification.
      state.awaySinceMs = session.awaySinceMs;
      state.wakers = 0;
      state.notified = 0;
      state.lastNotifiedMs = undefined;
    }
    return settings().enabled && registrationsOf(state, session).length > 0;
  };

  /** A stanza queued for a hibernating session. */
  const wokenUp = (state: PushState, bytes: Buffer, session: SessionHandle): void => {
    if (awayWithRegistrations(state, session) && counted(state, bytes) && state.wakers > state.notified) notify(session, state);
  };

  const clientSide: SessionHook = {
    name: 'push-notifications',
    phases: ['active'],
    kinds: ['iq'],
    // What the client had not acknowledged when it went away it may never have seen: it counts, and
    // a session with registrations stays longer.
    hibernated(session, unacked) {
      const state = states.get(session);
      if (state === undefined || !awayWithRegistrations(state, session)) return;
      // Kept the whole time, not only until the first notification as mod_cloud_notify does: a
      // session that ends here bounces what it holds, as no offline storage or archive takes it.
      const { hibernationMs } = settings();
      if (hibernationMs > 0) session.hibernateFor(hibernationMs);
      for (const bytes of unacked) if (isElementNamed(bytes, 'message') || isElementNamed(bytes, 'presence')) counted(state, bytes);
      if (state.wakers > 0) notify(session, state);
    },
    // An upgrade: the registrations and this hibernation's counts go to the next process with the session.
    handedOff(session) {
      const state = states.get(session);
      return state?.registrations === undefined ? undefined : writeCarried(state, state.registrations);
    },
    adopted(session, carried) {
      const read = readCarried(carried);
      if (read === undefined) {
        session.log.warn('push state handed over by the previous process cannot be read; registrations are read again at the next bind');
        return;
      }
      const state = stateOf(session);
      Object.assign(state, read);
      // What woke the user before the upgrade and was held back by the interval is notified at its end.
      if (awayWithRegistrations(state, session) && state.wakers > state.notified) notify(session, state);
    },
    bound(session) {
      if (!settings().enabled) return;
      request(session, xml('iq', { type: 'get' }, storageQuery([])), (read) => {
        stateOf(session).registrations = read.attrs.type === 'result' ? readRegistrations(read.getChild('query', NS.private)) : [];
        return undefined;
      });
    },
    fromClient(element, _phase, session) {
      if (element.localName !== 'iq' || !element.bytes.includes(PUSH_NS) || !settings().enabled) return undefined;
      return onClientIq(parseElement(element.bytes), session);
    },
    // Only an iq answers the proxy's requests or is a disco#info result.
    toClient(bytes, _delivery, session) {
      if (bytes.includes(ID_PREFIX_BYTES)) {
        const stanza = parseElement(bytes);
        const id = String(stanza.attrs.id);
        const type = stanza.attrs.type;
        if ((type === 'result' || type === 'error') && id.startsWith(ID_PREFIX)) {
          const state = states.get(session);
          const pending = state?.pending.get(id);
          if (pending !== undefined && answeredBy(pending, stanza, session)) {
            state!.pending.delete(id);
            return pending.answered(stanza);
          }
          // An answer to a request this session no longer waits for (one that gave way, or was sent
          // before an upgrade by the previous process): the proxy's own, never the client's. A
          // forgery from someone else than the request went to is the client's to see (RFC 6120 §8.1.2.1).
          if (pending === undefined) return undefined;
        }
      }
      return bytes.includes(DISCO_INFO) && settings().enabled ? withPushFeature(bytes, session) : bytes;
    },
  };
  // An iq never wakes the user; messages and presence for an attached client are not asked about.
  const whileAway: SessionHook = {
    name: 'push-notifications-while-away',
    deliveries: ['queued'],
    kinds: ['message', 'presence'],
    toClient(bytes, _delivery, session) {
      const state = states.get(session);
      if (state !== undefined) wokenUp(state, bytes, session);
      return bytes;
    },
  };
  return [clientSide, whileAway];
}

/** RFC 6120 §8.1.2.1: the answer comes from whom the request went to; without a `to`, the user's own account (the server). */
function answeredBy(pending: Pending, answer: Element, session: SessionHandle): boolean {
  const from = answer.attrs.from as string | undefined;
  if (pending.from !== undefined) return from !== undefined && from.toLowerCase() === pending.from.toLowerCase();
  return from === undefined || from === bare(session.jid ?? '');
}

/** The registrations of the session's resource (push-registrations.ts: a registration belongs to the resource that made it). */
function registrationsOf(state: PushState, session: SessionHandle): PushRegistration[] {
  const resource = resourceOf(session.jid ?? '');
  return (state.registrations ?? []).filter((r) => r.resource === resource);
}

/** XEP-0357 §3: clients look for the feature in the disco#info answer of their own account. */
function withPushFeature(bytes: Buffer, session: SessionHandle): Buffer {
  const stanza = parseElement(bytes);
  const query = stanza.getChild('query', NS.discoInfo);
  const from = stanza.attrs.from as string | undefined;
  if (stanza.name !== 'iq' || stanza.attrs.type !== 'result' || query === undefined || query.attrs.node !== undefined) return bytes;
  if (from !== bare(session.jid ?? '') || query.getChildren('feature').some((f) => f.attrs.var === NS.push)) return bytes;
  query.cnode(xml('feature', { var: NS.push }));
  return Buffer.from(stanza.toString());
}

/** The part of a session's push state that an upgrade carries to the next process (hooks.ts `handedOff`): plain JSON data. */
interface CarriedPushState {
  readonly registrations: readonly { jid: string; node: string; resource: string; publishOptions: string | null }[];
  readonly awaySinceMs: number | null;
  readonly wakers: number;
  readonly notified: number;
  readonly lastNotifiedMs: number | null;
  readonly lastSender: string | null;
  readonly lastBody: string | null;
}

function writeCarried(state: PushState, registrations: readonly PushRegistration[]): CarriedPushState {
  return {
    registrations: registrations.map((r) => ({
      jid: r.jid,
      node: r.node,
      resource: r.resource,
      publishOptions: r.publishOptions?.toString() ?? null,
    })),
    awaySinceMs: state.awaySinceMs ?? null,
    wakers: state.wakers,
    notified: state.notified,
    lastNotifiedMs: state.lastNotifiedMs ?? null,
    lastSender: state.lastSender ?? null,
    lastBody: state.lastBody ?? null,
  };
}

type CarriedFields = Pick<
  PushState,
  'registrations' | 'awaySinceMs' | 'wakers' | 'notified' | 'lastNotifiedMs' | 'lastSender' | 'lastBody'
>;

/** What {@link writeCarried} wrote, checked field by field (another version may have written it); `undefined` when it does not hold together. */
function readCarried(value: unknown): CarriedFields | undefined {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Partial<Record<keyof CarriedPushState, unknown>>;
  const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  const isText = (x: unknown): x is string => typeof x === 'string';
  const nullable = (x: unknown, is: (y: unknown) => boolean): boolean => x === null || is(x);
  if (!Array.isArray(v.registrations) || !isCount(v.wakers) || !isCount(v.notified)) return undefined;
  if (
    !nullable(v.awaySinceMs, isCount) ||
    !nullable(v.lastNotifiedMs, isCount) ||
    !nullable(v.lastSender, isText) ||
    !nullable(v.lastBody, isText)
  )
    return undefined;
  const registrations: PushRegistration[] = [];
  for (const entry of v.registrations as unknown[]) {
    const r = (typeof entry === 'object' && entry !== null ? entry : {}) as Record<string, unknown>;
    if (!isText(r.jid) || !isText(r.node) || !isText(r.resource) || !nullable(r.publishOptions, isText)) return undefined;
    let publishOptions: Element | undefined;
    try {
      publishOptions = isText(r.publishOptions) ? parseElement(r.publishOptions) : undefined;
    } catch {
      return undefined;
    }
    registrations.push({ jid: r.jid, node: r.node, resource: r.resource, publishOptions });
  }
  const orUndefined = <T>(x: unknown): T | undefined => (x === null ? undefined : (x as T));
  return {
    registrations,
    awaySinceMs: orUndefined(v.awaySinceMs),
    wakers: v.wakers,
    notified: v.notified,
    lastNotifiedMs: orUndefined(v.lastNotifiedMs),
    lastSender: orUndefined(v.lastSender),
    lastBody: orUndefined(v.lastBody),
  };
}
