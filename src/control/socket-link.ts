import net from 'node:net';
import type { MuxLink } from './mux.js';

/** Host side: a connected net.Socket (QEMU's control chardev) as a mux link. */
export function socketLink(socket: net.Socket): MuxLink {
  socket.setNoDelay(true);
  // A write to a peer that is gone (EPIPE, ECONNRESET) is followed by 'close', which is what the
  // mux acts on; the error itself must not go unhandled.
  socket.on('error', () => {});
  return {
    write: (chunk) => socket.write(chunk),
    on: (event: 'data' | 'drain' | 'close', cb: (...args: never[]) => void) => socket.on(event, cb as (...args: unknown[]) => void),
    close: () => socket.destroy(),
  } as MuxLink;
}

/**
 * Connects to a Unix socket that its owner (QEMU, say) may still be creating: retries every
 * `intervalMs` for `attempts` tries, then rejects with the last error.
 */
export function dialUnixSocket(socketPath: string, attempts = 200, intervalMs = 50): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const attempt = (n: number) => {
      const s = net.connect(socketPath);
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err) => {
        if (n + 1 >= attempts) reject(err);
        else setTimeout(() => attempt(n + 1), intervalMs);
      });
    };
    attempt(0);
  });
}
