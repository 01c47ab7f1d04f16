import { Duplex } from 'node:stream';
import { BerthError } from '../util/errors.js';

/**
 * One multiplexed stream (docs/control.md, "Streams"): a Node Duplex with half-close, so it can be
 * piped to and from a socket. The Mux owns the wire; this class owns the per-stream accounting:
 *
 * - sending: bytes written are queued here; the Mux takes chunks while `sendCredit` allows. A write
 *   is acknowledged (its callback runs) only while less than OUT_HIGH_WATER is queued, so a fast
 *   producer is slowed by the peer's credit instead of filling memory.
 * - receiving: credit is returned to the peer (WINDOW) as the consumer takes bytes out of the
 *   readable buffer; a consumer that stops reading stops the peer after one window.
 */
export const OUT_HIGH_WATER = 128 * 1024;

export interface StreamOwner {
  /** The stream has data or a FIN to send: schedule it. */
  wake(stream: MuxStream): void;
  sendWindow(stream: MuxStream, increment: number): void;
  /** The stream is being destroyed locally: send RESET unless it closed cleanly; free the id. */
  release(stream: MuxStream, reset: { code: string; message: string } | undefined): void;
}

export class MuxStream extends Duplex {
  /** Peer's remaining receive window for our DATA. */
  sendCredit: number;
  /** Bytes queued to send, not yet handed to the link. */
  private out: Buffer[] = [];
  outBytes = 0;
  private pendingWriteCb: ((err?: Error | null) => void) | undefined;
  private finalCb: ((err?: Error | null) => void) | undefined;
  finQueued = false;
  finSent = false;
  finReceived = false;
  private received = 0;
  private credited = 0;
  private resetByPeer = false;
  private failReason: Error | undefined;

  constructor(
    private readonly owner: StreamOwner,
    readonly id: number,
    readonly service: string,
    readonly meta: Record<string, unknown>,
    /** Our receive window: the peer may have this many unacknowledged bytes in flight. */
    readonly recvWindow: number,
    peerWindow: number,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: recvWindow, writableHighWaterMark: 64 * 1024 });
    this.sendCredit = peerWindow;
  }

  /** True if the Mux can take DATA from this stream now. */
  get sendable(): boolean {
    return this.outBytes > 0 && this.sendCredit > 0;
  }

  /** Removes up to `max` bytes (bounded by credit) from the send queue. */
  takeChunk(max: number): Buffer {
    const want = Math.min(max, this.sendCredit, this.outBytes);
    const parts: Buffer[] = [];
    let n = 0;
    while (n < want) {
      const head = this.out[0]!;
      const take = Math.min(head.length, want - n);
      if (take === head.length) {
        parts.push(head);
        this.out.shift();
      } else {
        parts.push(head.subarray(0, take));
        this.out[0] = head.subarray(take);
      }
      n += take;
    }
    this.outBytes -= n;
    this.sendCredit -= n;
    if (this.pendingWriteCb && this.outBytes < OUT_HIGH_WATER) {
      const cb = this.pendingWriteCb;
      this.pendingWriteCb = undefined;
      cb();
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** After the last DATA went out: the FIN can follow. */
  get finDue(): boolean {
    return this.finQueued && !this.finSent && this.outBytes === 0;
  }

  markFinSent(): void {
    this.finSent = true;
    const cb = this.finalCb;
    this.finalCb = undefined;
    cb?.();
  }

  // ---- events from the peer (called by the Mux) ----

  onData(payload: Buffer): boolean {
    if (this.received - this.credited + payload.length > this.recvWindow) return false;
    this.received += payload.length;
    // Copy: the payload may share memory with a larger read buffer we should not pin.
    this.push(Buffer.from(payload));
    this.maybeCredit();
    return true;
  }

  onWindow(increment: number): void {
    this.sendCredit += increment;
    if (this.outBytes > 0 || this.finDue) this.owner.wake(this);
  }

  onFin(): void {
    if (this.finReceived) return;
    this.finReceived = true;
    // Once both directions have ended, autoDestroy closes the stream and release() frees its id.
    this.push(null);
  }

  onReset(code: string, message: string): void {
    this.resetByPeer = true;
    this.fail(new BerthError('MUX_RESET', `The peer reset the ${this.service} stream: ${message} (${code}).`, { details: { code } }));
  }

  /** The session ended under this stream. */
  onSessionClosed(reason: string): void {
    this.resetByPeer = true; // nothing to send: the session is gone
    this.fail(new BerthError('MUX_CLOSED', `The control channel closed: ${reason}.`));
  }

  /**
   * Destroys the stream because of something outside the user's hands (the peer, the session).
   * The error is delivered only if somebody listens for it: an unhandled 'error' would crash the
   * process, and the peer (the untrusted guest, for the host) must never be able to do that.
   */
  fail(err: Error): void {
    this.failReason = err;
    this.destroy(this.listenerCount('error') > 0 ? err : undefined);
  }

  // ---- Duplex implementation ----

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (chunk.length === 0) return cb();
    this.out.push(chunk);
    this.outBytes += chunk.length;
    this.owner.wake(this);
    if (this.outBytes < OUT_HIGH_WATER) cb();
    else this.pendingWriteCb = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finQueued = true;
    this.finalCb = cb;
    this.owner.wake(this);
  }

  override _read(): void {
    this.maybeCredit();
  }

  /**
   * Every way of consuming a Readable (flowing mode, pipe, read(), async iteration) goes through
   * read(). Credit is computed after it has taken bytes out of the buffer; `_read` alone is not
   * enough, because Node calls it before removing the bytes it is about to return.
   */
  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    if (chunk !== null) this.maybeCredit();
    return chunk;
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const clean = this.finSent && this.finReceived;
    let reset: { code: string; message: string } | undefined;
    const why = err ?? this.failReason;
    if (!clean && !this.resetByPeer) reset = { code: why ? 'ERROR' : 'CANCEL', message: why?.message ?? 'stream destroyed' };
    this.out = [];
    this.outBytes = 0;
    const pending = this.pendingWriteCb;
    this.pendingWriteCb = undefined;
    this.owner.release(this, reset);
    // The stream is already destroyed, so this completes the write without another 'error'.
    pending?.();
    cb(err);
  }

  /** Returns credit for what the consumer has taken out of the readable buffer. */
  private maybeCredit(): void {
    const consumed = this.received - this.readableLength;
    const increment = consumed - this.credited;
    if (increment > 0 && (increment >= this.recvWindow / 2 || (this.readableLength === 0 && increment >= 16 * 1024))) {
      this.credited += increment;
      this.owner.sendWindow(this, increment);
    }
  }
}
