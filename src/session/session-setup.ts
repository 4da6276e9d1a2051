import { ErrorCode, StreamError, UpstreamError, asProxyError, hostUnknown } from '../errors.js';
import type { ClientLink } from '../transport/client-link.js';
import type { UpstreamStream } from '../upstream/upstream-link.js';
import { parseElement } from '../xml/element.js';
import { bare } from '../xml/jid.js';
import { sameBareJid, sameFullJid } from '../sm/resumption.js';
import { stanzaKindOf } from '../xml/stanza-bytes.js';
import { clipped } from '../xml/sanitize.js';
import type { ScannedElement, StreamHeader } from '../xml/stream-scanner.js';
import { rewriteFeatures } from './features.js';
import type { SessionCore } from './session-core.js';
import { linkOf, upstreamOf, type State } from './session-state.js';
import { StreamSetup, type SetupPort } from './stream-setup.js';
import { onIdentityKnown } from './resume-request.js';

/*
 * How a session sets up its streams: the client's stream header opens the hop to the legacy
 * server, stream setup (stream-setup.ts) relays SASL and the bind through the port below, and the
 * bind inherits what earlier sessions of its full JID left (README, What it does).
 */

const BIND_ID_PREFIX = 'smacks-proxy-bind-';
/** How long stanzas handed to a new login wait for its `<enable/>` (waitForEnable). */
export const ENABLE_WAIT_MS = 2_000;

/** The time a client has to authenticate and bind (`authTimeoutMs`): then `connection-timeout`. */
export function armAuthTimer(core: SessionCore): NodeJS.Timeout {
  const timer = setTimeout(() => {
    const s = core.state;
    // The timer re-checks the state it was armed for.
    if (!('authTimer' in s) || s.authTimer !== timer) return;
    core.fail(
      new StreamError(
        ErrorCode.CONNECTION_TIMEOUT,
        'connection-timeout',
        `no authentication and bind within ${core.deps.settings.authTimeoutMs} ms`,
      ),
    );
  }, core.deps.settings.authTimeoutMs);
  timer.unref();
  return timer;
}

/**
 * The client's stream header: the domain it names must be one the proxy serves (RFC 6120 §4.7.1
 * `to`), then the legacy server for it is connected, while what the client sends waits in order.
 */
export function openUpstream(core: SessionCore, { link, authTimer }: Extract<State, { name: 'opening' }>, header: StreamHeader): void {
  const version = header.attrs.version;
  const to = header.attrs.to?.toLowerCase();
  if (version === undefined || !version.startsWith('1.')) {
    // RFC 6120 §4.7.5: the proxy speaks XMPP 1.0 only.
    core.fail(
      new StreamError(ErrorCode.UNSUPPORTED_VERSION, 'unsupported-version', `stream version '${clipped(version ?? '(none)')}' is not 1.x`),
    );
    return;
  }
  const target = to === undefined ? undefined : core.deps.upstreamFor(to);
  if (to === undefined || target === undefined) {
    core.fail(hostUnknown(to));
    return;
  }
  core.domainName = to;
  core.transition({ name: 'connecting', link, authTimer, held: [] });
  core.flow.waitForServer();
  link.setLimits({ maxStanzaBytes: core.deps.settings.maxStanzaBytesPreAuth });
  core.log.debug({ domain: to, upstream: `${target.host}:${target.port}` }, 'connecting upstream');
  // A PROXY protocol header upstream, when the domain asks for one, names this client.
  core.deps.connectUpstream({ ...target, origin: link.endpoints }, core.log).then(
    (upstream) => core.guard(() => onUpstreamConnected(core, upstream, header)),
    (err: unknown) =>
      core.guard(() => {
        const error = err instanceof StreamError ? err : new UpstreamError(ErrorCode.UPSTREAM_CONNECT, asProxyError(err).message);
        core.log.warn({ code: error.code, err: error.message }, 'upstream connect failed');
        core.fail(error);
      }),
  );
}

function onUpstreamConnected(core: SessionCore, upstream: UpstreamStream, header: StreamHeader): void {
  const s = core.state;
  if (s.name !== 'connecting') {
    // The client went away while we were connecting.
    upstream.destroy();
    return;
  }
  upstream.setHandler(core.wiring.upstreamHandler(upstream));
  const setup = new StreamSetup(core.domainName ?? '', BIND_ID_PREFIX + core.sid, setupPort(core, upstream));
  core.transition({ name: 'negotiating', link: s.link, authTimer: s.authTimer, upstream, setup });
  upstream.sendHeader(headerAttrs(header));
  for (const element of s.held) core.wiring.fromClient(element);
  core.flow.serverAnswered();
}

