import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type { LogConfig } from './config/config.js';

/** pino-pretty is loaded only for human-readable output (a terminal, or `log.format: "pretty"`). */
function requirePretty(): typeof import('pino-pretty').PinoPretty {
  return createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty').PinoPretty;
}

/**
 * The proxy's root logger (README, Operating it): JSON lines, or human-readable output on a terminal.
 * Only the composition root calls this; everything else receives a child logger.
 */
export function createLogger(config: LogConfig, destination: NodeJS.WritableStream = process.stdout): Logger {
  const usePretty = config.format === 'pretty' || (config.format === 'auto' && (destination as { isTTY?: boolean }).isTTY === true);
  // `pid`: after an upgrade the old and the new process write to the same stdout for a while (README, Upgrading).
  const options = { level: config.level, base: { name: 'smacks-proxy', pid: process.pid } };
  if (!usePretty) return pino(options, destination);
  return pino(options, requirePretty()({ colorize: true, destination, sync: true, ignore: 'pid,hostname,name' }));
}
