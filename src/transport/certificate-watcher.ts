import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';

/** How long the files must be quiet before a reload: a renewal replaces the certificate and the key one after the other. */
const CERTIFICATE_SETTLE_MS = 1000;

/**
 * Watches the configured certificate and key files, so that a renewal needs no signal (README,
 * Reloading). It watches their directories, not the files: certbot swaps the symlinks in its
 * `live/` directory, acme.sh and most tools rename a new file over the old one or write it in
 * place, and a watch on a file would follow the old inode. Any change to one of the files' names
 * in those directories, once they have been quiet for {@link CERTIFICATE_SETTLE_MS}, calls
 * `onChange` once.
 */
export class CertificateWatcher {
  readonly #watchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(files: readonly string[], onChange: () => void, log: Pick<Logger, 'warn'>, settleMs = CERTIFICATE_SETTLE_MS) {
    const namesByDir = new Map<string, Set<string>>();
    for (const file of files) {
      const names = namesByDir.get(dirname(file)) ?? new Set<string>();
      names.add(basename(file));
      namesByDir.set(dirname(file), names);
    }
    const changed = (): void => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        onChange();
      }, settleMs);
      this.#timer.unref();
    };
    for (const [dir, names] of namesByDir) {
      try {
        const watcher = watch(dir, { persistent: false }, (_event, name) => {
          // Linux names the entry; where a platform does not, any change in the directory counts.
          if (name === null || names.has(name.toString())) changed();
        });
        watcher.on('error', (err) => log.warn({ dir, err: err.message }, 'certificate directory watch failed; renewals need SIGHUP'));
        this.#watchers.push(watcher);
      } catch (err) {
        log.warn({ dir, err: (err as Error).message }, 'cannot watch certificate directory; renewals need SIGHUP');
      }
    }
  }

  close(): void {
    clearTimeout(this.#timer);
    for (const watcher of this.#watchers) watcher.close();
  }
}
