import fs, { constants as C, type BigIntStats } from 'node:fs';
import { E, errnoOf, P9Error } from './errno.js';
import { QidMap } from './qids.js';
import { at, checkName, held, listFolder, O_PATH, type Share } from './share.js';
import { direntSize, IOHDRSZ, MAXWELEM, NOFID, parseRequest, ReplyWriter, rempty, rlerror, T, type Qid, type Request } from './p9-wire.js';

/**
 * One 9P2000.L connection (docs/files.md). Requests are handled one at a time, in order, with
 * synchronous host calls: replies leave in request order, Tflush always finds its request already
 * answered (so it is answered at once and the original reply is never sent after it), and no guest
 * request can interleave with another's path checks.
 *
 * Identity: the client mounts with access=user, so every guest uid attaches on its own and its fids
 * carry that uid (the change-event actuator is recognised that way). Owners are reported as they
 * are on the host. So that a container running as another uid can write where the host user can,
 * the berth user's files that are not private (some group or other bit set) are reported with the
 * group and other write bits the owner has: 644 → 666, 755 → 777, while 600 and 700 (keys, private
 * folders) stay as they are, since tools such as ssh refuse keys that look shared. The guest kernel
 * checks permissions against these modes; the host checks again when the server acts. Ownership
 * changes are accepted and ignored (QEMU's security_model=none): the host user cannot give files away.
 */

export interface SessionOptions {
  shares: ReadonlyMap<string, Share>;
  /**
   * The share this connection was opened for: its ticket named it (p9-server.ts). Every attach
   * must name it (aname "<share id>").
   */
  share: string;
  /** Largest msize the server accepts. */
  maxMsize: number;
  qids: QidMap;
  log: (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
  /** Hooks for the change-event actuator (change-events.ts); absent = every fid is ordinary. */
  actuator?: ActuatorHooks;
  /** Called after the guest (not the actuator) changed a path: its host events are echoes. */
  guestChanged?: (share: Share, comps: readonly string[]) => void;
  /** Bounds on open files (tests); by default MAX_OPEN_FILES and MAX_OPEN_FILES_TOTAL. */
  openFileLimits?: { session: number; total: number };
  /** Bounds on fids (tests); by default MAX_FIDS per session and the thread's FID_MEMORY. */
  fidLimits?: { maxFids: number; budget: FidBudget };
}

/**
 * Fids a session may hold: beyond, a walk or attach is refused with EMFILE and the session goes
 * on. A cached mount (v9fs cache=loose) keeps one fid per cached dentry, so a walk of a big tree
 * legitimately holds tens of thousands. Measured 2026-12-07 (Node 20, 64-bit): a fid costs
 * 150-200 bytes of heap plus 8 per name of its path (its names are shared: FidBudget), so 200,000
 * fids 10 names deep take ~50 MB of the file server's 256 MB heap (file-service.ts). Before,
 * each fid held its own copy of its names in an array with spare room (~360 bytes three short
 * names deep, several KB with long names), and ~100,000 fids exhausted the heap.
 */
export const MAX_FIDS = 200_000;

/**
 * What the fids of every session in this thread may cost together (FidBudget): beyond, a walk,
 * attach or create is refused with ENFILE. The count alone does not bound memory: a fid holds
 * its path, up to 255 bytes a name and as many names as the path has, and the number of
 * connections is the guest's choice. 96 MiB holds a full session (200,000 fids 10 names deep:
 * ~55 MB as estimated) with room for the others, and leaves the heap's other users (change
 * events, listings, messages) the rest.
 */
export const FID_MEMORY = 96 * 1024 * 1024;

/** Estimated heap bytes of a fid (object, map entry, array) and of each name it holds (pointer). */
const FID_BYTES = 192;
const PER_NAME = 8;
/** Estimated heap bytes of a distinct name in the table (entry, record, string header) besides its characters. */
const NAME_BYTES = 112;

/**
 * The fids of some sessions: what they cost, at most `limit` bytes, and the names they hold.
 * Every name is held once, however many fids hold it (one string per name: a fid walked from
 * another shares its names anyway, and "node_modules" or "index.js" are held by thousands), so
 * a fid costs FID_BYTES + PER_NAME per name, and a name NAME_BYTES + its length while any fid
 * holds it. The estimates are from above (measured), so the heap the fids take is never more
 * than `used`.
 */
export class FidBudget {
  used = 0;
  private readonly names = new Map<string, { name: string; refs: number }>();

  constructor(readonly limit: number) {}

  /**
   * Takes on a fid of these names: charged (ENFILE beyond the limit, unless `force`), and given
   * back as an array of exactly their number, of the table's own strings.
   */
  take(comps: readonly string[], force = false): string[] {
    this.used += FID_BYTES + PER_NAME * comps.length;
    const held = comps.map((c) => {
      let e = this.names.get(c);
      if (!e) {
        e = { name: c, refs: 0 };
        this.names.set(c, e);
        this.used += NAME_BYTES + c.length;
      }
      e.refs++;
      return e.name;
    });
    if (!force && this.used > this.limit) {
      this.drop(held);
      throw new P9Error(E.ENFILE, 'fids over their memory budget');
    }
    return held;
  }

