/**
 * QEMU's `-netdev stream` framing (QEMU net/stream.c, net_fill_rstate): every frame is a 4-byte
 * big-endian length followed by the Ethernet frame, no vnet header. This is the only code that
 * reads that framing from the socket.
 *
 * Bounds: a length of 0 or above MAX_FRAME is a framing error; the caller then drops the
 * connection (as QEMU and passt do) and reconnects. QEMU itself drops a connection that sends it a
 * frame above NET_BUFSIZE (69632), which MAX_FRAME stays well under.
 */

export const LENGTH_PREFIX = 4;
/** MTU 65520 + Ethernet header, with room for a VLAN tag: larger frames are refused. */
export const MAX_FRAME = 65535 + 18;

export type LinkRead = { kind: 'frame'; frame: Buffer } | { kind: 'error'; reason: string };

/**
 * Streaming decoder. Frames that arrive whole inside one chunk are returned as views (no copy);
 * a frame split across chunks is assembled once.
 */
export class FrameStreamDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  push(chunk: Buffer, out: (r: LinkRead) => void): void {
    if (this.failed) return;
    if (this.buffered === 0) {
      // Fast path: walk the chunk itself.
      let off = 0;
      while (chunk.length - off >= LENGTH_PREFIX) {
        const len = chunk.readUInt32BE(off);
        if (len === 0 || len > MAX_FRAME) return this.fail(out, len);
        if (chunk.length - off - LENGTH_PREFIX < len) break;
        out({ kind: 'frame', frame: chunk.subarray(off + LENGTH_PREFIX, off + LENGTH_PREFIX + len) });
        off += LENGTH_PREFIX + len;
      }
      if (off < chunk.length) {
        this.chunks.push(chunk.subarray(off));
        this.buffered = chunk.length - off;
      }
      return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.buffered < LENGTH_PREFIX) return;
      const len = this.peekLength();
      if (len === 0 || len > MAX_FRAME) return this.fail(out, len);
      if (this.buffered < LENGTH_PREFIX + len) return;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
      out({ kind: 'frame', frame: all.subarray(LENGTH_PREFIX, LENGTH_PREFIX + len) });
      const rest = all.subarray(LENGTH_PREFIX + len);
      this.chunks = [];
      this.buffered = 0;
      if (rest.length > 0) return this.push(rest, out);
      return;
    }
  }

  /** Forgets everything (a new connection). */
  reset(): void {
    this.chunks = [];
    this.buffered = 0;
    this.failed = false;
  }

  private peekLength(): number {
    // Merge once when the prefix itself is split, so later pushes read it from the first chunk
    // instead of re-copying everything buffered on every push (quadratic for small chunks).
    if (this.chunks[0]!.length < LENGTH_PREFIX) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0]!.readUInt32BE(0);
  }

  private fail(out: (r: LinkRead) => void, len: number): void {
    this.failed = true;
    this.chunks = [];
    this.buffered = 0;
    out({ kind: 'error', reason: `frame length ${len} outside 1..${MAX_FRAME}` });
  }
}

/** Writes the length prefix into the FRAME_PREFIX bytes reserved at the start of `buf`. */
export function sealFrame(buf: Buffer): Buffer {
  buf.writeUInt32BE(buf.length - LENGTH_PREFIX, 0);
  return buf;
}
