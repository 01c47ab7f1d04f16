import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { Logger } from '../util/log.js';

/**
 * The guest end of the control channel when the guest runs in namespaces (docs/namespace.md): the
 * host daemon listens on a Unix socket in the folder bound into the namespace, and the agent
 * connects to it. The host listens (not the agent) so that the daemon never connects to a path
 * the guest could have replaced with a symlink.
 *
 * For the mux it behaves as the virtio-serial port does: output written while no host is
 * connected is dropped (the mux resynchronises at the next HELLO); a host that goes away is a
 * `host-disconnected` event, after which the link dials again (every `retryMs`) until a host
 * answers. It closes only when `close()` is called.
 */
const HIGH_WATER = 256 * 1024;

export class SocketClientLink extends EventEmitter {
  private host: net.Socket | undefined;
  /** The connection being dialled or up; closed with the link. */
  private current: net.Socket | undefined;
  private closed = false;
  private needDrain = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly path: string,
    private readonly log: Logger,
    private readonly retryMs = 200,
  ) {
    super();
    this.dial();
  }

  write(chunk: Buffer): boolean {
    const s = this.host;
    if (this.closed || !s || s.destroyed) return true;
    if (s.write(chunk)) return true;
    this.needDrain = true;
    return s.writableLength < HIGH_WATER;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.current?.destroy();
    this.emit('close');
  }

  private dial(): void {
    if (this.closed) return;
    const s = net.connect(this.path);
    this.current = s;
    let connected = false;
    s.on('connect', () => {
      connected = true;
      this.host = s;
      s.setNoDelay(true);
      this.log.info('connected to the host');
    });
    s.on('data', (d: Buffer) => this.emit('data', d));
    s.on('drain', () => {
      if (this.needDrain) {
        this.needDrain = false;
        this.emit('drain');
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      if (this.host === s) this.host = undefined;
      // Writers waiting for drain must not wait for a host that is gone.
      if (this.needDrain) {
        this.needDrain = false;
        this.emit('drain');
      }
      if (this.closed) return;
      if (connected) this.emit('host-disconnected');
      this.timer = setTimeout(() => this.dial(), this.retryMs);
    });
  }
}
