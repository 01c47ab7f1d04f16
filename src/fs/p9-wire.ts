/**
 * 9P2000.L wire format (docs/files.md; message layouts from the Linux client, include/net/9p/9p.h,
 * and diod's protocol.md). This is the only code that reads 9P bytes: a request buffer in, a typed
 * request or a parse error out, with every length checked against the message. Replies are
 * encoded here too. All integers are little-endian; strings are a u16 length and UTF-8 bytes.
 *
 * Message: size[4] (including itself) type[1] tag[2] body.
 */

export const HEADER = 7;
export const NOTAG = 0xffff;
export const NOFID = 0xffffffff;
/** Bytes of a Rread/Rreaddir header before the data (size, type, tag, count): the client's P9_IOHDRSZ is 24. */
export const IOHDRSZ = 24;

export enum T {
  lerror = 6,
  statfs = 8,
  lopen = 12,
  lcreate = 14,
  symlink = 16,
  mknod = 18,
  rename = 20,
  readlink = 22,
  getattr = 24,
  setattr = 26,
  xattrwalk = 30,
  xattrcreate = 32,
  readdir = 40,
  fsync = 50,
  lock = 52,
  getlock = 54,
  link = 70,
  mkdir = 72,
  renameat = 74,
  unlinkat = 76,
  version = 100,
  auth = 102,
  attach = 104,
  flush = 108,
  walk = 110,
  read = 116,
  write = 118,
  clunk = 120,
  remove = 122,
}

/** qid.type bits. */
export const QTDIR = 0x80;
export const QTSYMLINK = 0x02;
export const QTFILE = 0x00;

export interface Qid {
  type: number;
  version: number;
  /** 64-bit, as a bigint. */
  path: bigint;
}

/** Most walks the Linux client sends at once (P9_MAXWELEM). */
export const MAXWELEM = 16;

export type Request =
  | { type: T.version; tag: number; msize: number; version: string }
  | { type: T.auth; tag: number; afid: number; uname: string; aname: string; nUname: number }
  | { type: T.attach; tag: number; fid: number; afid: number; uname: string; aname: string; nUname: number }
  | { type: T.flush; tag: number; oldtag: number }
  | { type: T.walk; tag: number; fid: number; newfid: number; names: string[] }
  | { type: T.read; tag: number; fid: number; offset: bigint; count: number }
  | { type: T.write; tag: number; fid: number; offset: bigint; data: Buffer }
  | { type: T.clunk; tag: number; fid: number }
  | { type: T.remove; tag: number; fid: number }
  | { type: T.statfs; tag: number; fid: number }
  | { type: T.lopen; tag: number; fid: number; flags: number }
  | { type: T.lcreate; tag: number; fid: number; name: string; flags: number; mode: number; gid: number }
  | { type: T.symlink; tag: number; fid: number; name: string; target: string; gid: number }
  | { type: T.mknod; tag: number; dfid: number; name: string; mode: number; major: number; minor: number; gid: number }
  | { type: T.rename; tag: number; fid: number; dfid: number; name: string }
  | { type: T.readlink; tag: number; fid: number }
  | { type: T.getattr; tag: number; fid: number; mask: bigint }
  | { type: T.setattr; tag: number; fid: number; valid: number; mode: number; uid: number; gid: number; size: bigint; atimeSec: bigint; atimeNsec: bigint; mtimeSec: bigint; mtimeNsec: bigint }
  | { type: T.xattrwalk; tag: number; fid: number; newfid: number; name: string }
  | { type: T.xattrcreate; tag: number; fid: number; name: string; size: bigint; flags: number }
  | { type: T.readdir; tag: number; fid: number; offset: bigint; count: number }
  | { type: T.fsync; tag: number; fid: number; datasync: number }
  | { type: T.lock; tag: number; fid: number; lockType: number; flags: number; start: bigint; length: bigint; procId: number; clientId: string }
  | { type: T.getlock; tag: number; fid: number; lockType: number; start: bigint; length: bigint; procId: number; clientId: string }
  | { type: T.link; tag: number; dfid: number; fid: number; name: string }
  | { type: T.mkdir; tag: number; dfid: number; name: string; mode: number; gid: number }
  | { type: T.renameat; tag: number; olddirfid: number; oldname: string; newdirfid: number; newname: string }
  | { type: T.unlinkat; tag: number; dirfid: number; name: string; flags: number };

export type ParseResult = { ok: true; req: Request } | { ok: false; tag: number | undefined; reason: string };

