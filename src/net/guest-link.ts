import net from 'node:net';
import { FrameStreamDecoder, sealFrame } from './qemu-link.js';

/**
 * The translator's connection to QEMU's `-netdev stream` socket (QEMU listens, `server=on`; it
 * listens again after a disconnect, so a restarted translator simply reconnects).
 *
 * Output: frames are written with the link corked for the rest of the current turn, so the ACKs
 * and segments one batch of input produces leave in one writev. `blocked` mirrors the socket's
 * back-pressure: QEMU stops reading when the guest's receive ring is full, and the stack then stops
 * generating data segments until `onDrain`.
 */
export interface GuestLinkHandlers {
  frame(frame: Buffer): void;
  endBatch(): void;
  drain(): void;
  connected(up: boolean): void;
  error(reason: string): void;
}

const RETRY_MS = 100;

export class GuestLink {
  private sock: net.Socket | undefined;
  private readonly decoder = new FrameStreamDecoder();
  private corked = false;
  private stopped = false;
  private retry: NodeJS.Timeout | undefined;
  private sent = 0;
  private received = 0;

  constructor(
    private readonly path: string,
    private readonly h: GuestLinkHandlers,
  ) {}

  start(): void {
    this.connect();
  }

  get isUp(): boolean {
    return this.sock !== undefined && !this.sock.connecting && !this.sock.destroyed;
  }

  get blocked(): boolean {
    return this.sock?.writableNeedDrain ?? false;
  }

  get counters(): { sent: number; received: number } {
    return { sent: this.sent, received: this.received };
  }

  /** Writes one frame built with FRAME_PREFIX reserved; false if the link is down or congested. */
  send(frame: Buffer): boolean {
    const s = this.sock;
    if (!s || s.connecting || s.destroyed) return false;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(() => {
        this.corked = false;
        s.uncork();
      });
    }
    this.sent++;
    return s.write(sealFrame(frame));
  }

  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.sock?.destroy();
  }

  private connect(): void {
    if (this.stopped) return;
    const s = net.connect(this.path);
    this.sock = s;
    this.decoder.reset();
    let up = false;
    s.on('connect', () => {
      up = true;
      this.h.connected(true);
    });
    s.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk, (r) => {
        if (r.kind === 'frame') {
          this.received++;
          this.h.frame(r.frame);
        } else {
          // Unrecoverable framing: drop the connection and start over, as QEMU and passt do.
          this.h.error(r.reason);
          s.destroy();
        }
      });
      this.h.endBatch();
    });
    s.on('drain', () => this.h.drain());
    s.on('error', () => {});
    s.on('close', () => {
      if (this.sock !== s) return;
      this.sock = undefined;
      if (up) this.h.connected(false);
      if (!this.stopped) this.retry = setTimeout(() => this.connect(), RETRY_MS);
    });
  }
}