  /** Lets go of a fid taken with these names. */
  drop(comps: readonly string[]): void {
    this.used -= FID_BYTES + PER_NAME * comps.length;
    for (const c of comps) {
      const e = this.names.get(c)!;
      if (--e.refs > 0) continue;
      this.names.delete(c);
      this.used -= NAME_BYTES + c.length;
    }
  }
}

/** The budget every session of this thread (the file server's worker) shares unless told otherwise. */
const threadBudget = new FidBudget(FID_MEMORY);

/**
 * Files held open for the guest: each is a descriptor of the daemon's process, which the
 * network translator shares, so they are bounded per session and for the thread; beyond, an
 * open or create is refused with EMFILE or ENFILE and the session goes on.
 */
export const MAX_OPEN_FILES = 8192;
export const MAX_OPEN_FILES_TOTAL = 12_288;
let openFilesTotal = 0;

/**
 * The change-event actuator (docs/files.md "Change events"): a guest process whose uid marks its
 * requests. Its changes are never applied (the host already made them); they only make the guest
 * kernel emit inotify events. For its walks, `view` can pretend a name is absent (a file the host
 * created, so the actuator can create it again) or present (one the host deleted or renamed away).
 */
export interface ActuatorHooks {
  uid: number;
  view(share: Share, comps: readonly string[]): { absent: true } | { gone: GoneEntry } | undefined;
  /** The actuator's change at `comps` went through: from now on the guest sees what the host has. */
  done(share: Share, comps: readonly string[]): void;
}

/** What the actuator's walks and getattrs see at a name the host already removed or renamed. */
export interface GoneEntry {
  dev: bigint;
  ino: bigint;
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  mtimeNs: bigint;
}

/** The fields of a host stat that getattr reports. */
type StatLike = Pick<BigIntStats, 'dev' | 'ino' | 'uid' | 'gid' | 'nlink' | 'rdev' | 'size' | 'blksize' | 'blocks' | 'atimeNs' | 'mtimeNs' | 'ctimeNs' | 'birthtimeNs'> & {
  mode: bigint;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
};

function goneStat(g: GoneEntry): StatLike {
  const type = g.mode & S_IFMT;
  return {
    dev: g.dev,
    ino: g.ino,
    mode: BigInt(g.mode),
    uid: BigInt(g.uid),
    gid: BigInt(g.gid),
    nlink: 1n,
    rdev: 0n,
    size: g.size,
    blksize: 4096n,
    blocks: (g.size + 511n) / 512n,
    atimeNs: g.mtimeNs,
    mtimeNs: g.mtimeNs,
    ctimeNs: g.mtimeNs,
    birthtimeNs: g.mtimeNs,
    isDirectory: () => type === S_IFDIR,
    isSymbolicLink: () => type === S_IFLNK,
  };
}

interface DirSnapshot {
  entries: { name: string; qid: Qid; type: number }[];
}

/** A fid: every field set in the constructor (one object shape, no property store of its own). */
class Fid {
  fd: number | undefined = undefined;
  dir: DirSnapshot | undefined = undefined;
  /** Opened with write access. */
  writable = false;

  constructor(
    readonly share: Share,
    /** Names below the share's root, from FidBudget.take (set only through it). */
    public comps: readonly string[],
    readonly uid: number,
    readonly actuator: boolean,
  ) {}
}

const P9_GETATTR_BASIC = 0x7ffn;
const P9_SETATTR = { MODE: 0x1, UID: 0x2, GID: 0x4, SIZE: 0x8, ATIME: 0x10, MTIME: 0x20, CTIME: 0x40, ATIME_SET: 0x80, MTIME_SET: 0x100 };
const AT_REMOVEDIR = 0x200;
const V9FS_MAGIC = 0x01021997;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
/** Offsets and sizes Node's fs calls take only as numbers (write, truncate): exact up to 2^53 - 1. */
const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER);
/** The largest file position pread takes (off_t). */
const MAX_POSITION = (1n << 63n) - 1n;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;

/** Linux open flags (9P2000.L carries them as Linux numbers) and what the host calls them. */
const L = { WRONLY: 0o1, RDWR: 0o2, CREAT: 0o100, EXCL: 0o200, TRUNC: 0o1000, APPEND: 0o2000, DSYNC: 0o10000, DIRECTORY: 0o200000, SYNC: 0o4010000 };

export class P9Session {
  private msize: number;
  private readonly fids = new Map<number, Fid>();
  /** Files this session holds open (fids with a host descriptor). */
  private openFiles = 0;
  private readonly serverUid = process.getuid?.() ?? 0;
  private readonly maxFids: number;
  private readonly budget: FidBudget;
  /** The guest reached a bound on fids once (warned once per session). */
  private fidsLimited = false;

  constructor(private readonly o: SessionOptions) {
    this.msize = o.maxMsize;
    this.maxFids = o.fidLimits?.maxFids ?? MAX_FIDS;
    this.budget = o.fidLimits?.budget ?? threadBudget;
  }

  /** The msize in force (the framer's limit). */
  get maxMessage(): number {
    return this.msize;
  }

  get fidCount(): number {
    return this.fids.size;
  }

