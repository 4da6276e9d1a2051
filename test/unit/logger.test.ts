import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';

function written(format: 'json' | 'pretty'): string {
  const destination = new PassThrough();
  let text = '';
  destination.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  createLogger({ level: 'info', format }, destination).info({ code: 'PROXY_ERR_X' }, 'hello');
  return text;
}

describe('createLogger (README, Operating it)', () => {
  it('writes JSON lines with the name, or, for a person, a readable line (pino-pretty, loaded only then)', () => {
    expect(JSON.parse(written('json'))).toMatchObject({ level: 30, name: 'smacks-proxy', code: 'PROXY_ERR_X', msg: 'hello' });
    const pretty = written('pretty');
    expect(pretty).toMatch(/INFO.*hello/);
    expect(pretty).toContain('PROXY_ERR_X');
    expect(() => JSON.parse(pretty)).toThrow();
  });
});
