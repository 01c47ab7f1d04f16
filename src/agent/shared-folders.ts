import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../util/log.js';
import type { ActOp, ActRequest } from '../control/actuator.js';
import { isWithin } from '../util/paths.js';
import { SHARE_FAILURES_FILE, parseShareFailuresFile, type ShareFailure } from '../control/share-mounts.js';
import type { VerifyResult } from '../control/agent-api.js';

/** Held by init until the boot's share mounts are over (guest/rootfs/usr/lib/berth/init). */
const CONTAINERD_GATE = '/run/berth/containerd-gate';

/**
 * The guest side of change events (docs/files.md "Change events").
 *
 * Pins: with v9fs `cache=mmap` or `none` (Linux 6.1) every lookup of a file or directory that nobody holds
 * makes a new inode, so a watcher in a container (which watches inodes) and a later operation on
 * the same path meet different inodes, and the watcher hears nothing. One held open (O_PATH) keeps
 * its dentry, and every lookup then finds that dentry and its inode. So the agent holds every
 * directory and file (bounded) under the folders that containers bind-mount, before the
 * containers start, and what the actuator creates, before the actuator lets go of it.
 *
 * Actuator: every host change is replayed on the shared mount by a short-lived busybox process
 * running as the file server's actuator uid (create, truncate to the host's size, unlink, rename, ...). The file server
 * recognises that uid's requests (v9fs access=user attaches per uid), applies none of them (the
 * host already changed) and answers as if it had, so the guest kernel emits real inotify events
 * to every watcher. The process reaches the directory through a descriptor the agent (root) opened
 * and handed down (/proc/self/fd/3/NAME): it needs no permission on the folders above, only on the
 * directory itself, which the server shows writable for non-private folders of the host user.
 */
/** Directories pinned under one root at most (a tree like node_modules can hold many thousands). */
const MAX_PINS_PER_ROOT = 20_000;
/** Files pinned under one root at most, and how many lookups run at once while pinning. */
const MAX_FILE_PINS_PER_ROOT = 20_000;
const PIN_CONCURRENCY = 8;
/** How long a verified bind source stays held: longer than a start takes under TCG. */
const VERIFY_HOLD_MS = 120_000;
/** Folders whose files are not pinned (their folders are). */
const UNWATCHED_FILES = /\/(node_modules|\.git)(\/|$)/;

export class SharedFolders {
  /** Pinned directory → its open fd. */
  private readonly pins = new Map<string, number>();
  /** Pinned roots → how many containers asked for them. */
  private readonly roots = new Map<string, number>();
  constructor(private readonly log: Logger) {}

  get pinnedCount(): number {
    return this.pins.size;
  }

  /** Whether `p` (a folder or file) is held open under that name now. */
  holds(p: string): boolean {
    return this.pins.has(p);
  }

