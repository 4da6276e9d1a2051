/**
 * Relay benchmark: messages/s and MB/s through the proxy (client TLS → proxy → upstream and back)
 * against a TLS-terminating Node `pipe()` relay, both in front of the same fast fake upstream that
 * echoes every `<message/>`, so the relay (not a server) is what is measured. Per process CPU
 * (proxy or pipe relay, load client, fake upstream) comes from each process's own cpuUsage().
 *
 * Each repetition runs every contestant once, back to back, in rotating order; the proxy/pipe
 * ratios are taken within a repetition, and the table shows medians over repetitions.
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fmt, fmtInt, median, Peer, sleep, table, topSelfTime, verdict } from './bench-util.js';
import { DOMAIN, proxyConfig, proxyLogProblems, startProxy, type BenchContext } from './bench-context.js';

/**
 * Queue limits above the client window (the echoes of a full window are unacked at once), for one
 * account's sessions from one address: the relay measures throughput, not the shares.
 */
const RELAY_QUEUES = {
  streamManagement: {
    maxQueueStanzas: 10_000,
    maxQueueBytes: 16 * 1024 * 1024,
    maxQueueBytesPerAccount: 1024 * 1024 * 1024,
    maxQueueBytesPerAddress: 0,
  },
};

interface Contestant {
  readonly name: string;
  readonly peer: Peer;
  readonly port: number;
  readonly sm: boolean;
}

interface Sample {
  readonly messagesPerSecond: number;
  readonly mbPerSecond: number;
  /** CPU seconds of the relay process (proxy or pipe) per GB echoed. */
  readonly cpuPerGb: number;
  readonly clientCpuPerGb: number;
  readonly upstreamCpuPerGb: number;
  /** Share of one core the relay process used. */
  readonly relayCores: number;
}

export interface RelayOptions {
  readonly connections: number;
  /** Bytes each connection keeps in flight (rounded to whole stanzas). */
  readonly windowBytes: number;
  readonly ackEvery: number;
}

const DEFAULTS: RelayOptions = { connections: 4, windowBytes: 256 * 1024, ackEvery: 64 };

async function measure(
  ctx: BenchContext,
  client: Peer,
  upstream: Peer,
  c: Contestant,
  stanzaBytes: number,
  opts: RelayOptions,
): Promise<Sample> {
  const warmupMs = ctx.quick ? 300 : 700;
  const windowMs = ctx.quick ? 1200 : 3000;
  const windowStanzas = Math.max(8, Math.min(1024, Math.floor(opts.windowBytes / stanzaBytes)));
  await client.call('relayStart', {
    host: '127.0.0.1',
    port: c.port,
    tls: true,
    domain: DOMAIN,
    connections: opts.connections,
    stanzaBytes,
    windowStanzas,
    sm: c.sm,
    ackEvery: opts.ackEvery,
  });
  await sleep(warmupMs);
  const [r0, k0, u0] = await Promise.all([c.peer.cpu(), client.cpu(), upstream.cpu()]);
  const m0 = await client.call<{ t: number; messages: number; bytes: number }>('relayMark');
  await sleep(windowMs);
  const m1 = await client.call<{ t: number; messages: number; bytes: number }>('relayMark');
  const [r1, k1, u1] = await Promise.all([c.peer.cpu(), client.cpu(), upstream.cpu()]);
  await client.call('relayStop');
  const seconds = (m1.t - m0.t) / 1000;
  const messages = m1.messages - m0.messages;
  const gb = (messages * stanzaBytes) / 1e9;
  return {
    messagesPerSecond: messages / seconds,
    mbPerSecond: (messages * stanzaBytes) / 1e6 / seconds,
    cpuPerGb: (r1 - r0) / gb,
    clientCpuPerGb: (k1 - k0) / gb,
    upstreamCpuPerGb: (u1 - u0) / gb,
    relayCores: (r1 - r0) / seconds,
  };
}

const execFileAsync = promisify(execFile);

/**
 * --profile: `perf record` of a proxy (started with --perf-basic-prof so JIT frames have names)
 * during a 600-byte SM run; undefined when perf is not installed or not permitted.
 */
