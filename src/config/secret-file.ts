import { readFile } from 'node:fs/promises';
import { ConfigError, type ErrorCode } from '../errors.js';

/**
 * A secret kept in a file of its own (`admin.tokenFile`, `webhook.secretFile`), out of the config
 * that operators share and paste: one word, surrounding whitespace removed.
 * @throws ConfigError with `code`, naming the file and the config key (`pointer`), when the file
 *   cannot be read, is empty, or holds more than one word.
 */
export async function readSecretFile(path: string, pointer: string, code: ErrorCode): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new ConfigError(code, `cannot read ${pointer} ${path}: ${reason}`, [`${pointer}: ${reason}`], { cause: err });
  }
  const secret = text.trim();
  if (secret === '' || /\s/.test(secret)) {
    throw new ConfigError(code, `${pointer} ${path} must hold one word without spaces`, [`${pointer}: must hold one word without spaces`]);
  }
  return secret;
}
