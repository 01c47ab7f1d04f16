import { HEADER, NOFID, NOTAG, T, type Qid } from '../../src/fs/p9-wire.js';
import { P9Session } from '../../src/fs/p9-session.js';

/**
 * A minimal 9P2000.L client for unit tests: builds requests byte by byte (independently of the
 * server's own encoder) and decodes the replies the tests look at. It drives a P9Session directly,
 * or produces raw messages for attack tests.
 */
export class Msg {
  private parts: Buffer[] = [];
  u8(v: number): this {
    this.parts.push(Buffer.from([v & 0xff]));
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v & 0xffff);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.parts.push(b);
    return this;
  }
  str(s: string | Buffer): this {
    const b = typeof s === 'string' ? Buffer.from(s) : s;
    this.u16(b.length);
    this.parts.push(b);
    return this;
  }
  raw(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  build(type: number, tag: number): Buffer {
    const body = Buffer.concat(this.parts);
    const h = Buffer.alloc(HEADER);
    h.writeUInt32LE(HEADER + body.length, 0);
    h[4] = type;
    h.writeUInt16LE(tag, 5);
    return Buffer.concat([h, body]);
  }
}

export interface Reply {
  type: number;
  tag: number;
  body: Buffer;
}

export function decodeReply(b: Buffer): Reply {
  return { type: b[4]!, tag: b.readUInt16LE(5), body: b.subarray(HEADER) };
}

export function readQid(b: Buffer, off = 0): Qid {
  return { type: b[off]!, version: b.readUInt32LE(off + 1), path: b.readBigUInt64LE(off + 5) };
}

export class P9Error extends Error {
  constructor(readonly errno: number) {
    super(`Rlerror ${errno}`);
  }
}

/** Attributes out of an Rgetattr body. */
/** The errno of the Rlerror that `fn` gets; throws if it succeeds. */
export function errno(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    if (err instanceof P9Error) return err.errno;
    throw err;
  }
  throw new Error('expected an Rlerror');
}

export interface Attr {
  qid: Qid;
  mode: number;
  uid: number;
  gid: number;
  nlink: bigint;
  size: bigint;
  mtimeSec: bigint;
  mtimeNsec: bigint;
}

export class TestClient {
  private tag = 1;
  private nextFid = 100;

  constructor(readonly session: P9Session) {}

  /** Sends one message, returns the reply; Rlerror becomes a thrown P9Error. */
  rpc(type: number, m: Msg): Reply {
    const tag = this.tag++ & 0xfffe;
    const out = this.session.handle(m.build(type, tag));
    if (!out) throw new Error('no reply');
    const r = decodeReply(out);
    if (r.tag !== tag) throw new Error(`reply tag ${r.tag} for request tag ${tag}`);
    if (r.type === T.lerror + 1) throw new P9Error(r.body.readUInt32LE(0));
    if (r.type !== type + 1) throw new Error(`reply type ${r.type} for request type ${type}`);
    return r;
  }

  fid(): number {
    return this.nextFid++;
  }

  version(msize = 1 << 20, version = '9P2000.L'): { msize: number; version: string } {
    const h = this.session.handle(new Msg().u32(msize).str(version).build(T.version, NOTAG))!;
    const r = decodeReply(h);
    const len = r.body.readUInt16LE(4);
    return { msize: r.body.readUInt32LE(0), version: r.body.toString('utf8', 6, 6 + len) };
  }

  attach(aname: string, uid = 0): number {
    const fid = this.fid();
    this.rpc(T.attach, new Msg().u32(fid).u32(NOFID).str('').str(aname).u32(uid));
    return fid;
  }

  /** Walks `names` from `fid` into a new fid; returns it and the qids. Partial walks return fewer qids. */
  walk(fid: number, names: string[], newfid = this.fid()): { fid: number; qids: Qid[] } {
    const m = new Msg().u32(fid).u32(newfid).u16(names.length);
    for (const n of names) m.str(n);
    const r = this.rpc(T.walk, m);
    const n = r.body.readUInt16LE(0);
    const qids: Qid[] = [];
    for (let i = 0; i < n; i++) qids.push(readQid(r.body, 2 + 13 * i));
    return { fid: newfid, qids };
  }