  /**
   * Holds open every directory under `root`, and its regular files (a watcher may watch a file
   * itself: chokidar, and so nodemon and Vite, watch each file), bounded; files under
   * node_modules and .git are left out (watchers ignore them, and there can be hundreds of
   * thousands). Returns how many are pinned under it.
   */
  async pin(root: string): Promise<{ pinned: number; files: number; truncated: boolean }> {
    this.roots.set(root, (this.roots.get(root) ?? 0) + 1);
    let pinned = 0;
    const files: string[] = [];
    let truncated = false;
    const queue = [root];
    while (queue.length > 0) {
      if (pinned >= MAX_PINS_PER_ROOT) {
        truncated = true;
        break;
      }
      const dir = queue.shift()!;
      if (!this.pins.has(dir)) {
        try {
          this.pins.set(dir, openDir(dir));
        } catch {
          continue; // gone, or not a directory any more
        }
      }
      pinned++;
      let entries: fs.Dirent[];
      try {
        entries = await fs.promises.readdir(dir, { withFileTypes: true });
      } catch {
        continue;
      }
      const skipFiles = UNWATCHED_FILES.test(dir);
      for (const e of entries) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) queue.push(p);
        else if (e.isFile() && !skipFiles && !this.pins.has(p)) {
          if (files.length < MAX_FILE_PINS_PER_ROOT) files.push(p);
          else truncated = true;
        }
      }
    }
    const pinnedFiles = await this.pinFiles(files);
    if (truncated) this.log.warn('too many folders or files to pin under a shared folder; changes to the ones left out may not reach watchers', { root, folders: pinned, files: pinnedFiles });
    return { pinned, files: pinnedFiles, truncated };
  }

  /** Pins files, several lookups at a time (each is a 9P round trip; the mount pipelines them). */
  private async pinFiles(files: string[]): Promise<number> {
    let next = 0;
    let pinned = 0;
    const worker = async () => {
      while (next < files.length) {
        const p = files[next++]!;
        const fd = await new Promise<number | undefined>((resolve) => fs.open(p, O_PATH | O_NOFOLLOW, (err, fd) => resolve(err ? undefined : fd)));
        if (fd === undefined) continue;
        if (this.pins.has(p)) fs.closeSync(fd);
        else {
          this.pins.set(p, fd);
          pinned++;
        }
      }
    };
    await Promise.all(Array.from({ length: PIN_CONCURRENCY }, worker));
    return pinned;
  }

  /** Whether a container's request holds `root` pinned now. */
  isPinned(root: string): boolean {
    return this.roots.has(root);
  }

  /** Drops one request for `root`; its directories are closed when no pinned root covers them. */
  unpin(root: string): void {
    const n = (this.roots.get(root) ?? 0) - 1;
    if (n > 0) {
      this.roots.set(root, n);
      return;
    }
    this.roots.delete(root);
    for (const [dir, fd] of this.pins) {
      if (!isWithin(dir, root)) continue;
      if ([...this.roots.keys()].some((r) => isWithin(dir, r))) continue;
      fs.closeSync(fd);
      this.pins.delete(dir);
    }
  }

  /** Replays one host change in the guest through the actuator; a new directory is pinned too. */
  async act(req: ActRequest): Promise<void> {
    if (req.op === 'rename' && !req.to) throw new Error('rename without a target');
    const op = req.op;
    if (op === 'pin' || op === 'sweep' || op === 'unpin') {
      this.follow(req);
      return;
    }
    // The directories are handed to the actuator as descriptors: the pinned ones when there are
    // (opening a directory makes watchers in containers hear IN_OPEN/IN_CLOSE_NOWRITE noise).
    const dirs = [path.dirname(req.path), ...(req.to ? [path.dirname(req.to)] : [])];
    const opened: number[] = [];
    try {
      const fds = dirs.map((d) => {
        const pinned = this.pins.get(d);
        if (pinned !== undefined) return pinned;
        const fd = openDir(d);
        opened.push(fd);
        return fd;
      });
      await runActuator(SCRIPTS[op], req, fds, (pid) => {
        // The actuator holds the new folder as its working directory: pin that very dentry (a
        // lookup of our own could come after the guest dropped it and make another inode).
        if (!this.covered(req.path) || this.pins.has(req.path)) return;
        if (op === 'mkdir') this.pins.set(req.path, openDir(`/proc/${pid}/cwd`));
        if (op === 'create' && !UNWATCHED_FILES.test(path.dirname(req.path))) this.pins.set(req.path, fs.openSync(`/proc/${pid}/fd/5`, O_PATH));
      });
    } finally {
      for (const fd of opened) fs.closeSync(fd);
      this.follow(req);
    }
  }

  /**
   * Keeps the pins true after a replayed change. Also when the replay failed: a folder's mkdir
   * fails when a watcher in a container (inotifywait -r scanning a new folder) already looked it
   * up, and the folder must be pinned all the same.
   */
  private follow(req: ActRequest): void {
    const covered = (p: string) => this.covered(p);
    if (req.op === 'sweep') this.sweep(req.path);
    if (req.op === 'unpin') {
      this.forget(req.path);
      // cache=loose keeps names nobody holds; the ones just let go of are unused now (2: the
      // VM's unused names and inodes, not its page cache).
      if (req.cached) fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
    }
    if ((req.op === 'mkdir' || req.op === 'pin') && covered(req.path)) {
      // A pin under this name may be of a folder the guest deleted since (made again, it can
      // even have the old inode number on the host, so the host cannot tell).
      const now = this.whereNow(req.path);
      if (now !== undefined && now !== req.path && realpathOf(req.path) !== now) this.sweep(req.path);
      if (!this.pins.has(req.path)) {
        try {
          this.pins.set(req.path, openDir(req.path));
        } catch {
          // removed again meanwhile
        }
      }
    }
    if (req.op === 'rmdir' || req.op === 'delete') this.forget(req.path);
    // A renamed directory keeps its pins (the descriptors follow it), under its new name.
    if (req.op === 'rename' && req.to) this.move(req.path, req.to, covered(req.to));
  }

  private covered(p: string): boolean {
    return [...this.roots.keys()].some((root) => isWithin(p, root));
  }

  /**
   * What the VM resolves a bind source to, just before a container starts (docs/docker-proxy.md
   * "Symbolic links in bind sources"): the path is opened as runc will open it (following links),
   * and the kernel's own path of what it got is reported. The handle is held for a while, so the
   * dentry stays in use and runc's lookup of the same path meets it: v9fs does not revalidate a
   * dentry in use (cache=mmap has no d_revalidate; cache=loose only for attributes it marked
   * stale), so a host that swaps the folder for a link after this check does not change what is
   * mounted.
   */
  verify(p: string): VerifyResult {
    let fd: number;
    try {
      fd = fs.openSync(p, O_PATH);
    } catch {
      // A link to nothing in the VM (a host path outside the shares) is still a link.
      try {
        if (fs.lstatSync(p).isSymbolicLink()) return { path: p, resolved: fs.readlinkSync(p), kind: 'symlink' };
      } catch {
        // gone
      }
      return { path: p, resolved: null, kind: 'missing' };
    }
    try {
      const st = fs.fstatSync(fd);
      const resolved = fs.readlinkSync(`/proc/self/fd/${fd}`);
      const held = fd;
      setTimeout(() => fs.closeSync(held), VERIFY_HOLD_MS).unref();
      fd = -1;
      return { path: p, resolved, kind: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other' };
    } finally {
      if (fd >= 0) fs.closeSync(fd);
    }
  }

  close(): void {
    for (const fd of this.pins.values()) fs.closeSync(fd);
    this.pins.clear();
    this.roots.clear();
  }

  private move(from: string, to: string, keep: boolean): void {
    // A rename over an existing name (mv -f) replaced it: its pins go.
    if (!isWithin(from, to)) this.forget(to);
    for (const [p, fd] of [...this.pins]) {
      if (!isWithin(p, from)) continue;
      this.pins.delete(p);
      if (keep) this.pins.set(to + p.slice(from.length), fd);
      else fs.closeSync(fd);
    }
  }

  /**
   * The guest itself removed, replaced or renamed entries in `dir` (ActOp 'sweep'): each pin
   * under it asks the guest kernel where its dentry is now (/proc/self/fd/N names it, with
   * " (deleted)" once it was unlinked). A pin of a deleted entry is closed; one that moved is
   * kept under its new name while a pinned root covers it. Without this, the pins of `rm -rf
   * dist` were held for ever, and a `dist` made again was never pinned (its name looked pinned).
   */
  private sweep(dir: string): void {
    const lost: string[] = [];
    for (const [p, fd] of [...this.pins]) {
      if (!isWithin(p, dir)) continue;
      const now = whereNow(fd);
      if (now === p) continue;
      // A root given through a symlink (`-v /share/link/sub:/src`): the kernel names the real path.
      if (now !== undefined && !now.endsWith(DELETED) && realpathOf(p) === now) continue;
      this.pins.delete(p);
      const gone = now === undefined || (now.endsWith(DELETED) && !fs.existsSync(now));
      if (gone || !this.covered(now!) || this.pins.has(now!)) {
        fs.closeSync(fd);
        lost.push(p);
      } else this.pins.set(now!, fd);
    }
    // What stands under a lost name again (`rm -rf d && mkdir d`, a file written anew) is
    // pinned as it is now, parents first: the host may not report it (see ChangeEvents.flush).
    lost.sort((a, b) => a.length - b.length);
    for (const p of lost) {
      if (this.pins.has(p) || !this.covered(p)) continue;
      try {
        const st = fs.lstatSync(p);
        if (st.isDirectory()) this.pins.set(p, openDir(p));
        else if (st.isFile() && !UNWATCHED_FILES.test(path.dirname(p))) this.pins.set(p, fs.openSync(p, O_PATH | O_NOFOLLOW));
      } catch {
        // not there (any more)
      }
    }
  }

  /** Where the entry pinned under the name `p` is now (undefined: not pinned). */
  private whereNow(p: string): string | undefined {
    const fd = this.pins.get(p);
    return fd === undefined ? undefined : whereNow(fd);
  }

  /** Closes pins of a directory that went away (and everything under it). */
  private forget(dir: string): void {
    for (const [p, fd] of this.pins) {
      if (isWithin(p, dir)) {
        fs.closeSync(fd);
        this.pins.delete(p);
      }
    }
  }
}