class Short extends Error {}

/** A bounds-checked little-endian reader over one message body. */
class Reader {
  constructor(
    private readonly b: Buffer,
    private off: number,
  ) {}
  private need(n: number): void {
    if (this.off + n > this.b.length) throw new Short(`message too short (need ${n} bytes at ${this.off} of ${this.b.length})`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.off++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.b.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.b.readBigUInt64LE(this.off);
    this.off += 8;
    return v;
  }
  str(): string {
    const n = this.u16();
    this.need(n);
    const s = this.b.toString('utf8', this.off, this.off + n);
    this.off += n;
    return s;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  get rest(): number {
    return this.b.length - this.off;
  }
}

/** Parses one complete message (size already checked by the framer). Never throws. */
export function parseRequest(msg: Buffer): ParseResult {
  if (msg.length < HEADER) return { ok: false, tag: undefined, reason: 'message shorter than its header' };
  const type = msg[4]!;
  const tag = msg.readUInt16LE(5);
  const r = new Reader(msg, HEADER);
  try {
    const req = parseBody(type, tag, r);
    if (!req) return { ok: false, tag, reason: `unknown or unsupported message type ${type}` };
    if (r.rest !== 0) return { ok: false, tag, reason: `${r.rest} trailing bytes after message type ${type}` };
    return { ok: true, req };
  } catch (err) {
    if (err instanceof Short) return { ok: false, tag, reason: err.message };
    throw err;
  }
}

function parseBody(type: number, tag: number, r: Reader): Request | undefined {
  switch (type) {
    case T.version:
      return { type, tag, msize: r.u32(), version: r.str() };
    case T.auth:
      return { type, tag, afid: r.u32(), uname: r.str(), aname: r.str(), nUname: r.u32() };
    case T.attach:
      return { type, tag, fid: r.u32(), afid: r.u32(), uname: r.str(), aname: r.str(), nUname: r.u32() };
    case T.flush:
      return { type, tag, oldtag: r.u16() };
    case T.walk: {
      const fid = r.u32();
      const newfid = r.u32();
      const n = r.u16();
      if (n > MAXWELEM) throw new Short(`walk of ${n} names exceeds ${MAXWELEM}`);
      const names: string[] = [];
      for (let i = 0; i < n; i++) names.push(r.str());
      return { type, tag, fid, newfid, names };
    }
    case T.read:
      return { type, tag, fid: r.u32(), offset: r.u64(), count: r.u32() };
    case T.write: {
      const fid = r.u32();
      const offset = r.u64();
      const count = r.u32();
      return { type, tag, fid, offset, data: r.bytes(count) };
    }
    case T.clunk:
    case T.remove:
    case T.statfs:
    case T.readlink:
      return { type, tag, fid: r.u32() } as Request;
    case T.lopen:
      return { type, tag, fid: r.u32(), flags: r.u32() };
    case T.lcreate:
      return { type, tag, fid: r.u32(), name: r.str(), flags: r.u32(), mode: r.u32(), gid: r.u32() };
    case T.symlink:
      return { type, tag, fid: r.u32(), name: r.str(), target: r.str(), gid: r.u32() };
    case T.mknod:
      return { type, tag, dfid: r.u32(), name: r.str(), mode: r.u32(), major: r.u32(), minor: r.u32(), gid: r.u32() };
    case T.rename:
      return { type, tag, fid: r.u32(), dfid: r.u32(), name: r.str() };
    case T.getattr:
      return { type, tag, fid: r.u32(), mask: r.u64() };
    case T.setattr:
      return { type, tag, fid: r.u32(), valid: r.u32(), mode: r.u32(), uid: r.u32(), gid: r.u32(), size: r.u64(), atimeSec: r.u64(), atimeNsec: r.u64(), mtimeSec: r.u64(), mtimeNsec: r.u64() };
    case T.xattrwalk:
      return { type, tag, fid: r.u32(), newfid: r.u32(), name: r.str() };
    case T.xattrcreate:
      return { type, tag, fid: r.u32(), name: r.str(), size: r.u64(), flags: r.u32() };
    case T.readdir:
      return { type, tag, fid: r.u32(), offset: r.u64(), count: r.u32() };
    case T.fsync:
      return { type, tag, fid: r.u32(), datasync: r.u32() };
    case T.lock:
      return { type, tag, fid: r.u32(), lockType: r.u8(), flags: r.u32(), start: r.u64(), length: r.u64(), procId: r.u32(), clientId: r.str() };
    case T.getlock:
      return { type, tag, fid: r.u32(), lockType: r.u8(), start: r.u64(), length: r.u64(), procId: r.u32(), clientId: r.str() };
    case T.link:
      return { type, tag, dfid: r.u32(), fid: r.u32(), name: r.str() };
    case T.mkdir:
      return { type, tag, dfid: r.u32(), name: r.str(), mode: r.u32(), gid: r.u32() };
    case T.renameat:
      return { type, tag, olddirfid: r.u32(), oldname: r.str(), newdirfid: r.u32(), newname: r.str() };
    case T.unlinkat:
      return { type, tag, dirfid: r.u32(), name: r.str(), flags: r.u32() };
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Replies

/** A growable little-endian writer for one reply; `finish()` fills in size, type and tag. */
export class ReplyWriter {
  private buf: Buffer;
  private off = HEADER;

  constructor(capacity = 64) {
    this.buf = Buffer.allocUnsafe(Math.max(capacity, HEADER));
  }
  private room(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(next, 0, 0, this.off);
    this.buf = next;
  }
  get length(): number {
    return this.off;
  }
  u8(v: number): this {
    this.room(1);
    this.buf[this.off++] = v;
    return this;
  }
  u16(v: number): this {
    this.room(2);
    this.buf.writeUInt16LE(v, this.off);
    this.off += 2;
    return this;
  }
  u32(v: number): this {
    this.room(4);
    this.buf.writeUInt32LE(v >>> 0, this.off);
    this.off += 4;
    return this;
  }
  u64(v: bigint): this {
    this.room(8);
    this.buf.writeBigUInt64LE(BigInt.asUintN(64, v), this.off);
    this.off += 8;
    return this;
  }
  str(s: string): this {
    const n = Buffer.byteLength(s);
    this.u16(n);
    this.room(n);
    this.buf.write(s, this.off);
    this.off += n;
    return this;
  }
  qid(q: Qid): this {
    return this.u8(q.type).u32(q.version).u64(q.path);
  }
  bytes(b: Buffer): this {
    this.room(b.length);
    b.copy(this.buf, this.off);
    this.off += b.length;
    return this;
  }
  /** Reserves `n` bytes for the caller to fill (reads straight into the reply); returns their offset. */
  reserve(n: number): { buf: Buffer; off: number } {
    this.room(n);
    const at = this.off;
    this.off += n;
    return { buf: this.buf, off: at };
  }
  /** Shrinks the reply after a reserve() that was not filled completely. */
  truncate(length: number): void {
    this.off = length;
  }
  finish(type: number, tag: number): Buffer {
    this.buf.writeUInt32LE(this.off, 0);
    this.buf[4] = type;
    this.buf.writeUInt16LE(tag, 5);
    return this.buf.subarray(0, this.off);
  }
}

export function rlerror(tag: number, errno: number): Buffer {
  return new ReplyWriter(11).u32(errno).finish(T.lerror + 1, tag);
}

/** A reply with no body (Rclunk, Rflush, Rremove, Rsetattr, Rrename, ...). */
export function rempty(type: number, tag: number): Buffer {
  return new ReplyWriter(HEADER).finish(type + 1, tag);
}

/** Size in bytes of one Rreaddir entry: qid[13] offset[8] type[1] name[s]. */
export function direntSize(name: string): number {
  return 13 + 8 + 1 + 2 + Buffer.byteLength(name);
}

// ---------------------------------------------------------------------------------------------
// Framing

export type FrameRead = { kind: 'message'; msg: Buffer } | { kind: 'error'; reason: string };

/**
 * Splits a byte stream into messages by their size field. A size below the header or above
 * `maxSize` (the negotiated msize, or the server's maximum before Tversion) is a framing error:
 * the connection is then closed, since the stream cannot be resynchronised.
 */
export class MessageDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  constructor(public maxSize: number) {}

  push(chunk: Buffer, out: (r: FrameRead) => void): void {
    if (this.failed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.buffered < 4) return;
      if (this.chunks[0]!.length < 4) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
      const size = this.chunks[0]!.readUInt32LE(0);
      if (size < HEADER || size > this.maxSize) {
        this.failed = true;
        this.chunks = [];
        this.buffered = 0;
        out({ kind: 'error', reason: `message size ${size} outside ${HEADER}..${this.maxSize}` });
        return;
      }
      if (this.buffered < size) return;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
      const msg = all.subarray(0, size);
      const rest = all.subarray(size);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      out({ kind: 'message', msg });
    }
  }
}