  getattr(fid: number): Attr {
    const b = this.rpc(T.getattr, new Msg().u32(fid).u64(0x7ffn)).body;
    return {
      qid: readQid(b, 8),
      mode: b.readUInt32LE(21),
      uid: b.readUInt32LE(25),
      gid: b.readUInt32LE(29),
      nlink: b.readBigUInt64LE(33),
      size: b.readBigUInt64LE(49),
      mtimeSec: b.readBigUInt64LE(89),
      mtimeNsec: b.readBigUInt64LE(97),
    };
  }

  lopen(fid: number, flags: number): Qid {
    return readQid(this.rpc(T.lopen, new Msg().u32(fid).u32(flags)).body);
  }

  lcreate(fid: number, name: string, flags: number, mode: number): Qid {
    return readQid(this.rpc(T.lcreate, new Msg().u32(fid).str(name).u32(flags).u32(mode).u32(0)).body);
  }

  read(fid: number, offset: number | bigint, count: number): Buffer {
    const b = this.rpc(T.read, new Msg().u32(fid).u64(offset).u32(count)).body;
    return b.subarray(4, 4 + b.readUInt32LE(0));
  }

  write(fid: number, offset: number | bigint, data: Buffer): number {
    return this.rpc(T.write, new Msg().u32(fid).u64(offset).u32(data.length).raw(data)).body.readUInt32LE(0);
  }

  /** All entries of an opened directory, following offsets until an empty reply. */
  readdir(fid: number, count = 8192): { name: string; qid: Qid; type: number; offset: bigint }[] {
    const out: { name: string; qid: Qid; type: number; offset: bigint }[] = [];
    let offset = 0n;
    for (;;) {
      const b = this.rpc(T.readdir, new Msg().u32(fid).u64(offset).u32(count)).body;
      const n = b.readUInt32LE(0);
      if (n === 0) return out;
      let i = 4;
      while (i < 4 + n) {
        const qid = readQid(b, i);
        const off = b.readBigUInt64LE(i + 13);
        const type = b[i + 21]!;
        const len = b.readUInt16LE(i + 22);
        const name = b.toString('utf8', i + 24, i + 24 + len);
        out.push({ name, qid, type, offset: off });
        i += 24 + len;
        offset = off;
      }
    }
  }

  clunk(fid: number): void {
    this.rpc(T.clunk, new Msg().u32(fid));
  }

  mkdir(dfid: number, name: string, mode = 0o755): Qid {
    return readQid(this.rpc(T.mkdir, new Msg().u32(dfid).str(name).u32(mode).u32(0)).body);
  }

  symlink(dfid: number, name: string, target: string): Qid {
    return readQid(this.rpc(T.symlink, new Msg().u32(dfid).str(name).str(target).u32(0)).body);
  }

  readlink(fid: number): string {
    const b = this.rpc(T.readlink, new Msg().u32(fid)).body;
    return b.toString('utf8', 2, 2 + b.readUInt16LE(0));
  }

  renameat(olddir: number, oldname: string, newdir: number, newname: string): void {
    this.rpc(T.renameat, new Msg().u32(olddir).str(oldname).u32(newdir).str(newname));
  }

  unlinkat(dir: number, name: string, flags = 0): void {
    this.rpc(T.unlinkat, new Msg().u32(dir).str(name).u32(flags));
  }

  link(dfid: number, fid: number, name: string): void {
    this.rpc(T.link, new Msg().u32(dfid).u32(fid).str(name));
  }

  setattr(fid: number, a: { valid: number; mode?: number; size?: bigint; atime?: [bigint, bigint]; mtime?: [bigint, bigint] }): void {
    this.rpc(
      T.setattr,
      new Msg()
        .u32(fid)
        .u32(a.valid)
        .u32(a.mode ?? 0)
        .u32(0)
        .u32(0)
        .u64(a.size ?? 0n)
        .u64(a.atime?.[0] ?? 0n)
        .u64(a.atime?.[1] ?? 0n)
        .u64(a.mtime?.[0] ?? 0n)
        .u64(a.mtime?.[1] ?? 0n),
    );
  }

  /** Walks a slash-separated path from `root` and returns the new fid. */
  open(root: number, rel: string): number {
    const names = rel.split('/').filter(Boolean);
    return this.walk(root, names).fid;
  }
}
