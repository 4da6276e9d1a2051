import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import schema from '../../src/config/proxy.schema.json' with { type: 'json' };
import { ErrorCode } from '../../src/errors.js';
import { SM_FAILURES } from '../../src/sm/failures.js';

// The README lists every config key, every error code and every `<failed/>` key. This keeps
// it true when a key or a code is added.

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

interface SchemaNode {
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  additionalProperties?: SchemaNode | boolean;
  oneOf?: SchemaNode[];
  anyOf?: SchemaNode[];
  allOf?: SchemaNode[];
  then?: SchemaNode;
  $ref?: string;
}

const root = schema as unknown as SchemaNode & { definitions?: Record<string, SchemaNode>; $defs?: Record<string, SchemaNode> };

/**
 * Every leaf key and every list of the config, as written in the README table
 * (`listeners[].port`, `domains.<domain>.upstream.host`).
 */
function keys(node: SchemaNode | undefined, prefix: string, out: Set<string>): Set<string> {
  if (node === undefined) return out;
  if (node.$ref !== undefined) return keys((root.definitions ?? root.$defs)?.[node.$ref.split('/').pop()!], prefix, out);
  for (const branch of [...(node.oneOf ?? []), ...(node.anyOf ?? []), ...(node.allOf ?? []), ...(node.then ? [node.then] : [])])
    keys(branch, prefix, out);
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    if (name === '$schema') continue;
    const path = `${prefix}${name}`;
    const isMap = typeof child.additionalProperties === 'object';
    if (child.items !== undefined || (child.properties === undefined && !isMap && child.$ref === undefined)) out.add(path);
    if (child.items !== undefined) keys(child.items, `${path}[].`, out);
    if (isMap) keys(child.additionalProperties as SchemaNode, `${path}.<domain>.`, out);
    keys({ ...child, items: undefined, additionalProperties: undefined }, `${path}.`, out);
  }
  return out;
}

describe('README', () => {
  it.each([...keys(root, '', new Set())])('documents config key %s', (key) => {
    expect(readme).toContain(`| \`${key}\``);
  });

  it.each(Object.values(ErrorCode))('documents error code %s', (code) => {
    expect(readme).toContain(`| \`${code}\``);
  });

  it.each(Object.keys(SM_FAILURES))('documents the <failed/> key %s', (key) => {
    expect(readme).toContain(`| \`${key}\``);
  });
});
