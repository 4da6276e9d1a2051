import type { Logger } from 'pino';
import { asProxyError } from '../errors.js';
import { parseElement } from '../xml/element.js';
import { NS } from '../xml/namespaces.js';
import { rewriteFeatures, type FeaturesFindings } from '../session/features.js';
import { UpstreamLink, type UpstreamTarget } from './upstream-link.js';

/** What a start-up probe of one legacy server found. */
export type ProbeResult =
  | { readonly ok: true; readonly mechanisms: readonly string[]; readonly findings: FeaturesFindings }
  | { readonly ok: false; readonly error: string };

/**
 * Opens a stream to the legacy server, reads its pre-authentication features and closes again, so
 * that the operator learns at start-up whether the server is reachable and whether it advertises
 * SASL channel binding, which cannot work through a TLS-terminating proxy (README, Security).
 */
export async function probeUpstream(target: UpstreamTarget, log: Logger): Promise<ProbeResult> {
  let link: UpstreamLink;
  try {
    link = await UpstreamLink.connect(target, log);
  } catch (err) {
    return { ok: false, error: asProxyError(err).message };
  }
  return new Promise((resolve) => {
    const timer = setTimeout(
      () => done({ ok: false, error: `no stream features within ${target.connectTimeoutMs} ms` }),
      target.connectTimeoutMs,
    );
    const done = (result: ProbeResult): void => {
      clearTimeout(timer);
      link.close();
      resolve(result);
    };
    link.setHandler({
      onStreamOpen: () => undefined,
      onElement: (element) => {
        if (element.localName !== 'features' || element.ns !== NS.stream) {
          done({ ok: false, error: `expected <stream:features/>, got <${element.name}/>` });
          return;
        }
        const features = parseElement(element.bytes);
        const mechanisms = (features.getChild('mechanisms', NS.sasl)?.getChildren('mechanism') ?? []).map((m) => m.getText().trim());
        done({ ok: true, mechanisms, findings: rewriteFeatures(features, []).findings });
      },
      onStreamClose: () => done({ ok: false, error: 'the server closed the stream' }),
      onFailure: (error) => done({ ok: false, error: error.message }),
      onEnd: () => done({ ok: false, error: 'connection closed' }),
      onDrain: () => undefined,
    });
    link.sendHeader({ to: target.domain, version: '1.0' });
  });
}
