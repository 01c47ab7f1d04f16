import { EventEmitter } from 'node:events';
import type { MuxLink } from './mux.js';

/**
 * An in-memory byte pipe for mux tests: delivery is asynchronous, chunks can be split at random
 * points (as a socket or pipe may), and each end reports back-pressure above `capacity` queued
 * bytes, emitting 'drain' once the peer has taken them. Used only by tests.
 */
export class TestLinkEnd extends EventEmitter implements MuxLink {
  peer!: TestLinkEnd;
  private queued = 0;
  private needDrain = false;
  closed = false;
  written = 0;
  /** When set, bytes written are dropped instead of delivered (peer absent). */
  detached = false;

  constructor(
    private readonly capacity: number,
    private readonly split: boolean,
    private readonly rand: () => number,
  ) {
    super();
  }

  write(chunk: Buffer): boolean {
    if (this.closed) return false;
    this.written += chunk.length;
    if (this.detached) return true;
    const pieces: Buffer[] = [];
    if (this.split && chunk.length > 1) {
      let off = 0;
      while (off < chunk.length) {
        const n = 1 + Math.floor(this.rand() * Math.min(chunk.length - off, 70_000));
        pieces.push(chunk.subarray(off, off + n));
        off += n;
      }
    } else pieces.push(chunk);
    this.queued += chunk.length;
    for (const p of pieces) {
      setImmediate(() => {
        if (!this.peer.closed) this.peer.emit('data', Buffer.from(p));
        this.queued -= p.length;
        if (this.needDrain && this.queued < this.capacity) {
          this.needDrain = false;
          this.emit('drain');
        }
      });
    }
    if (this.queued >= this.capacity) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
    if (!this.peer.closed) this.peer.close();
  }

  /** Injects raw bytes as if the peer had sent them. */
  inject(bytes: Buffer): void {
    setImmediate(() => this.emit('data', bytes));
  }
}

export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export function linkPair(opts: { capacity?: number; split?: boolean; seed?: number } = {}): [TestLinkEnd, TestLinkEnd] {
  const rand = seededRandom(opts.seed ?? 1);
  const a = new TestLinkEnd(opts.capacity ?? 1024 * 1024, opts.split ?? false, rand);
  const b = new TestLinkEnd(opts.capacity ?? 1024 * 1024, opts.split ?? false, rand);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