/** What the actuator's shell does; $1 and $2 are names in the directories on fds 3 and 4. */
const SCRIPTS: Record<Exclude<ActOp, 'pin' | 'sweep' | 'unpin'>, string> = {
  // noclobber: the create is O_CREAT|O_EXCL, so the guest emits IN_CREATE; with content ($2, the
  // host's size, not 0), a truncate to that size follows (IN_MODIFY), as a host `echo hi > file`
  // makes. The new file stays open on fd 5 until the agent has pinned it, like a new folder below.
  create: 'set -C; exec 5> "/proc/self/fd/3/$1" || exit 1; if [ "${2:-0}" != 0 ]; then truncate -s "$2" /proc/self/fd/5 || exit 1; fi; echo held; read _ || :',
  // The new folder is held as the working directory until the agent has pinned it (a line on
  // stdout says it is held; the agent then closes stdin). Why: see SharedFolders.act.
  mkdir: 'mkdir "/proc/self/fd/3/$1" && cd "/proc/self/fd/3/$1" && echo held && { read _ || :; }',
  // A truncate to the host's size (IN_MODIFY; a cached share takes the size from it), then an
  // open for writing that writes nothing and drops the file's cached pages (coreutils dd,
  // oflag=nocache with count=0 is posix_fadvise DONTNEED on the whole file), then the close
  // (IN_OPEN, IN_CLOSE_WRITE). Nothing reaches the host: the server fakes all of it.
  modify: 'truncate -s "$2" "/proc/self/fd/3/$1" && exec /usr/bin/dd of="/proc/self/fd/3/$1" oflag=nocache conv=notrunc,nocreat count=0 status=none',
  delete: 'unlink "/proc/self/fd/3/$1"',
  rmdir: 'rmdir "/proc/self/fd/3/$1"',
  rename: 'mv -f "/proc/self/fd/3/$1" "/proc/self/fd/4/$2"',
};

