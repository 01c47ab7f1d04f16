import fs from 'node:fs';
import { held, type Share } from './share.js';

/**
 * Watches a folder of a share and every folder below it, one non-recursive `fs.watch` per folder
 * (inotify on Linux: one watch each, all on the event loop's single inotify descriptor), and
 * reports each name an event is about, relative to the watched folder. Every folder is opened
 * beneath the share's root like the file server's requests (share.ts: one name at a time, never
 * through a symlink), and watched and listed through that handle (`/proc/self/fd/N`), so no
 * folder outside the share is ever watched: a bind-mount source that is a symlink to /etc, or a
 * folder swapped for one, is not followed.
 *
 * Why not `fs.watch(root, { recursive: true })`: on Linux, Node 20 builds that in JavaScript out of
 * the same per-folder watches and loses events on the way (measured 2026-12-07: 10 of 600 unlinks
 * in one folder reported, where a plain watch of that folder reported all 600; see also
 * nodejs/node#48437, #52018, #58868). A lost removal left the name in the VM (docs/files.md
 * "Change events").
 *
 * Contract: `onChange(rel)` is called for every name the kernel reported (created, removed,
 * renamed from or to, written, attributes changed), possibly more than once, and not for entries
 * made inside a new folder before its own watch was set up: the caller lists a new folder's
 * entries itself (ChangeEvents.children). Symbolic links are never followed: a watched folder
 * that is (or lies behind) one is not watched. At most `maxDirs` folders are watched; `onLimit`
 * is called once when a folder is left out (or when the kernel's watch limit is reached).
 */
export interface TreeWatcherOptions {
  onChange: (rel: string[]) => void;
  onLimit: (info: { dir: string; reason: string }) => void;
  maxDirs: number;
}

/** Folder handles a tree walk keeps open for the subfolders still to visit. */
const MAX_OPEN_PARENTS = 64;

/** A folder's handle, kept until `waiting` subfolders of it have been visited. */
interface Parent {
  fd: number;
  waiting: number;
}

export class TreeWatcher {
  /** Watched folders, by path relative to the root ('' is the root). */
  private readonly dirs = new Map<string, fs.FSWatcher>();
  private limited = false;
  private closed = false;

  /** Watches the folder `base` of `share` (its names below the share's root) and those below it. */
  constructor(
    private readonly share: Share,
    private readonly base: readonly string[],
    private readonly o: TreeWatcherOptions,
  ) {
    this.watchTree([]);
  }

  /** How many folders are watched now. */
  get size(): number {
    return this.dirs.size;
  }

  close(): void {
    this.closed = true;
    for (const w of this.dirs.values()) w.close();
    this.dirs.clear();
  }

  /** Watches `rel` and the folders below it (breadth first, bounded); not a folder (a symlink, a file, gone): nothing. */
  private watchTree(rel: string[]): void {
    // Each folder is opened in its parent's handle, which stays open until its last subfolder is
    // reached (at most MAX_OPEN_PARENTS at once; beyond, a folder is looked up from the share).
    const queue: { rel: string[]; parent: Parent | undefined }[] = [{ rel, parent: undefined }];
    let open = 0;
    while (queue.length > 0) {
      const { rel: dir, parent } = queue.shift()!;
      let fd: number | undefined;
      try {
        fd = parent ? this.share.openDir(parent.fd, dir[dir.length - 1]!) : this.share.acquire([...this.base, ...dir]);
      } catch {
        fd = undefined; // gone meanwhile, or no longer a folder
      }
      if (parent && --parent.waiting === 0) {
        this.share.release(parent.fd);
        open--;
      }
      if (fd === undefined) continue;
      let kept = false;
      try {
        if (!this.watchDir(dir, fd)) continue;
        let subfolders: string[];
        try {
          subfolders = fs
            .readdirSync(held(fd), { withFileTypes: true })
            .filter((e) => e.isDirectory())
            .map((e) => e.name);
        } catch {
          continue; // gone meanwhile
        }
        if (subfolders.length === 0) continue;
        const p = open < MAX_OPEN_PARENTS ? { fd, waiting: subfolders.length } : undefined;
        if (p) {
          kept = true;
          open++;
        }
        for (const name of subfolders) queue.push({ rel: [...dir, name], parent: p });
      } finally {
        if (!kept) this.share.release(fd);
      }
    }
  }

  /**
   * Starts watching one folder, held by `fd` (the watch stays on the folder itself once the
   * handle is closed); false if it is not watched (over a limit, or the kernel refused).
   */
  private watchDir(rel: string[], fd: number): boolean {
    const k = rel.join('/');
    if (this.closed) return false;
    if (this.dirs.has(k)) return true;
    if (this.dirs.size >= this.o.maxDirs) {
      this.limit(k, `more than ${this.o.maxDirs} folders`);
      return false;
    }
    let w: fs.FSWatcher;
    try {
      w = fs.watch(held(fd), { persistent: false }, (type, name) => this.onEvent(rel, type, name));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOSPC from inotify_add_watch: the kernel's fs.inotify.max_user_watches is reached.
      if (code === 'ENOSPC') this.limit(k, 'the kernel limit of inotify watches (fs.inotify.max_user_watches) is reached');
      return false;
    }
    // The folder was removed (the watch ends) or is no longer readable: its parent's event
    // tells the rest.
    w.on('error', () => this.unwatch(rel));
    this.dirs.set(k, w);
    return true;
  }

  private onEvent(dir: string[], type: string, name: string | Buffer | null): void {
    if (this.closed) return;
    if (typeof name !== 'string' || name === '') {
      this.o.onChange(dir);
      return;
    }
    const rel = [...dir, name];
    this.o.onChange(rel);
    // Only a 'rename' (created, removed, moved) can change which folders stand below the root;
    // a 'change' (written, attributes) cannot, and a big write makes thousands of them.
    if (type !== 'rename') return;
    // Whatever was watched under this name goes: the folder may have been removed, or removed
    // and made again (`rm -rf d && mkdir d`), when the old watch, keyed by the name, would
    // keep watching the deleted folder and the new one none. A folder there now is watched
    // (anything else, a symlink included, is not).
    this.unwatch(rel);
    this.watchTree(rel);
  }

  /** Stops watching `rel` and every folder below it (removed, or replaced by a file). */
  private unwatch(rel: string[]): void {
    const k = rel.join('/');
    if (!this.dirs.has(k)) return; // folders are watched top down: nothing below it either
    for (const [d, w] of this.dirs) {
      if (d === k || (k === '' ? true : d.startsWith(`${k}/`))) {
        w.close();
        this.dirs.delete(d);
      }
    }
  }

  private limit(dir: string, reason: string): void {
    if (this.limited) return;
    this.limited = true;
    this.o.onLimit({ dir, reason });
  }
}
