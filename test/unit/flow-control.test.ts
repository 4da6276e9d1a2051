import { describe, expect, it } from 'vitest';
import { FlowControl, type Pausable } from '../../src/session/flow-control.js';

/** Records pause/resume calls and the resulting state. */
class Side implements Pausable {
  paused = false;
  readonly calls: string[] = [];
  pause(): void {
    this.paused = true;
    this.calls.push('pause');
  }
  resume(): void {
    this.paused = false;
    this.calls.push('resume');
  }
}

function rig(): { flow: FlowControl; client: Side; upstream: Side } {
  const client = new Side();
  const upstream = new Side();
  return {
    flow: new FlowControl(
      () => client,
      () => upstream,
    ),
    client,
    upstream,
  };
}

describe('FlowControl', () => {
  it('a full client socket pauses both the client and the upstream until it drains', () => {
    const { flow, client, upstream } = rig();
    flow.wroteToClient(false);
    expect([client.paused, upstream.paused]).toEqual([true, true]);
    flow.wroteToClient(false);
    expect(upstream.calls).toEqual(['pause']);
    flow.clientDrained();
    expect([client.paused, upstream.paused]).toEqual([false, false]);
  });

  it('a full upstream pauses only the client; reading resumes when no reason is left', () => {
    const { flow, client, upstream } = rig();
    flow.wroteToUpstream(false);
    flow.waitForServer();
    expect([client.paused, upstream.paused]).toEqual([true, false]);
    flow.upstreamDrained();
    expect(client.paused).toBe(true);
    flow.serverAnswered();
    expect(client.paused).toBe(false);
    expect(client.calls).toEqual(['pause', 'resume']);
  });

  it('accepted writes and a drain without a hold change nothing', () => {
    const { flow, client, upstream } = rig();
    flow.wroteToClient(true);
    flow.wroteToUpstream(true);
    flow.clientDrained();
    flow.upstreamDrained();
    expect([...client.calls, ...upstream.calls]).toEqual([]);
  });

  it('a client that is gone takes its holds along, and the upstream reads again', () => {
    const { flow, client, upstream } = rig();
    flow.wroteToClient(false);
    flow.clientGone();
    expect(upstream.paused).toBe(false);
    expect(client.calls).toEqual(['pause']);
    flow.wroteToUpstream(false);
    expect(client.calls).toEqual(['pause', 'pause']);
  });

  it('a client handed over to another session reads again', () => {
    const { flow, client } = rig();
    flow.waitForServer();
    flow.clientHandedOver();
    expect(client.paused).toBe(false);
    flow.clientHandedOver();
    expect(client.calls).toEqual(['pause', 'resume']);
  });
});
