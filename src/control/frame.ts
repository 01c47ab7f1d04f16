/**
 * The mux wire format (docs/control.md, "Wire format"). This is the only code that reads mux frame
 * headers: bytes in, typed frames or framing errors out. It never throws on input and never buffers
 * more than one maximal frame (64 KiB + header) plus the chunk being processed.
 */

export const MAGIC = 0xb7;
export const HEADER_SIZE = 12;
export const PROTO_VERSION = 1;

export enum FrameType {
  Hello = 1,
  Open = 2,
  OpenOk = 3,
  OpenFail = 4,
  Data = 5,
  Window = 6,
  Fin = 7,
  Reset = 8,
  Ping = 9,
  Pong = 10,
}

export const MAX_DATA_PAYLOAD = 64 * 1024;
const MAX_CONTROL_PAYLOAD = 4 * 1024;

/** Largest payload allowed per type; anything above is a framing error. */
export const MAX_PAYLOAD: Readonly<Record<FrameType, number>> = {
  [FrameType.Hello]: MAX_CONTROL_PAYLOAD,
  [FrameType.Open]: MAX_CONTROL_PAYLOAD,
  [FrameType.OpenOk]: MAX_CONTROL_PAYLOAD,
  [FrameType.OpenFail]: MAX_CONTROL_PAYLOAD,
  [FrameType.Data]: MAX_DATA_PAYLOAD,
  [FrameType.Window]: 4,
  [FrameType.Fin]: 0,
  [FrameType.Reset]: MAX_CONTROL_PAYLOAD,
  [FrameType.Ping]: 8,
  [FrameType.Pong]: 8,
};

/** Session frames travel on stream 0; every other frame names a stream (id > 0). */
const SESSION_TYPES = new Set<FrameType>([FrameType.Hello, FrameType.Ping, FrameType.Pong]);

export interface Frame {
  type: FrameType;
  stream: number;
  payload: Buffer;
}

export interface HelloPayload {
  proto: number;
  role: 'host' | 'guest';
  session: string;
  info?: Record<string, unknown>;
}

export type DecodeResult = { kind: 'frame'; frame: Frame } | { kind: 'error'; reason: string };

const EMPTY = Buffer.alloc(0);

export function encodeFrame(type: FrameType, stream: number, payload: Buffer = EMPTY): Buffer {
  // allocUnsafe is safe here: every byte is written below (header fields, then the payload copy).
  const out = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  out[0] = MAGIC;
  out[1] = type;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32BE(stream >>> 0, 4);
  out.writeUInt32BE(payload.length, 8);
  payload.copy(out, HEADER_SIZE);
  return out;
}

export function encodeJsonFrame(type: FrameType, stream: number, value: unknown): Buffer {
  return encodeFrame(type, stream, Buffer.from(JSON.stringify(value), 'utf8'));
}

/** Returns why a header is invalid, or undefined if it is a valid header. `h` has ≥ 12 bytes. */
function headerError(h: Buffer, off: number): string | undefined {
  if (h[off] !== MAGIC) return `bad magic 0x${(h[off] ?? 0).toString(16)}`;
  const type = h[off + 1] as FrameType;
  const max = MAX_PAYLOAD[type];
  if (max === undefined) return `unknown frame type ${type}`;
  if (h[off + 2] !== 0 || h[off + 3] !== 0) return 'non-zero flags or reserved byte';
  const stream = h.readUInt32BE(off + 4);
  const isSession = SESSION_TYPES.has(type);
  if (isSession !== (stream === 0)) return `${FrameType[type]} frame on stream ${stream}`;
  const len = h.readUInt32BE(off + 8);
  if (len > max) return `${FrameType[type]} payload of ${len} bytes exceeds ${max}`;
  return undefined;
}

/** Parses and checks a HELLO payload; undefined if it is not one. */
export function parseHello(payload: Buffer): HelloPayload | undefined {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
  if (!v || typeof v !== 'object') return undefined;
  const o = v as Record<string, unknown>;
  if (o.proto !== PROTO_VERSION || (o.role !== 'host' && o.role !== 'guest') || typeof o.session !== 'string' || o.session.length > 128) {
    return undefined;
  }
  const out: HelloPayload = { proto: PROTO_VERSION, role: o.role, session: o.session };
  if (o.info && typeof o.info === 'object' && !Array.isArray(o.info)) out.info = o.info as Record<string, unknown>;
  return out;
}

/**
 * Streaming decoder. `push()` returns what the new bytes completed, in order.
 *
 * After a framing error the decoder *hunts* (docs/control.md, "Sessions and resynchronisation"): it
 * discards input until a valid HELLO header followed by a parseable HELLO payload, and resumes
 * normal decoding from that frame.
 */
export class FrameDecoder {
  private buf: Buffer = EMPTY;
  private hunt = false;

  get hunting(): boolean {
    return this.hunt;
  }

  /** Bytes held waiting for the rest of a frame (bounded by one maximal frame). */
  get buffered(): number {
    return this.buf.length;
  }

  /** Forces hunt mode (e.g. after the peer restarted, to skip the tail of a broken frame). */
  startHunt(): void {
    this.hunt = true;
  }

  /** Drops buffered input and hunts for the next HELLO. */
  reset(): void {
    this.buf = EMPTY;
    this.hunt = true;
  }

  push(chunk: Buffer): DecodeResult[] {
    const out: DecodeResult[] = [];
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let off = 0;
    for (;;) {
      if (this.hunt) {
        const found = this.findHello(off);
        if (found.at < 0) {
          off = found.keepFrom;
          break;
        }
        off = found.at;
        this.hunt = false;
      }
      // Zero bytes between frames are padding (the resynchronisation preamble).
      while (off < this.buf.length && this.buf[off] === 0) off++;
      if (this.buf.length - off < HEADER_SIZE) break;
      const err = headerError(this.buf, off);
      if (err) {
        out.push({ kind: 'error', reason: err });
        this.hunt = true;
        off += 1;
        continue;
      }
      const len = this.buf.readUInt32BE(off + 8);
      if (this.buf.length - off < HEADER_SIZE + len) break;
      const type = this.buf[off + 1] as FrameType;
      const stream = this.buf.readUInt32BE(off + 4);
      // subarray, not a copy: the frame shares memory with the chunk it came in.
      const payload = this.buf.subarray(off + HEADER_SIZE, off + HEADER_SIZE + len);
      off += HEADER_SIZE + len;
      out.push({ kind: 'frame', frame: { type, stream, payload } });
    }
    this.buf = off >= this.buf.length ? EMPTY : Buffer.from(this.buf.subarray(off));
    return out;
  }

  /**
   * Looks for a complete, valid HELLO frame at or after `from`. Returns its offset, or -1 with the
   * offset from which bytes must be kept (a candidate that is still incomplete).
   */
  private findHello(from: number): { at: number; keepFrom: number } {
    let i = from;
    for (;;) {
      i = this.buf.indexOf(MAGIC, i);
      if (i < 0) return { at: -1, keepFrom: this.buf.length };
      const avail = this.buf.length - i;
      if (avail < HEADER_SIZE) return { at: -1, keepFrom: i };
      if (this.buf[i + 1] === FrameType.Hello && !headerError(this.buf, i)) {
        const len = this.buf.readUInt32BE(i + 8);
        if (avail < HEADER_SIZE + len) return { at: -1, keepFrom: i };
        if (parseHello(this.buf.subarray(i + HEADER_SIZE, i + HEADER_SIZE + len))) return { at: i, keepFrom: i };
      }
      i += 1;
    }
  }
}
