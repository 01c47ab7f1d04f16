import fs, { constants as C, type BigIntStats } from 'node:fs';
import { E, P9Error } from './errno.js';

/**
 * A shared host folder and the path rules that keep every guest request inside it (docs/files.md
 * "Security"). The share holds a handle on its real root (O_PATH), and every request resolves its
 * names beneath that handle one at a time, never following a symlink: a folder is opened
 * (O_PATH|O_DIRECTORY|O_NOFOLLOW) as `/proc/self/fd/<handle of its parent>/<name>`, where the
 * kernel jumps to the held folder through the /proc magic link and looks up only that one name.
 * So a folder swapped for a symlink by the host or by another guest request, at any moment, is
 * refused (ELOOP) or was already held as the real folder: nothing outside the share is reached
 * (CVE-2016-9602; QEMU's local backend walks with openat(O_NOFOLLOW) the same way). Final names
 * are acted on in their parent's handle with the no-follow form of each call (lstat, O_NOFOLLOW,
 * rename, unlink, lutimes), or through a handle on the object itself. Node has no openat, hence
 * /proc/self/fd (Linux hosts only).
 */
export interface ShareSpec {
  /** Stable id, named in the guest's mount (aname). */
  id: string;
  /** The host folder as the user named it (the guest mounts it at this path). */
  path: string;
  readOnly: boolean;
  /** The guest caches this share (cache=loose), kept fresh by change events (docs/files.md "Caching"). */
  cache?: boolean;
}

export const MAX_NAME = 255;

/** Linux's O_PATH: a handle that names an object without opening it for I/O (no device open, no FIFO wait). */
export const O_PATH = 0o10000000;
const DIR_HANDLE = O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW;
/** Folder handles a share keeps between requests (Share.acquire). */
const CACHED_HANDLES = 32;
/** What /proc/self/fd shows after the path of a deleted object. */
const DELETED = ' (deleted)';

