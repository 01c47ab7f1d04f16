import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';

/**
 * The host end of the namespace guest's control channel (docs/namespace.md): the daemon listens
 * on a Unix socket in the folder bound into the namespace, and the agent dials it. Successive
 * agent connections (an agent restart, a daemon that adopted the guest) are joined into one mux
 * link, as QEMU's chardev joins the virtio port's readers: bytes from the current connection only,
 * output dropped while no agent is connected (the mux resynchronises with HELLO), a newer
 * connection replaces the older. `close` is emitted only by `close()`: the guest's death is the
 * driver's to report.
 *
 * The socket is created with mode 0600 in a folder of the berth home: only root (the agent runs
 * as root in the namespace) may connect.
 */
export class ControlServer extends EventEmitter {
  private readonly server: net.Server;
  private current: net.Socket | undefined;
  private closed = false;
  private needDrain = false;

  private constructor(server: net.Server) {
    super();
    this.server = server;
    server.on('connection', (s) => this.attach(s));
  }

  /** Listens on `socketPath` (a stale socket there is removed first). */
  static async listen(socketPath: string): Promise<ControlServer> {
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer();
    const umask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(umask);
    }
    return new ControlServer(server);
  }

  write(chunk: Buffer): boolean {
    const s = this.current;
    if (this.closed || !s || s.destroyed) return true;
    if (s.write(chunk)) return true;
    this.needDrain = true;
    return false;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.current?.destroy();
    this.server.close();
    this.emit('close');
  }

  private attach(s: net.Socket): void {
    if (this.closed) {
      s.destroy();
      return;
    }
    const previous = this.current;
    this.current = s;
    previous?.destroy();
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => {
      if (this.current === s) this.emit('data', d);
    });
    s.on('drain', () => this.drained(s));
    s.on('error', () => {});
    s.on('close', () => {
      if (this.current !== s) return;
      this.current = undefined;
      this.drained(s);
    });
  }

  private drained(s: net.Socket): void {
    if (this.current !== s && this.current !== undefined) return;
    if (this.needDrain) {
      this.needDrain = false;
      this.emit('drain');
    }
  }
}