async function perfProfile(ctx: BenchContext, client: Peer, upstreamPort: number, opts: RelayOptions): Promise<string | undefined> {
  try {
    await execFileAsync('perf', ['--version']);
  } catch {
    return undefined;
  }
  ctx.progress('relay: perf record of the proxy (600 B, SM on)');
  const proxy = await startProxy(ctx, proxyConfig(upstreamPort, RELAY_QUEUES), ['--perf-basic-prof']);
  const data = join(ctx.dir, 'relay-proxy-sm.perf.data');
  try {
    await client.call('relayStart', {
      host: '127.0.0.1',
      port: proxy.port,
      tls: true,
      domain: DOMAIN,
      connections: opts.connections,
      stanzaBytes: 600,
      windowStanzas: Math.floor(opts.windowBytes / 600),
      sm: true,
      ackEvery: opts.ackEvery,
    });
    await sleep(1000);
    await execFileAsync('perf', ['record', '-F', '999', '-p', String(proxy.peer.pid), '-o', data, '--', 'sleep', '3']);
    await client.call('relayStop');
    const { stdout } = await execFileAsync(
      'perf',
      ['report', '-i', data, '--no-children', '--sort', 'dso,symbol', '--stdio', '--percent-limit', '1'],
      { maxBuffer: 64 << 20 },
    );
    return stdout
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.startsWith('#'))
      .slice(0, 15)
      .map(
        (line) =>
          `    ${line
            .replace(/\s+/g, ' ')
            .replace(/( -)+\s*$/, '')
            .trim()
            .replace(/ file:\/\/\S*\/dist\//, ' dist/')}`,
      )
      .join('\n');
  } catch (err) {
    return `    (perf failed: ${err instanceof Error ? err.message.split('\n')[0] : String(err)})`;
  } finally {
    await proxy.peer.stop();
    rmSync(`/tmp/perf-${proxy.peer.pid}.map`, { force: true });
  }
}