/** The path that looks up `name` in the folder held by `dirFd`, and nothing else. */
export function at(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

/** The path of the object held by `fd` itself (chmod, truncate, readdir, statfs through a handle). */
export function held(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

export class Share {
  /** The folder's real path (symlinks in the configured path resolved once, at start): for messages and logs. */
  readonly root: string;
  /** An O_PATH handle on the real root, held for the life of the share; every name is resolved beneath it. */
  readonly rootFd: number;
  /** The root's path as the kernel shows a handle's (/proc/self/fd), "" for "/". */
  private readonly rootLink: string;
  /**
   * Handles on folders two or more names deep, by their names joined with "/", least recently used
   * first: a deep path is not opened again name by name for every request (each name costs an
   * open and a close: 8 deep, lookups ran at half the speed). They were opened like any other,
   * one name at a time, and one is used only while the kernel says its folder is still at that
   * path (isAt), so renames and removals on the host or by the guest need no invalidation.
   */
  private readonly cache = new Map<string, number>();
  private readonly cached = new Set<number>();
  /** Handles given out by acquire() and not yet released, with how many times: never closed meanwhile. */
  private readonly borrowed = new Map<number, number>();
  private closed = false;

  constructor(readonly spec: ShareSpec) {
    this.root = fs.realpathSync.native(spec.path);
    try {
      this.rootFd = fs.openSync(this.root, DIR_HANDLE);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw new Error(`${spec.path} is not a directory`);
      throw err;
    }
    const link = fs.readlinkSync(held(this.rootFd));
    this.rootLink = link === '/' ? '' : link;
  }

  get readOnly(): boolean {
    return this.spec.readOnly;
  }

  /** Lets go of every handle (the file server stops; tests). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.cached) fs.closeSync(fd);
    this.cache.clear();
    this.cached.clear();
    fs.closeSync(this.rootFd);
  }

  /**
   * Opens the folder `name` in the folder held by `dirFd` (a handle; the caller closes it). A
   * symlink is never followed: ELOOP for one, ENOTDIR for anything else that is not a folder,
   * ENOENT when nothing has that name.
   */
  openDir(dirFd: number, name: string): number {
    try {
      return fs.openSync(at(dirFd, name), DIR_HANDLE);
    } catch (err) {
      // O_PATH|O_NOFOLLOW would hold a symlink itself; with O_DIRECTORY one fails as "not a folder".
      if ((err as NodeJS.ErrnoException).code === 'ENOTDIR' && isSymlink(at(dirFd, name))) throw new P9Error(E.ELOOP, `${name}: a symlink inside the path`);
      throw err;
    }
  }

  /**
   * A handle on the folder `comps[0..depth)` (all of them by default; the root's own for none):
   * from the deepest cached folder on the way that is still where its names say, or from the
   * root, opened one name at a time without following symlinks. Give it back with release();
   * until then it stays open whatever happens to the cache.
   */
  acquire(comps: readonly string[], depth = comps.length): number {
    if (depth === 0) return this.rootFd;
    const keys: string[] = [];
    for (let k = 0; k < depth; k++) keys.push(k === 0 ? comps[0]! : `${keys[k - 1]}/${comps[k]}`);
    let fd = this.rootFd;
    let from = 0;
    for (let k = depth; k >= 2 && from === 0; k--) {
      const key = keys[k - 1]!;
      const h = this.cache.get(key);
      if (h === undefined) continue;
      if (this.isAt(h, key)) {
        // Most recently used last.
        this.cache.delete(key);
        this.cache.set(key, h);
        fd = h;
        from = k;
      } else this.drop(key, h);
    }
    try {
      for (let k = from; k < depth; k++) {
        const next = this.openDir(fd, comps[k]!);
        this.closeFresh(fd);
        fd = next;
      }
    } catch (err) {
      this.closeFresh(fd);
      throw err;
    }
    if (from < depth) this.keep(keys[depth - 1]!, fd);
    this.borrowed.set(fd, (this.borrowed.get(fd) ?? 0) + 1);
    return fd;
  }

  /**
   * Gives back a handle from acquire(), or one the caller opened with openDir: closed unless the
   * share keeps it or it is still borrowed elsewhere.
   */
  release(fd: number): void {
    if (fd === this.rootFd) return;
    const n = this.borrowed.get(fd);
    if (n !== undefined && n > 1) {
      this.borrowed.set(fd, n - 1);
      return;
    }
    this.borrowed.delete(fd);
    if (!this.cached.has(fd)) fs.closeSync(fd);
  }

  /**
   * Gives back the handle on the folder `comps[0..depth)` that a walk ends on: one the walk opened
   * name by name itself is kept for later requests like those acquire() opens.
   */
  adopt(comps: readonly string[], depth: number, fd: number): void {
    if (fd !== this.rootFd && !this.borrowed.has(fd) && !this.cached.has(fd) && depth >= 2) this.keep(comps.slice(0, depth).join('/'), fd);
    this.release(fd);
  }

  /** Runs `fn` with a handle on the folder `comps[0..depth)` (acquire, then release). */
  withDir<R>(comps: readonly string[], fn: (dirFd: number) => R, depth = comps.length): R {
    const fd = this.acquire(comps, depth);
    try {
      return fn(fd);
    } finally {
      this.release(fd);
    }
  }

  /** Runs `fn` with a handle on the folder holding the last of `comps` (not empty) and that name. */
  withParent<R>(comps: readonly string[], fn: (dirFd: number, name: string) => R): R {
    if (comps.length === 0) throw new Error('the share root has no parent in the share');
    return this.withDir(comps, (dirFd) => fn(dirFd, comps[comps.length - 1]!), comps.length - 1);
  }

  /** The attributes of `comps` itself (a symlink is not followed). */
  lstat(comps: readonly string[]): BigIntStats {
    if (comps.length === 0) return fs.fstatSync(this.rootFd, { bigint: true });
    return this.withParent(comps, (dirFd, name) => fs.lstatSync(at(dirFd, name), { bigint: true }));
  }

  /** The entries of the folder `comps` with their attributes (listFolder). */
  list(comps: readonly string[]): FolderEntry[] {
    return this.withDir(comps, listFolder);
  }

  assertWritable(): void {
    if (this.spec.readOnly) throw new P9Error(E.EROFS, `share ${this.spec.path} is read-only`);
  }

  /** Keeps a handle on the folder at `key` (two or more names deep), letting go of the least recently used beyond the bound. */
  private keep(key: string, fd: number): void {
    // A name that ends like a deleted folder's path could pass isAt for a deleted folder.
    if (!key.includes('/') || key.endsWith(DELETED)) return;
    const old = this.cache.get(key);
    if (old !== undefined && old !== fd) this.drop(key, old);
    this.cache.delete(key);
    this.cache.set(key, fd);
    this.cached.add(fd);
    if (this.cache.size > CACHED_HANDLES) {
      const [oldestKey, oldest] = this.cache.entries().next().value as [string, number];
      this.drop(oldestKey, oldest);
    }
  }

  /** Forgets a cached handle; closed now unless it is borrowed (then at its release). */
  private drop(key: string, fd: number): void {
    this.cache.delete(key);
    this.cached.delete(fd);
    if (!this.borrowed.has(fd)) fs.closeSync(fd);
  }

  /** Closes a handle acquire() opened on the way and does not give out (not the root, not kept, not borrowed). */
  private closeFresh(fd: number): void {
    if (fd !== this.rootFd && !this.cached.has(fd) && !this.borrowed.has(fd)) fs.closeSync(fd);
  }

  /**
   * The folder held by `fd` is now at `key` beneath the root (the kernel's own path of the handle,
   * which follows every rename and says " (deleted)" after a removal). A folder moved out of the
   * share, renamed, or replaced by a symlink fails this and is opened again from the root.
   */
  private isAt(fd: number, key: string): boolean {
    try {
      return fs.readlinkSync(held(fd)) === `${this.rootLink}/${key}`;
    } catch {
      return false;
    }
  }
}

/** An entry of a folder and its attributes (lstat: a symlink is not followed). */
export interface FolderEntry {
  name: string;
  st: BigIntStats;
}

/**
 * The entries of the folder held by `dirFd`: listed through its handle and each looked at in it,
 * so no entry of another folder is ever listed or looked at. An entry gone since the listing is
 * left out.
 */
export function listFolder(dirFd: number): FolderEntry[] {
  const out: FolderEntry[] = [];
  for (const name of fs.readdirSync(held(dirFd))) {
    try {
      out.push({ name, st: fs.lstatSync(at(dirFd, name), { bigint: true }) });
    } catch {
      // gone since the listing
    }
  }
  return out;
}

function isSymlink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** A name the guest may create or walk: one component, no separators, no NUL, no dot names. */
export function checkName(name: string): void {
  if (name === '' || name === '.' || name === '..') throw new P9Error(E.EINVAL, `invalid name ${JSON.stringify(name)}`);
  if (name.includes('/') || name.includes('\0')) throw new P9Error(E.EINVAL, 'a name with "/" or NUL');
  if (Buffer.byteLength(name) > MAX_NAME) throw new P9Error(E.ENAMETOOLONG, 'name longer than 255 bytes');
}
