import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../util/log.js';

/**
 * The guest end of the control channel: a virtio-serial port (`/dev/vportNpM`).
 *
 * Reading: the virtio console driver returns at most one 4 KiB buffer per read(), and Node reads a
 * character device through its threadpool (~0.9 ms per hop under TCG): 4.5 MB/s measured. A `cat`
 * child reading the same file descriptor into a pipe reaches 43 MB/s, because Node reads pipes in
 * 64 KiB batches from its event loop. The port can only be opened once (a second open is EBUSY),
 * so the child inherits our descriptor rather than opening the device itself.
 *
 * Disconnects: when no host process is attached to the port, read() returns 0, so `cat` exits.
 * That exit is our "host went away" signal; a new reader is started after a short pause, and polls
 * at most a few times per second while nobody is attached.
 *
 * Writing: fs.write on the descriptor, one write in flight, queued chunks coalesced (each write is
 * a syscall and a threadpool hop). `write()` returns false above a high-water mark and 'drain' is
 * emitted once the queue is empty again, as net.Socket does.
 */
const HIGH_WATER = 256 * 1024;
const MAX_WRITE = 1024 * 1024;

export class PortLink extends EventEmitter {
  private readonly fd: number;
  private reader: ChildProcess | undefined;
  private queue: Buffer[] = [];
  private queued = 0;
  private writing = false;
  private closed = false;
  private needDrain = false;
  private idleRestarts = 0;

  constructor(
    readonly device: string,
    private readonly log: Logger,
    private readonly catBinary = '/bin/busybox',
  ) {
    super();
    this.fd = fs.openSync(device, 'r+');
    this.startReader();
  }

  write(chunk: Buffer): boolean {
    if (this.closed) return false;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (!this.writing) this.flush();
    if (this.queued >= HIGH_WATER) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reader?.kill('SIGKILL');
    fs.close(this.fd, () => {});
    this.emit('close');
  }

  private startReader(): void {
    if (this.closed) return;
    const started = Date.now();
    let gotData = false;
    const child = spawn(this.catBinary, ['cat'], { stdio: [this.fd, 'pipe', 'ignore'] });
    this.reader = child;
    child.stdout!.on('data', (d: Buffer) => {
      gotData = true;
      this.emit('data', d);
    });
    child.on('error', (err) => this.log.error('port reader failed to start', { err: err.message }));
    child.on('close', () => {
      if (this.closed) return;
      // A reader that got data, or lived a while, means a host was attached and has now left.
      if (gotData || Date.now() - started > 1000) {
        this.idleRestarts = 0;
        this.emit('host-disconnected');
      } else {
        this.idleRestarts++;
      }
      const delay = Math.min(1000, 50 * 2 ** Math.min(this.idleRestarts, 5));
      setTimeout(() => this.startReader(), delay);
    });
  }

  private flush(): void {
    if (this.queue.length === 0) {
      this.writing = false;
      if (this.needDrain) {
        this.needDrain = false;
        this.emit('drain');
      }
      return;
    }
    this.writing = true;
    let buf: Buffer;
    if (this.queue.length === 1 || this.queue[0]!.length >= MAX_WRITE) {
      buf = this.queue.shift()!;
    } else {
      const parts: Buffer[] = [];
      let n = 0;
      while (this.queue.length > 0 && n + this.queue[0]!.length <= MAX_WRITE) {
        const b = this.queue.shift()!;
        parts.push(b);
        n += b.length;
      }
      buf = Buffer.concat(parts, n);
    }
    this.writeAll(buf, 0);
  }

  private writeAll(buf: Buffer, off: number): void {
    fs.write(this.fd, buf, off, buf.length - off, null, (err, written) => {
      if (err) {
        if (this.closed) return;
        // With no host attached QEMU discards output; an error here is unexpected: drop the chunk
        // (the mux resynchronises sessions) rather than spin.
        this.log.warn('control port write failed', { err: err.message });
        this.queued -= buf.length - off;
        this.flush();
        return;
      }
      this.queued -= written;
      if (off + written < buf.length) this.writeAll(buf, off + written);
      else this.flush();
    });
  }
}

/** Finds the /dev node of the virtio-serial port with the given name (no udev in the guest). */
export function findPort(name: string, sysDir = '/sys/class/virtio-ports'): string | undefined {
  let entries: string[];
  try {
    entries = fs.readdirSync(sysDir);
  } catch {
    return undefined;
  }
  for (const e of entries) {
    try {
      if (fs.readFileSync(path.join(sysDir, e, 'name'), 'utf8').trim() === name) return `/dev/${e}`;
    } catch {
      // port without a name
    }
  }
  return undefined;
}