/**
 * O_PATH: a handle that pins the directory's dentry and can be a base for lookups
 * (/proc/self/fd/N/name), without reading it. Linux's value on x86-64 and arm64 (Node has no
 * constant for it).
 */
const O_PATH = 0o10000000;
const O_NOFOLLOW = fs.constants.O_NOFOLLOW;
/** What Linux appends to the path of an unlinked dentry in /proc/PID/fd (d_path). */
const DELETED = ' (deleted)';

/** The path of a descriptor's entry now, as the kernel names it (" (deleted)" appended once unlinked). */
function whereNow(fd: number): string | undefined {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}

function realpathOf(p: string): string | undefined {
  try {
    return fs.realpathSync(p);
  } catch {
    return undefined;
  }
}

function openDir(dir: string): number {
  return fs.openSync(dir, O_PATH | fs.constants.O_DIRECTORY);
}

/** Runs one of SCRIPTS with the directories `fds` (of the path, then of `to`) at fds 3 and 4. */
function runActuator(script: string, req: ActRequest, fds: number[], onHeld: (pid: number) => void): Promise<void> {
  const second = req.to ? [path.basename(req.to)] : req.size !== undefined ? [String(req.size)] : [];
  const args = ['sh', '-c', script, 'actuator', path.basename(req.path), ...second];
  if (req.uid === undefined) return Promise.reject(new Error(`fs.act ${req.op} needs the actuator's uid`));
  const uid = req.uid;
  return new Promise<void>((resolve, reject) => {
    const child = spawn('/bin/busybox', args, { uid, gid: uid, stdio: ['pipe', 'pipe', 'pipe', ...fds], cwd: '/' });
    child.stdin!.on('error', () => {}); // the script may exit without reading it
    child.stdout!.once('data', () => {
      try {
        onHeld(child.pid!);
      } catch {
        // the folder is pinned by path afterwards (follow)
      }
      child.stdin!.end();
    });
    child.stdout!.resume();
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      child.stdin!.destroy();
      if (code === 0) resolve();
      else reject(new Error(`${req.op} ${req.path}: ${err.trim() || `exit ${code}`}`));
    });
  });
}

/**
 * Mounts every shared folder again (`mount-shares --remount`): after the host daemon restarted,
 * its file server is new and the old mounts' connections are dead. Resolves with the shares that
 * failed (none: every share is mounted again).
 */
/**
 * Mounts every share again with fresh single-use tickets from the host (id → ticket); they reach
 * mount-shares in its environment, which containers cannot read (docs/files.md "Security").
 */
export function remountShares(tickets: Record<string, string>): Promise<ShareFailure[]> {
  const list = Object.entries(tickets)
    .filter(([id, t]) => /^[A-Za-z0-9_-]{1,32}$/.test(id) && /^[0-9a-f]{16,128}$/.test(t))
    .map(([id, t]) => `${id}=${t}`)
    .join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/lib/berth/mount-shares', ['--remount'], { stdio: 'ignore', env: { ...process.env, BERTH_TICKETS: list } });
    child.on('error', reject);
    child.on('exit', () => resolve(readShareFailures()));
  });
}

/** The shares that mount-shares could not mount in its last run (its failures file). */
export function readShareFailures(): ShareFailure[] {
  try {
    return parseShareFailuresFile(fs.readFileSync(SHARE_FAILURES_FILE, 'utf8'));
  } catch {
    return []; // no file: no share list, or mount-shares has not run
  }
}

/**
 * Resolves once the boot's share mounts are over: init removes containerd's gate file after
 * mount-shares (guest init). Rejects after `timeoutMs`.
 */
export async function bootMountsDone(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (fs.existsSync(CONTAINERD_GATE)) {
    if (Date.now() > deadline) throw Object.assign(new Error(`the shared folders were still being mounted after ${timeoutMs} ms`), { code: 'TIMEOUT' });
    await new Promise((r) => setTimeout(r, 100));
  }
}