  /** Handles one complete message; returns the reply (undefined only for unparseable headers). */
  handle(msg: Buffer): Buffer | undefined {
    const parsed = parseRequest(msg);
    if (!parsed.ok) {
      this.o.log('debug', '9p: malformed request', { reason: parsed.reason });
      return parsed.tag === undefined ? undefined : rlerror(parsed.tag, E.EINVAL);
    }
    const req = parsed.req;
    try {
      return this.dispatch(req);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === E.EIO) this.o.log('warn', '9p: host error', { op: T[req.type], err: String(err) });
      return rlerror(req.tag, errno);
    }
  }

  /** Closes every open file (connection gone). */
  close(): void {
    for (const f of this.fids.values()) {
      this.release(f);
      this.budget.drop(f.comps);
    }
    this.fids.clear();
  }

  private dispatch(r: Request): Buffer {
    switch (r.type) {
      case T.version:
        return this.version(r);
      case T.auth:
        throw new P9Error(E.EOPNOTSUPP, 'no authentication protocol');
      case T.attach:
        return this.attach(r);
      case T.flush:
        return rempty(T.flush, r.tag);
      case T.walk:
        return this.walk(r);
      case T.getattr:
        return this.getattr(r.tag, this.fid(r.fid));
      case T.setattr:
        return this.setattr(r);
      case T.lopen:
        return this.lopen(r.tag, this.fid(r.fid), r.flags);
      case T.lcreate:
        return this.lcreate(r);
      case T.read:
        return this.read(r.tag, this.fid(r.fid), r.offset, r.count);
      case T.write:
        return this.write(r.tag, this.fid(r.fid), r.offset, r.data);
      case T.readdir:
        return this.readdir(r.tag, this.fid(r.fid), r.offset, r.count);
      case T.clunk: {
        this.dropFid(r.fid, this.fid(r.fid));
        return rempty(T.clunk, r.tag);
      }
      case T.remove: {
        const f = this.fid(r.fid);
        try {
          this.removePath(f);
        } finally {
          this.dropFid(r.fid, f);
        }
        return rempty(T.remove, r.tag);
      }
      case T.statfs:
        return this.statfs(r.tag, this.fid(r.fid));
      case T.mkdir:
        return this.mkdir(r);
      case T.symlink:
        return this.symlink(r);
      case T.mknod:
        return this.mknod(r);
      case T.readlink: {
        const f = this.fid(r.fid);
        if (f.comps.length === 0) throw new P9Error(E.EINVAL, 'the share root is not a symlink');
        const target = f.share.withParent(f.comps, (dirFd, name) => fs.readlinkSync(at(dirFd, name)));
        return new ReplyWriter().str(target).finish(T.readlink + 1, r.tag);
      }
      case T.link:
        return this.link(r);
      case T.rename:
        return this.rename(r.tag, this.fid(r.fid), this.fid(r.dfid), r.name);
      case T.renameat:
        return this.renameat(r);
      case T.unlinkat:
        return this.unlinkat(r);
      case T.fsync: {
        const f = this.fid(r.fid);
        if (f.fd !== undefined) (r.datasync ? fs.fdatasyncSync : fs.fsyncSync)(f.fd);
        return rempty(T.fsync, r.tag);
      }
      case T.lock:
        // Guest processes already exclude each other through the guest kernel's own lock table
        // (v9fs takes the local lock first); host-side advisory locks are not available to Node.
        return new ReplyWriter().u8(0 /* P9_LOCK_SUCCESS */).finish(T.lock + 1, r.tag);
      case T.getlock:
        return new ReplyWriter().u8(2 /* F_UNLCK: no conflicting lock known */).u64(r.start).u64(r.length).u32(r.procId).str(r.clientId).finish(T.getlock + 1, r.tag);
      case T.xattrwalk: {
        // No xattr API in Node: every attribute is absent (ENODATA), so the guest sees none.
        this.fid(r.fid);
        throw new P9Error(E.ENODATA, 'no extended attributes');
      }
      case T.xattrcreate:
        throw new P9Error(E.EOPNOTSUPP, 'extended attributes are not supported');
    }
  }

  // -------------------------------------------------------------------------------------------
  // Session

  private version(r: Extract<Request, { type: T.version }>): Buffer {
    this.close();
    if (r.msize < 4096) throw new P9Error(E.EINVAL, `msize ${r.msize} below 4096`);
    this.msize = Math.min(r.msize, this.o.maxMsize);
    const version = r.version === '9P2000.L' ? '9P2000.L' : 'unknown';
    return new ReplyWriter().u32(this.msize).str(version).finish(T.version + 1, r.tag);
  }

  private attach(r: Extract<Request, { type: T.attach }>): Buffer {
    if (r.afid !== NOFID) throw new P9Error(E.EINVAL, 'attach with an auth fid');
    if (r.aname !== this.o.share) {
      this.o.log('warn', '9p: attach to another share than the connection was opened for refused', { uid: r.nUname });
      throw new P9Error(E.EACCES, 'this connection was opened for another share');
    }
    const share = this.o.shares.get(r.aname);
    if (!share) throw new P9Error(E.ENOENT, 'no such share');
    if (this.fids.has(r.fid)) throw new P9Error(E.EBADF, 'fid in use');
    const uid = r.nUname === NOFID ? 0 : r.nUname;
    const actuator = this.o.actuator !== undefined && uid === this.o.actuator.uid;
    const st = fs.fstatSync(share.rootFd, { bigint: true });
    this.addFid(r.fid, share, [], uid, actuator);
    return new ReplyWriter().qid(this.o.qids.qid(st)).finish(T.attach + 1, r.tag);
  }

  private fid(n: number): Fid {
    const f = this.fids.get(n);
    if (!f) throw new P9Error(E.EBADF, `unknown fid ${n}`);
    return f;
  }

  /**
   * Makes fid `n` a new fid of these names (replacing the one it was: a walk to the same fid),
   * within the bounds: EMFILE beyond this session's count, ENFILE beyond the budget.
   */
  private addFid(n: number, share: Share, comps: readonly string[], uid: number, actuator: boolean): void {
    const old = this.fids.get(n);
    try {
      if (!old && this.fids.size >= this.maxFids) throw new P9Error(E.EMFILE, `more than ${this.maxFids} fids`);
      this.fids.set(n, new Fid(share, this.budget.take(comps), uid, actuator));
    } catch (err) {
      if (!this.fidsLimited) this.o.log('warn', '9p: the guest holds too many fids; new ones are refused until it lets go of some', { fids: this.fids.size, bytes: this.budget.used, err: String(err) });
      this.fidsLimited = true;
      throw err;
    }
    if (old) this.budget.drop(old.comps);
  }

  private dropFid(n: number, f: Fid): void {
    this.release(f);
    this.fids.delete(n);
    this.budget.drop(f.comps);
  }

  /** Gives `f` other names (a create; `force`: a rename above it, which has happened already). */
  private setComps(f: Fid, comps: readonly string[], force = false): void {
    const next = this.budget.take(comps, force);
    this.budget.drop(f.comps);
    f.comps = next;
  }

  private release(f: Fid): void {
    if (f.fd !== undefined) {
      try {
        fs.closeSync(f.fd);
      } catch {
        // already closed
      }
      f.fd = undefined;
      this.openFiles--;
      openFilesTotal--;
    }
    f.dir = undefined;
  }

  /** Refuses an open beyond the bounds on open files (before the host open is made). */
  private mayOpen(): void {
    const max = this.o.openFileLimits ?? { session: MAX_OPEN_FILES, total: MAX_OPEN_FILES_TOTAL };
    if (this.openFiles >= max.session) throw new P9Error(E.EMFILE, `more than ${max.session} files open on one mount`);
    if (openFilesTotal >= max.total) throw new P9Error(E.ENFILE, `more than ${max.total} files open in the file server`);
  }

  private held(f: Fid, fd: number): void {
    f.fd = fd;
    this.openFiles++;
    openFilesTotal++;
  }

  // -------------------------------------------------------------------------------------------
  // Walk and attributes

  private walk(r: Extract<Request, { type: T.walk }>): Buffer {
    const from = this.fid(r.fid);
    if (r.newfid !== r.fid && this.fids.has(r.newfid)) throw new P9Error(E.EBADF, 'newfid in use');
    if (from.fd !== undefined || from.dir) throw new P9Error(E.EBADF, 'walk from an open fid');
    if (r.names.length > MAXWELEM) throw new P9Error(E.EINVAL, 'too many names');
    const share = from.share;
    const qids: Qid[] = [];
    const comps = [...from.comps];
    // A handle on the folder comps[0..depth): from the share (Share.acquire) where the walk starts
    // or after "..", then each folder the walk enters, opened in the one before it without
    // following symlinks (share.ts).
    let dirFd = share.rootFd;
    let depth = 0;
    const here = (): number => {
      if (depth !== comps.length) {
        share.release(dirFd);
        dirFd = share.rootFd;
        depth = 0;
        dirFd = share.acquire(comps);
        depth = comps.length;
      }
      return dirFd;
    };
    try {
      // Where the walk starts must still be a real directory (for the actuator: or one the host
      // removed that the guest still has, see ActuatorHooks).
      const startGone = from.actuator && comps.length > 0 && this.o.actuator!.view(share, comps);
      if (r.names.length > 0 && !(startGone && 'gone' in startGone)) here();
      for (const [i, name] of r.names.entries()) {
        let qid: Qid | undefined;
        if (name === '..') comps.pop(); // at the root, ".." stays at the root
        else checkName(name);
        const fake = from.actuator && name !== '..' ? this.o.actuator!.view(share, [...comps, name]) : undefined;
        if (fake && 'absent' in fake) qid = undefined;
        else if (fake) qid = this.o.qids.qid(goneStat(fake.gone));
        else {
          try {
            let st: BigIntStats;
            if (name === '..') st = fs.fstatSync(here(), { bigint: true });
            else if (i < r.names.length - 1) {
              // Only directories may be walked through; a symlink or file ends the walk here.
              const fd = share.openDir(here(), name);
              share.release(dirFd);
              dirFd = fd;
              depth = comps.length + 1;
              st = fs.fstatSync(fd, { bigint: true });
            } else st = fs.lstatSync(at(here(), name), { bigint: true });
            qid = this.o.qids.qid(st);
          } catch (err) {
            if (i === 0) throw err;
            break;
          }
        }
        if (!qid) {
          if (i === 0) throw new P9Error(E.ENOENT);
          break;
        }
        qids.push(qid);
        if (name !== '..') comps.push(name);
      }
    } finally {
      // The folder the walk ended in is kept for the requests on the new fid that follow.
      share.adopt(comps, depth, dirFd);
    }
    if (qids.length === r.names.length) this.addFid(r.newfid, share, comps, from.uid, from.actuator);
    const w = new ReplyWriter(9 + 13 * qids.length).u16(qids.length);
    for (const q of qids) w.qid(q);
    return w.finish(T.walk + 1, r.tag);
  }

  private stat(f: Fid): BigIntStats {
    return f.share.lstat(f.comps);
  }

  private getattr(tag: number, f: Fid): Buffer {
    const gone = f.actuator && f.fd === undefined ? this.o.actuator!.view(f.share, f.comps) : undefined;
    const st: StatLike = gone && 'gone' in gone ? goneStat(gone.gone) : f.fd !== undefined ? fs.fstatSync(f.fd, { bigint: true }) : this.stat(f);
    const w = new ReplyWriter(160);
    w.u64(P9_GETATTR_BASIC).qid(this.o.qids.qid(st));
    w.u32(this.shownMode(st)).u32(Number(st.uid)).u32(Number(st.gid));
    w.u64(st.nlink).u64(st.rdev).u64(st.size).u64(st.blksize).u64(st.blocks);
    for (const ns of [st.atimeNs, st.mtimeNs, st.ctimeNs, st.birthtimeNs]) w.u64(ns / 1_000_000_000n).u64(ns % 1_000_000_000n);
    w.u64(0n).u64(0n); // gen, data_version: not available from Node
    return w.finish(T.getattr + 1, tag);
  }

  /** The mode the guest sees (see the class comment). */
  private shownMode(st: StatLike): number {
    const mode = Number(st.mode);
    if (Number(st.uid) !== this.serverUid || (mode & 0o077) === 0 || st.isSymbolicLink()) return mode;
    return mode & 0o200 ? mode | 0o022 : mode;
  }

  private setattr(r: Extract<Request, { type: T.setattr }>): Buffer {
    const f = this.fid(r.fid);
    this.mayChange(f);
    if (f.actuator) return rempty(T.setattr, r.tag); // events.ts: the change happened on the host
    if (r.valid & P9_SETATTR.SIZE && r.size > MAX_EXACT) throw new P9Error(E.EFBIG, 'a size beyond 2^53 - 1');
    if (f.fd !== undefined) this.setattrOn(r, f.fd, fs.fstatSync(f.fd, { bigint: true }), f);
    else if (f.comps.length === 0) this.setattrOn(r, f.share.rootFd, fs.fstatSync(f.share.rootFd, { bigint: true }));
    else {
      f.share.withParent(f.comps, (dirFd, name) => {
        // A handle on the object itself (a symlink stays a symlink), so every change below acts on
        // what was looked up, whatever the name holds meanwhile.
        const h = fs.openSync(at(dirFd, name), O_PATH | C.O_NOFOLLOW);
        try {
          this.setattrOn(r, h, fs.fstatSync(h, { bigint: true }), undefined, at(dirFd, name));
        } finally {
          fs.closeSync(h);
        }
      });
    }
    this.changed(f.share, f.comps);
    return rempty(T.setattr, r.tag);
  }

  /**
   * Applies a Tsetattr to the object held by `h`: the open file of `open`, or else an O_PATH
   * handle, acted on through /proc/self/fd/h (chmod, truncate and utimes follow that magic link
   * to exactly the held object; fchmod and the like refuse O_PATH handles). `name` looks up a
   * symlink itself in its folder's handle (lutimes).
   */
  private setattrOn(r: Extract<Request, { type: T.setattr }>, h: number, st: BigIntStats, open?: Fid, name?: string): void {
    const link = st.isSymbolicLink();
    if (r.valid & P9_SETATTR.MODE && !link) {
      const mode = safeMode(r.mode, st.isDirectory());
      if (open) fs.fchmodSync(h, mode);
      else fs.chmodSync(held(h), mode);
    }
    // UID/GID: accepted and ignored (the host user cannot give files away; QEMU security_model=none).
    if (r.valid & P9_SETATTR.SIZE) {
      if (link) throw new P9Error(E.EINVAL, 'truncate a symlink');
      if (open?.writable) fs.ftruncateSync(h, Number(r.size));
      else if (st.isFile()) fs.truncateSync(held(h), Number(r.size));
      else throw new P9Error(st.isDirectory() ? E.EISDIR : E.EACCES, 'truncate of something not a regular file');
    }
    if (r.valid & (P9_SETATTR.ATIME | P9_SETATTR.MTIME)) {
      const now = Date.now() / 1000;
      const atime = r.valid & P9_SETATTR.ATIME ? (r.valid & P9_SETATTR.ATIME_SET ? seconds(r.atimeSec, r.atimeNsec) : now) : Number(st.atimeNs) / 1e9;
      const mtime = r.valid & P9_SETATTR.MTIME ? (r.valid & P9_SETATTR.MTIME_SET ? seconds(r.mtimeSec, r.mtimeNsec) : now) : Number(st.mtimeNs) / 1e9;
      if (open) fs.futimesSync(h, atime, mtime);
      else if (link) fs.lutimesSync(name!, atime, mtime);
      else fs.utimesSync(held(h), atime, mtime);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Open, create, read, write

  private lopen(tag: number, f: Fid, flags: number): Buffer {
    if (f.fd !== undefined || f.dir) throw new P9Error(E.EBADF, 'fid already open');
    const wantsWrite = (flags & (L.WRONLY | L.RDWR)) !== 0 || (flags & L.TRUNC) !== 0;
    if (f.actuator) {
      // events.ts: the actuator opens to make the guest emit IN_OPEN/IN_MODIFY/IN_CLOSE_WRITE;
      // its writes are not applied, so it needs no real file.
      const st = this.stat(f);
      if (st.isDirectory()) {
        if (wantsWrite) throw new P9Error(E.EISDIR);
        f.dir = { entries: [] };
      } else f.writable = wantsWrite;
      return new ReplyWriter(24).qid(this.o.qids.qid(st)).u32(0).finish(T.lopen + 1, tag);
    }
    if (wantsWrite) this.mayChange(f);
    if (f.comps.length === 0) {
      if (wantsWrite) throw new P9Error(E.EISDIR);
      f.dir = { entries: [] };
      return new ReplyWriter(24).qid(this.o.qids.qid(fs.fstatSync(f.share.rootFd, { bigint: true }))).u32(0).finish(T.lopen + 1, tag);
    }
    // Opened in its folder's handle without following a symlink or waiting on a FIFO; a folder is
    // opened read-only (with write flags the open fails: EISDIR) and listed at Treaddir.
    this.mayOpen();
    const { fd, st } = f.share.withParent(f.comps, (dirFd, name) => openExisting(at(dirFd, name), hostOpenFlags(flags)));
    if (st.isDirectory()) {
      fs.closeSync(fd);
      f.dir = { entries: [] };
    } else {
      this.held(f, fd);
      f.writable = wantsWrite;
    }
    return new ReplyWriter(24).qid(this.o.qids.qid(st)).u32(0).finish(T.lopen + 1, tag);
  }

  private lcreate(r: Extract<Request, { type: T.lcreate }>): Buffer {
    const f = this.fid(r.fid);
    if (f.fd !== undefined || f.dir) throw new P9Error(E.EBADF, 'fid already open');
    checkName(r.name);
    this.mayChange(f);
    const dir = f.comps;
    const comps = dir.concat(r.name);
    if (f.actuator) {
      // The host created it already: answer with what exists, create nothing.
      const qid = this.actuatorMade(f, comps);
      this.setComps(f, comps);
      f.writable = true;
      return new ReplyWriter(24).qid(qid).u32(0).finish(T.lcreate + 1, r.tag);
    }
    // The fid's longer name is charged first: over the budget, nothing is created.
    this.mayOpen();
    this.setComps(f, comps);
    let fd: number;
    try {
      fd = f.share.withDir(dir, (dirFd) => fs.openSync(at(dirFd, r.name), hostOpenFlags(r.flags) | C.O_CREAT | C.O_EXCL, safeMode(r.mode, false)));
    } catch (err) {
      this.setComps(f, dir, true);
      throw err;
    }
    this.held(f, fd);
    f.writable = true;
    this.changed(f.share, comps);
    return new ReplyWriter(24).qid(this.o.qids.qid(fs.fstatSync(fd, { bigint: true }))).u32(0).finish(T.lcreate + 1, r.tag);
  }

  /** The qid of what the host has at `comps` (the actuator's creates answer with it). */
  private actuatorQid(f: Fid, comps: readonly string[]): Qid {
    return this.o.qids.qid(f.share.lstat(comps));
  }

  /** An actuator create or mkdir of what the host made: its qid, and the guest's view of it ends. */
  private actuatorMade(f: Fid, comps: readonly string[]): Qid {
    const qid = this.actuatorQid(f, comps);
    this.o.actuator!.done(f.share, comps);
    return qid;
  }

  /**
   * Refuses changes to read-only shares. The actuator's requests change nothing on the host, so
   * they pass: that is how read-only shares get change events too (they are mounted read-write in
   * the guest, and this is where read-only is enforced).
   */
  private mayChange(f: Fid): void {
    if (!f.actuator) f.share.assertWritable();
  }

  private changed(share: Share, comps: readonly string[]): void {
    this.o.guestChanged?.(share, comps);
  }

  private read(tag: number, f: Fid, offset: bigint, count: number): Buffer {
    if (f.dir) throw new P9Error(E.EISDIR);
    if (f.fd === undefined) {
      if (f.actuator) return new ReplyWriter(11).u32(0).finish(T.read + 1, tag);
      throw new P9Error(E.EBADF, 'read from an unopened fid');
    }
    if (offset > MAX_POSITION) throw new P9Error(E.EINVAL, 'an offset beyond 2^63 - 1');
    const n = Math.min(count, this.msize - IOHDRSZ);
    const w = new ReplyWriter(11 + n);
    const at = w.length;
    w.u32(0);
    const { buf, off } = w.reserve(n);
    const got = fs.readSync(f.fd, buf, off, n, offset);
    w.truncate(off + got);
    buf.writeUInt32LE(got, at);
    return w.finish(T.read + 1, tag);
  }

  private write(tag: number, f: Fid, offset: bigint, data: Buffer): Buffer {
    if (f.dir) throw new P9Error(E.EISDIR);
    if (!f.writable) throw new P9Error(E.EBADF, 'fid not open for writing');
    this.mayChange(f);
    // Node writes at a number position: beyond 2^53 it would round the offset (and a bigint
    // position makes Node 20 write at the file's current position instead).
    if (offset + BigInt(data.length) > MAX_EXACT) throw new P9Error(E.EFBIG, 'a write beyond 2^53 - 1');
    // The actuator's writes only make the guest emit IN_MODIFY; the host file already changed.
    const n = f.actuator ? data.length : fs.writeSync(f.fd!, data, 0, data.length, Number(offset));
    if (!f.actuator) this.changed(f.share, f.comps);
    return new ReplyWriter(11).u32(n).finish(T.write + 1, tag);
  }

  private readdir(tag: number, f: Fid, offset: bigint, count: number): Buffer {
    if (!f.dir) throw new P9Error(E.ENOTDIR, 'readdir of an fid not opened as a directory');
    // Node has no telldir/seekdir: the listing is taken once, at offset 0, and offsets are indices.
    if (offset === 0n) f.dir.entries = this.listDir(f);
    const w = new ReplyWriter(Math.min(count, this.msize) + 11);
    const at = w.length;
    w.u32(0);
    const limit = Math.min(count, this.msize - IOHDRSZ);
    let used = 0;
    for (let i = Number(offset); i < f.dir.entries.length; i++) {
      const e = f.dir.entries[i]!;
      const size = direntSize(e.name);
      if (used + size > limit) break;
      w.qid(e.qid).u64(BigInt(i + 1)).u8(e.type).str(e.name);
      used += size;
    }
    const buf = w.finish(T.readdir + 1, tag);
    buf.writeUInt32LE(used, at);
    return buf;
  }

  private listDir(f: Fid): DirSnapshot['entries'] {
    const share = f.share;
    if (f.comps.length === 0) return this.listHeld(share.rootFd, share.rootFd);
    return share.withParent(f.comps, (parentFd, name) => {
      const fd = share.openDir(parentFd, name);
      try {
        return this.listHeld(fd, parentFd);
      } finally {
        fs.closeSync(fd);
      }
    });
  }

  /** The entries of the folder held by `dirFd`, each looked at in that handle (`parentFd`: ".."). */
  private listHeld(dirFd: number, parentFd: number): DirSnapshot['entries'] {
    const here = fs.fstatSync(dirFd, { bigint: true });
    const parent = parentFd === dirFd ? here : fs.fstatSync(parentFd, { bigint: true });
    const out: DirSnapshot['entries'] = [
      { name: '.', qid: this.o.qids.qid(here), type: DT_DIR },
      { name: '..', qid: this.o.qids.qid(parent), type: DT_DIR },
    ];
    // d_ino reaches userspace through the entry's qid, so it must be the real one (find, du).
    for (const { name, st } of listFolder(dirFd)) out.push({ name, qid: this.o.qids.qid(st), type: direntType(st) });
    return out;
  }

  private statfs(tag: number, f: Fid): Buffer {
    const s = fs.statfsSync(held(f.share.rootFd), { bigint: true });
    return new ReplyWriter(67)
      .u32(V9FS_MAGIC)
      .u32(Number(s.bsize))
      .u64(s.blocks)
      .u64(s.bfree)
      .u64(s.bavail)
      .u64(s.files)
      .u64(s.ffree)
      .u64(0n)
      .u32(255)
      .finish(T.statfs + 1, tag);
  }

  // -------------------------------------------------------------------------------------------
  // Namespace changes

  private mkdir(r: Extract<Request, { type: T.mkdir }>): Buffer {
    const d = this.fid(r.dfid);
    checkName(r.name);
    this.mayChange(d);
    const comps = [...d.comps, r.name];
    if (d.actuator) return new ReplyWriter(20).qid(this.actuatorMade(d, comps)).finish(T.mkdir + 1, r.tag);
    const st = d.share.withDir(d.comps, (dirFd) => {
      fs.mkdirSync(at(dirFd, r.name), safeMode(r.mode, true));
      return fs.lstatSync(at(dirFd, r.name), { bigint: true });
    });
    this.changed(d.share, comps);
    return new ReplyWriter(20).qid(this.o.qids.qid(st)).finish(T.mkdir + 1, r.tag);
  }

  private symlink(r: Extract<Request, { type: T.symlink }>): Buffer {
    const d = this.fid(r.fid);
    checkName(r.name);
    this.mayChange(d);
    if (r.target.includes('\0') || r.target === '') throw new P9Error(E.EINVAL, 'bad symlink target');
    const comps = [...d.comps, r.name];
    if (d.actuator) return new ReplyWriter(20).qid(this.actuatorQid(d, comps)).finish(T.symlink + 1, r.tag);
    // The target is stored as text and never followed by the server; the guest resolves it.
    const st = d.share.withDir(d.comps, (dirFd) => {
      fs.symlinkSync(r.target, at(dirFd, r.name));
      return fs.lstatSync(at(dirFd, r.name), { bigint: true });
    });
    this.changed(d.share, comps);
    return new ReplyWriter(20).qid(this.o.qids.qid(st)).finish(T.symlink + 1, r.tag);
  }

  private mknod(r: Extract<Request, { type: T.mknod }>): Buffer {
    const d = this.fid(r.dfid);
    checkName(r.name);
    this.mayChange(d);
    if (d.actuator) throw new P9Error(E.EPERM);
    // Device nodes, FIFOs and sockets are never made on the host (CVE-2023-2861 class); a regular
    // file (mknod S_IFREG) is an ordinary create.
    if ((r.mode & S_IFMT) !== S_IFREG && (r.mode & S_IFMT) !== 0) throw new P9Error(E.EPERM, 'special files cannot be created in a share');
    const fd = d.share.withDir(d.comps, (dirFd) => fs.openSync(at(dirFd, r.name), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, safeMode(r.mode, false)));
    let st: BigIntStats;
    try {
      st = fs.fstatSync(fd, { bigint: true });
    } finally {
      fs.closeSync(fd);
    }
    this.changed(d.share, [...d.comps, r.name]);
    return new ReplyWriter(20).qid(this.o.qids.qid(st)).finish(T.mknod + 1, r.tag);
  }

  private link(r: Extract<Request, { type: T.link }>): Buffer {
    const d = this.fid(r.dfid);
    const target = this.fid(r.fid);
    checkName(r.name);
    this.mayChange(d);
    if (target.share !== d.share) throw new P9Error(E.EXDEV);
    if (d.actuator) return rempty(T.link, r.tag);
    if (target.comps.length === 0) throw new P9Error(E.EPERM, 'a hard link to the share root');
    // link(2) does not follow a symlink target on Linux.
    target.share.withParent(target.comps, (fromFd, fromName) => d.share.withDir(d.comps, (toFd) => fs.linkSync(at(fromFd, fromName), at(toFd, r.name))));
    this.changed(d.share, [...d.comps, r.name]);
    return rempty(T.link, r.tag);
  }

  private rename(tag: number, f: Fid, d: Fid, name: string): Buffer {
    if (f.comps.length === 0) throw new P9Error(E.EBUSY, 'rename of the share root');
    this.moveEntry(d, f.comps.slice(0, -1), f.comps[f.comps.length - 1]!, d.comps, name, f.share);
    return rempty(T.rename, tag);
  }

  private renameat(r: Extract<Request, { type: T.renameat }>): Buffer {
    const od = this.fid(r.olddirfid);
    const nd = this.fid(r.newdirfid);
    checkName(r.oldname);
    if (od.share !== nd.share) throw new P9Error(E.EXDEV);
    this.moveEntry(od, od.comps, r.oldname, nd.comps, r.newname, od.share);
    return rempty(T.renameat, r.tag);
  }

  private moveEntry(by: Fid, fromDir: readonly string[], fromName: string, toDir: readonly string[], toName: string, share: Share): void {
    checkName(toName);
    this.mayChange(by);
    const from = [...fromDir, fromName];
    const to = [...toDir, toName];
    if (!by.actuator) {
      share.withDir(fromDir, (fromFd) => {
        // Within one folder (the usual rename) its handle serves both names.
        if (sameNames(fromDir, toDir)) fs.renameSync(at(fromFd, fromName), at(fromFd, toName));
        else share.withDir(toDir, (toFd) => fs.renameSync(at(fromFd, fromName), at(toFd, toName)));
      });
      this.changed(share, from);
      this.changed(share, to);
    } else {
      this.o.actuator!.done(share, from);
      this.o.actuator!.done(share, to);
    }
    // Fids under the old name follow it (QEMU v9fs_fix_fid_paths).
    for (const f of this.fids.values()) {
      // Charged, never refused: the rename happened (and the new names are shared strings).
      if (f.share === share && startsWith(f.comps, from)) this.setComps(f, to.concat(f.comps.slice(from.length)), true);
    }
  }

  private unlinkat(r: Extract<Request, { type: T.unlinkat }>): Buffer {
    const d = this.fid(r.dirfid);
    checkName(r.name);
    this.mayChange(d);
    if (!d.actuator) {
      // unlink(2) of a folder fails with EISDIR on Linux; neither call follows a symlink.
      d.share.withDir(d.comps, (dirFd) => (r.flags & AT_REMOVEDIR ? fs.rmdirSync : fs.unlinkSync)(at(dirFd, r.name)));
      this.changed(d.share, [...d.comps, r.name]);
    } else this.o.actuator!.done(d.share, [...d.comps, r.name]);
    return rempty(T.unlinkat, r.tag);
  }

  private removePath(f: Fid): void {
    if (f.comps.length === 0) throw new P9Error(E.EBUSY, 'remove of the share root');
    this.mayChange(f);
    if (f.actuator) {
      this.o.actuator!.done(f.share, f.comps);
      return;
    }
    f.share.withParent(f.comps, (dirFd, name) => {
      try {
        fs.unlinkSync(at(dirFd, name));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EISDIR') throw err;
        fs.rmdirSync(at(dirFd, name));
      }
    });
    this.changed(f.share, f.comps);
  }
}

const DT_DIR = 4;
const DT_REG = 8;
const DT_LNK = 10;
const DT_UNKNOWN = 0;

function direntType(st: BigIntStats): number {
  if (st.isDirectory()) return DT_DIR;
  if (st.isFile()) return DT_REG;
  if (st.isSymbolicLink()) return DT_LNK;
  return DT_UNKNOWN;
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function startsWith(a: readonly string[], prefix: readonly string[]): boolean {
  if (a.length < prefix.length) return false;
  return prefix.every((p, i) => a[i] === p);
}

function seconds(sec: bigint, nsec: bigint): number {
  return Number(sec) + Number(nsec) / 1e9;
}

/** Permission bits the guest may set: no set-uid, and set-gid only on directories. */
function safeMode(mode: number, isDir: boolean): number {
  let m = mode & 0o7777 & ~S_ISUID;
  if (!isDir) m &= ~S_ISGID;
  return m;
}

/** Linux open flags from the guest → the host's, for an existing file; never following symlinks. */
export function hostOpenFlags(flags: number): number {
  let out = (flags & L.RDWR) === L.RDWR ? C.O_RDWR : (flags & L.WRONLY) !== 0 ? C.O_WRONLY : C.O_RDONLY;
  if (flags & L.TRUNC) out |= C.O_TRUNC;
  if (flags & L.APPEND) out |= C.O_APPEND;
  if ((flags & L.SYNC) === L.SYNC) out |= C.O_SYNC;
  else if (flags & L.DSYNC) out |= C.O_DSYNC;
  return out | C.O_NOFOLLOW;
}

/**
 * Opens an existing file or folder: O_NOFOLLOW (a symlink fails with ELOOP), O_NONBLOCK (a FIFO
 * swapped in cannot block the server), then refuses anything that is neither a regular file nor a
 * folder (CVE-2023-2861: device nodes, FIFOs and sockets are never used on the guest's behalf).
 */
function openExisting(p: string, flags: number): { fd: number; st: BigIntStats } {
  const fd = fs.openSync(p, flags | C.O_NOFOLLOW | C.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.isFile() || st.isDirectory()) return { fd, st };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  fs.closeSync(fd);
  throw new P9Error(E.EACCES, 'not a regular file');
}
