import type net from 'node:net';
import type { MuxLink } from './mux.js';

/** Host side: a connected net.Socket (QEMU's control chardev) as a mux link. */
export function socketLink(socket: net.Socket): MuxLink {
  socket.setNoDelay(true);
  return {
    write: (chunk) => socket.write(chunk),
    on: (event: 'data' | 'drain' | 'close', cb: (...args: never[]) => void) => socket.on(event, cb as (...args: unknown[]) => void),
    close: () => socket.destroy(),
  } as MuxLink;
}