export async function runRelayBench(ctx: BenchContext, options: Partial<RelayOptions> = {}): Promise<string> {
  const opts = { ...DEFAULTS, ...options };
  const reps = ctx.quick ? 1 : 3;
  const upstream = await Peer.start('fake-upstream', './fake-upstream.js');
  const peers: Peer[] = [upstream];
  try {
    const upstreamPort = await upstream.call<number>('start', { domain: DOMAIN });
    const pipe = await Peer.start('pipe-relay', './pipe-relay.js');
    peers.push(pipe);
    const pipePort = await pipe.call<number>('start', { upstreamPort, domain: DOMAIN });
    const proxy = await startProxy(ctx, proxyConfig(upstreamPort, RELAY_QUEUES));
    peers.push(proxy.peer);
    // The same proxy whose sessions count nothing for the metrics: what the metrics cost on the hot path.
    const unmetered = await startProxy(ctx, proxyConfig(upstreamPort, RELAY_QUEUES), [], false);
    peers.push(unmetered.peer);
    const client = await Peer.start('load-client', './load-client.js');
    peers.push(client);

    const contestants: Contestant[] = [
      { name: 'pipe() relay', peer: pipe, port: pipePort, sm: false },
      { name: 'proxy, SM off', peer: proxy.peer, port: proxy.port, sm: false },
      { name: 'proxy, SM on', peer: proxy.peer, port: proxy.port, sm: true },
      { name: 'proxy, SM on, no metrics', peer: unmetered.peer, port: unmetered.port, sm: true },
    ];
    const sections: string[] = [];
    let ratio600 = Number.NaN;
    let ratio600NoSm = Number.NaN;
    for (const stanzaBytes of [600, 64]) {
      const samples = new Map<string, Sample[]>(contestants.map((c) => [c.name, []]));
      const ratios = new Map<string, number[]>(contestants.map((c) => [c.name, []]));
      for (let rep = 0; rep < reps; rep++) {
        const order = contestants.map((_, i) => contestants[(i + rep) % contestants.length]!);
        const got = new Map<string, Sample>();
        for (const c of order) {
          ctx.progress(`relay: ${stanzaBytes} B, ${c.name}, repetition ${rep + 1}/${reps}`);
          const sample = await measure(ctx, client, upstream, c, stanzaBytes, opts);
          got.set(c.name, sample);
          samples.get(c.name)!.push(sample);
        }
        const pipeRate = got.get('pipe() relay')!.messagesPerSecond;
        for (const c of contestants) ratios.get(c.name)!.push(got.get(c.name)!.messagesPerSecond / pipeRate);
      }
      const rows = contestants.map((c) => {
        const s = samples.get(c.name)!;
        const m = (f: (x: Sample) => number): number => median(s.map(f));
        return [
          c.name,
          fmtInt(m((x) => x.messagesPerSecond)),
          fmt(
            m((x) => x.mbPerSecond),
            1,
          ),
          `${fmt(100 * median(ratios.get(c.name)!), 0)} %`,
          fmt(
            m((x) => x.cpuPerGb),
            2,
          ),
          fmt(
            m((x) => x.relayCores),
            2,
          ),
          fmt(
            m((x) => x.clientCpuPerGb),
            2,
          ),
          fmt(
            m((x) => x.upstreamCpuPerGb),
            2,
          ),
        ];
      });
      if (stanzaBytes === 600) {
        ratio600 = median(ratios.get('proxy, SM on')!);
        ratio600NoSm = median(ratios.get('proxy, SM off')!);
      }
      sections.push(
        `**${stanzaBytes}-byte stanzas**\n\n` +
          table(
            [
              'relay',
              'messages/s',
              'MB/s',
              'vs pipe (same rep.)',
              'relay CPU-s/GB',
              'relay cores busy',
              'client CPU-s/GB',
              'upstream CPU-s/GB',
            ],
            rows,
          ),
      );
    }

    let profileText = '';
    if (ctx.profile) {
      ctx.progress('relay: profiling the proxy (600 B, SM on)');
      const path = join(ctx.dir, 'relay-proxy-sm.cpuprofile');
      await proxy.peer.call('profileStart');
      await measure(ctx, client, upstream, contestants[2]!, 600, opts);
      await proxy.peer.call('profileStop', { path });
      profileText =
        `\nProxy CPU profile, 600 B with SM (V8 sampling, self time, share of the non-idle main-thread samples; "writev" is TLS encryption and socket writes; ${path}):\n\n` +
        `${topSelfTime(path, 15)
          .map((l) => `    ${l}`)
          .join('\n')}\n`;
      const perf = await perfProfile(ctx, client, upstreamPort, opts);
      if (perf !== undefined)
        profileText += `\nThe same under \`perf record\` (all threads and the kernel, self time by symbol; the proxy started with --perf-basic-prof):\n\n${perf}\n`;
    }
    const problems = proxyLogProblems(proxy.logFile);
    return [
      `${opts.connections} TLS connections (direct TLS, TLS 1.3, RSA-2048 self-signed certificate in both relays), each keeping ` +
        `${fmtInt(opts.windowBytes / 1024)} KiB of stanzas in flight (at most 1024 stanzas); with SM the client acks every ${opts.ackEvery} echoes and answers every \`<r/>\`` +
        ` (proxy \`maxUnackedStanzas\` 0: an \`<r/>\` per write burst). GB = stanza bytes echoed back to the client (each also crossed the relay client → upstream). ` +
        `Medians of ${reps} repetition(s); "vs pipe" is the median of per-repetition ratios.`,
      '',
      ...sections.flatMap((s) => [s, '']),
      verdict(
        ratio600 >= 0.6,
        `proxy with SM at 600-byte stanzas runs at ${fmt(100 * ratio600, 0)} % of the pipe relay's messages/s (target ≥ 60 %)`,
      ),
      verdict(
        ratio600NoSm >= 0.6,
        `proxy without SM at 600-byte stanzas runs at ${fmt(100 * ratio600NoSm, 0)} % of the pipe relay's messages/s (target ≥ 60 %)`,
      ),
      problems.warn + problems.error > 0
        ? `- proxy log: ${problems.warn} warnings, ${problems.error} errors (${problems.samples.join('; ')})`
        : '- proxy log: no warnings or errors',
      profileText,
    ].join('\n');
  } finally {
    for (const peer of peers.reverse()) await peer.stop().catch(() => undefined);
  }
}
