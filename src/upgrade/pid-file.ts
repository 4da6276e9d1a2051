import { readFile, rename, unlink, writeFile } from 'node:fs/promises';

/**
 * Writes this process's PID to `path` through a temporary file renamed over it, so that a reader
 * (systemd's `PIDFile=`, README "Upgrading") sees the old PID or the new one, never half a file.
 */
export async function writePidFile(path: string, pid: number = process.pid): Promise<void> {
  const temporary = `${path}.${pid}.tmp`;
  await writeFile(temporary, `${pid}\n`, { mode: 0o644 });
  await rename(temporary, path);
}

/** Removes the PID file at exit if it still names `pid`: after an upgrade it names the new process, and stays. */
export async function removePidFile(path: string, pid: number = process.pid): Promise<void> {
  let content;
  try {
    content = await readFile(path, 'utf8');
  } catch {
    return;
  }
  if (content.trim() === String(pid)) await unlink(path).catch(() => undefined);
}
