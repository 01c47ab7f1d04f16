import fs from 'node:fs/promises';
import net from 'node:net';
import { BerthError, errnoCode } from './errors.js';

/** Unix socket paths are limited to 107 bytes on Linux (sun_path is 108 with the NUL). */
export const MAX_SOCKET_PATH = 107;

/**
 * Safe creation of our listening Unix sockets.
 *
 * A path that already exists is removed only if it is a socket nobody answers on (a leftover of a
 * killed process). A live socket means another program owns the path (SOCKET_IN_USE); a file,
 * directory or symlink there is never deleted (CVE-2020-11492-style squatting, Lima's
 * RemoveStaleSocket rule): we refuse instead.
 */
export async function prepareSocketPath(path: string, what: string): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new BerthError('SOCKET_PATH_TOO_LONG', `The ${what} path ${path} is longer than the ${MAX_SOCKET_PATH}-byte Unix socket limit.`, {
      hint: 'Use a shorter BERTH_HOME (or a shorter dockerSocket setting).',
    });
  }
  let st;
  try {
    st = await fs.lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new BerthError('SOCKET_IN_USE', `Cannot create the ${what} at ${path}: something that is not a socket is already there.`, {
      hint: 'Move that file away, or choose another path (`berth settings set dockerSocket <path>`).',
    });
  }
  if (await socketAnswers(path)) {
    throw new BerthError('SOCKET_IN_USE', `The ${what} path ${path} is already in use by another program (it accepts connections).`, {
      hint: 'Stop the other engine that owns it, or choose another path with `berth settings set dockerSocket <path>`.',
    });
  }
  await fs.rm(path, { force: true });
}

export function socketAnswers(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    const done = (v: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Listens on a Unix socket path (after prepareSocketPath) and restricts it to the owner. */
export async function listenUnix(server: net.Server, path: string, what: string): Promise<void> {
  await prepareSocketPath(path, what);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await fs.chmod(path, 0o600);
}