/** What stream setup does through this session (stream-setup.ts). */
function setupPort(core: SessionCore, upstream: UpstreamStream): SetupPort {
  return {
    toClient: (data) => core.toClient(data),
    toServer: (data) => core.toUpstream(upstream, data),
    saslFailed: (condition, attempt) => {
      // README, Limits and abuse: a line per failure for fail2ban and the like; never the payload.
      const address = linkOf(core.state)?.address;
      core.log.info(
        { code: ErrorCode.SASL_FAILED, address, mechanism: attempt?.mechanism, username: attempt?.username, condition },
        'SASL authentication failed',
      );
      core.deps.failedLogins.failed(core.addressKey, core.deps.now());
    },
    saslSucceeded: () => {
      // RFC 6120 §6.4.6: both streams restart; SASL payloads are never logged.
      const link = core.requireLink();
      link.expectRestart();
      upstream.expectRestart();
      link.setLimits({ maxStanzaBytes: core.deps.settings.maxStanzaBytes });
      core.log.debug('authenticated');
    },
    waitForServer: () => core.flow.waitForServer(),
    serverAnswered: () => core.flow.serverAnswered(),
    beforeBind: (resource, account, send) => {
      // The same full JID. Only where SASL named the account: what the sessions of that JID
      // queued or received must never reach another account (EXTERNAL names none; such a bind
      // replaces nothing and does not wait).
      if (resource === undefined || account === undefined) {
        send([]);
        return;
      }
      const wanted = `${account}/${resource}`;
      const sameJid = (jid: string): boolean => sameFullJid(jid, wanted);
      core.inheritedFor = wanted;
      // README, What it does: a live session of this JID ends here, and its stream lingers.
      const queued = core.deps.registry.replaceByLogin(account, resource);
      if (!core.deps.lingering.has(sameJid)) {
        send(queued);
        return;
      }
      core.log.debug({ resource }, 'bind waits for the ended session of this resource to close upstream');
      void core.deps.lingering.handOver(sameJid).then((inherited) =>
        core.guard(() => {
          if (upstreamOf(core.state) === upstream && core.state.name === 'negotiating') send([...queued, ...inherited]);
          else core.inheritedLost([...queued, ...inherited]);
        }),
      );
    },
    bound: (jid, inherited, held) => {
      // Only the account they were for may have them: a server could bind a SASL name to another.
      const forAnother = core.inheritedFor !== undefined && !sameBareJid(bare(jid), bare(core.inheritedFor));
      if (forAnother) core.inheritedLost(inherited);
      // What was kept for this very full JID (kept-stanzas.ts): the server bound it here, whatever the SASL mechanism.
      const kept = core.deps.lingering.kept.take((keptFor) => sameFullJid(keptFor, jid));
      const handedOver = [...kept, ...(forAnother ? [] : inherited)];
      core.inheritedFor = handedOver.length > 0 ? jid : undefined;
      becomeActive(core, jid);
      // A pipelined <enable/> first: what is handed over is then counted, and kept until acknowledged.
      for (const element of held) core.wiring.fromClient(element);
      // Routed to this full JID before the server bound it here: they come first, oldest first, in
      // order, for as long as the session lasts (a queue that overflows ends it).
      const s = core.state;
      if (handedOver.length > 0 && s.name === 'active' && s.sm === undefined) waitForEnable(core, s.link);
      for (const [i, bytes] of handedOver.entries()) {
        if (core.state !== s || s.name !== 'active') {
          core.inheritedLost(handedOver.slice(i));
          break;
        }
        core.delivery.handedOver(s, bytes, stanzaKindOf(bytes));
      }
      core.inheritedFor = undefined;
    },
    inheritedLost: (inherited) => core.inheritedLost(inherited),
    redeliver: (held) => {
      for (const element of held) core.wiring.fromClient(element);
    },
    identityKnown: (request, bareJid, byBind, boundJid) => onIdentityKnown(core, request, bareJid, byBind, boundJid),
  };
}

function becomeActive(core: SessionCore, jid: string): void {
  const s = core.state;
  if (s.name !== 'negotiating') return;
  core.transition({ name: 'active', link: s.link, upstream: s.upstream, jid, sm: undefined, clock: undefined });
  core.deps.registry.bound(core.session);
  s.upstream.startKeepalive(core.deps.settings.upstreamKeepaliveMs);
  core.log = core.log.child({ jid });
  core.log.info('bound');
  core.deps.hooks.bound(core.session);
}

export function relayFeatures(core: SessionCore, setup: StreamSetup | undefined, element: ScannedElement): void {
  const phase = setup?.featuresPhase ?? 'post-auth';
  const offered = parseElement(element.bytes);
  if (phase === 'post-auth') core.serverFeatures = offered;
  const { features, findings } = rewriteFeatures(offered, core.deps.hooks.advertise(phase, offered));
  if (findings.channelBindingMechanisms.length > 0 || findings.channelBindingTypes) {
    core.deps.reportFindings(core.domainName ?? '', findings);
  }
  core.toClient(features.toString());
  setup?.featuresRelayed();
}

/**
 * Stanzas handed to a new login wait, with everything behind them, for the client's `<enable/>`
 * after its bind result, so that stream management counts them and keeps them until they are
 * acknowledged; a client that does not enable within ENABLE_WAIT_MS gets them then (README, What
 * it does). The timer re-checks that the client link it was armed for is still attached.
 */
function waitForEnable(core: SessionCore, link: ClientLink): void {
  core.delivery.awaitEnable();
  const timer = setTimeout(
    () =>
      core.guard(() => {
        const s = core.state;
        if (s.name === 'active' && s.link === link) core.delivery.stopAwaitingEnable(s);
      }),
    ENABLE_WAIT_MS,
  );
  timer.unref();
}

/** The stream header attributes the hop to the legacy server opens with: the client's own. */
export function headerAttrs(header: StreamHeader): { to?: string; from?: string; version?: string; lang?: string } {
  return { to: header.attrs.to, from: header.attrs.from, version: header.attrs.version, lang: header.attrs['xml:lang'] };
}
