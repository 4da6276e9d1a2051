import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogConfig } from './config/config.js';

/**
 * The proxy's root logger (README, Operating it): JSON lines, or human-readable output on a terminal.
 * Only the composition root calls this; everything else receives a child logger.
 */
export function createLogger(config: LogConfig, destination: NodeJS.WritableStream = process.stdout): Logger {
  const usePretty = config.format === 'pretty' || (config.format === 'auto' && (destination as { isTTY?: boolean }).isTTY === true);
  const options = { level: config.level, base: { name: 'smacks-proxy' } };
  if (!usePretty) return pino(options, destination);
  return pino(options, pretty({ colorize: true, destination, sync: true, ignore: 'pid,hostname,name' }));
}
