import crypto from 'node:crypto';
import net from 'node:net';
import { BerthError } from '../util/errors.js';

/**
 * One daemon per berth home.
 *
 * On Linux the lock is a listening socket in the abstract namespace, named after the home path:
 * binding is atomic, and the kernel releases the name the moment the process dies, so a `kill -9`
 * leaves no stale lock to clean up (a pid-file lock cannot guarantee that without races).
 * Elsewhere there is no abstract namespace; the daemon socket itself serves as the lock there.
 */
export interface DaemonLock {
  release(): Promise<void>;
}

export function lockName(home: string): string {
  return `\0berth-daemon-${crypto.createHash('sha256').update(home).digest('hex').slice(0, 32)}`;
}

export async function acquireDaemonLock(home: string): Promise<DaemonLock> {
  if (process.platform !== 'linux') return { release: async () => {} };
  const server = net.createServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') {
        reject(
          new BerthError('DAEMON_LOCKED', `Another berth daemon already runs for ${home}.`, {
            hint: 'Use that one (`berth status`), or stop it with `berth stop`.',
          }),
        );
      } else reject(err);
    });
    server.listen({ path: lockName(home) }, () => resolve());
  });
  server.unref();
  return { release: () => new Promise((r) => server.close(() => r())) };
}

/** True if some process holds the daemon lock for `home` (Linux only; false elsewhere). */
export function isDaemonLocked(home: string): Promise<boolean> {
  if (process.platform !== 'linux') return Promise.resolve(false);
  return new Promise((resolve) => {
    const s = net.connect({ path: lockName(home) });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
