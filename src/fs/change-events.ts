import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { E, errnoOf } from './errno.js';
import type { ActuatorHooks, GoneEntry } from './p9-session.js';
import type { Share } from './share.js';
import { REPLAYED_OPS, type ActOp, type ActRequest } from '../control/actuator.js';
import { isWithin } from '../util/paths.js';
import { TreeWatcher } from './tree-watcher.js';

/**
 * Host changes in bind-mounted shared folders, replayed in the guest (docs/files.md "Change
 * events"). Runs in the file server's worker, next to the sessions, because it needs them twice:
 * the guest's own changes are echoes to ignore (`guestChanged`), and the actuator's requests need
 * a view of the tree as the guest knew it before the change (`hooks.view`).
 *
 * Host side: a TreeWatcher (one inotify watch per folder) on each watched folder; only folders
 * beneath a share's real root are watched, looked up like the file server's requests (share.ts:
 * a bind-mount source that is a symlink, or lies behind one, is not watched); events are
 * collected for a short window, then each changed path is compared with a snapshot (device,
 * inode, type, size, mtime): a path that vanished and one that appeared with the same inode are a
 * rename; otherwise creates, deletes and modifications. Each becomes one actuator request, in
 * order (renames, deletes deepest first, creates shallowest first, then writes), sent one at a
 * time.
 */
/** Collects a burst of host events before acting (a save often touches a file several times). */
const WINDOW_MS = 50;
/** A burst that keeps going is cut after this long. */
const MAX_BURST_MS = 1000;
/** A path the guest itself changed this recently: its host events are echoes of that change. */
const ECHO_MS = 2000;
/** Entries a snapshot keeps per watched folder, and requests one burst may cause. */
const MAX_SNAPSHOT = 200_000;
const MAX_ACTS_PER_BURST = 500;
/** Folders watched per bind-mounted folder (one inotify watch each). */
const MAX_WATCHED_DIRS = 50_000;

export interface ChangeEventsLimits {
  /** Replays one burst may cause; the rest is dropped (names the host removed: ActOp 'unpin'). */
  maxActsPerBurst: number;
}

interface Entry extends GoneEntry {
  dir: boolean;
}

interface Root {
  share: Share;
  /** Relative to the share root. */
  rel: string[];
  watcher: TreeWatcher | undefined;
}

/** `size`: create and modify, the host's size now (ActRequest.size). */
type Op = { op: ActOp; share: Share; rel: string[]; to?: string[]; before?: Entry; size?: bigint };

export class ChangeEvents {
  readonly hooks: ActuatorHooks;
  private readonly roots = new Map<string, Root>();
  /** `${share id}\0${rel}` → what the guest last knew there. */
  private readonly snapshot = new Map<string, Entry>();
  private readonly dirty = new Map<string, { share: Share; rel: string[] }>();
  private readonly echoes = new Map<string, number>();
  private prunedAt = 0;
  /** What the actuator's current request must see (a new name absent, a gone name present). */
  private readonly views = new Map<string, { absent: true } | { gone: GoneEntry }>();
  /** Entries that vanished in the burst being replayed (folders above a replayed delete). */
  private burstGone = new Map<string, Entry>();
  private timer: NodeJS.Timeout | undefined;
  private burstStart = 0;
  private busy: Promise<void> = Promise.resolve();

  constructor(
    private readonly shares: readonly Share[],
    private readonly actuate: (req: ActRequest) => Promise<void>,
    private readonly log: (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void,
    private readonly limits: ChangeEventsLimits = { maxActsPerBurst: MAX_ACTS_PER_BURST },
    readonly actuatorUid = 2 ** 31 - 2,
  ) {
    this.hooks = {
      uid: actuatorUid,
      view: (share, comps) => this.views.get(key(share, comps)),
      done: (share, comps) => this.views.delete(key(share, comps)),
    };
  }

  /** The guest changed this path itself (not the actuator). */
  guestChanged(share: Share, comps: readonly string[]): void {
    const now = Date.now();
    this.echoes.set(key(share, comps), now);
    // Pruned at most once a second: a container writing thousands of files calls this per write.
    if (this.echoes.size > 10_000 && now - this.prunedAt >= 1000) {
      this.prunedAt = now;
      for (const [k, t] of this.echoes) if (t < now - ECHO_MS) this.echoes.delete(k);
    }
  }

  /** Watches exactly these guest paths (bind-mount sources inside shares). */
  setRoots(guestPaths: string[]): void {
    const wanted = new Map<string, { share: Share; rel: string[] }>();
    for (const p of guestPaths) {
      const hit = this.locate(p);
      if (hit) wanted.set(p, hit);
    }
    for (const [p, r] of this.roots) {
      if (!wanted.has(p)) {
        r.watcher?.close();
        this.roots.delete(p);
      }
    }
    for (const [p, w] of wanted) {
      if (this.roots.has(p)) continue;
      const root: Root = { ...w, watcher: undefined };
      this.roots.set(p, root);
      try {
        w.share.withDir(w.rel, () => undefined);
      } catch (err) {
        // The guest names the folder; on the host it may be a symlink to anywhere (/etc): only
        // folders beneath the share's real root are watched.
        if (errnoOf(err) === E.ELOOP) {
          this.log('warn', 'a bind-mounted shared folder is a symlink or lies behind one; it is not watched, and containers will not see host changes in it', { path: p });
          continue;
        }
      }
      this.scan(w.share, w.rel, p);
      root.watcher = new TreeWatcher(w.share, w.rel, {
        onChange: (rel) => this.touch(w.share, [...w.rel, ...rel]),
        onLimit: ({ dir, reason }) => this.log('warn', 'a shared folder is too large to watch entirely; containers will not hear host changes in the folders left out', { path: p, from: dir, reason }),
        maxDirs: MAX_WATCHED_DIRS,
      });
      if (root.watcher.size === 0) this.log('warn', 'cannot watch a shared folder; containers will not see host changes in it', { path: p });
    }
  }

  close(): void {
    for (const r of this.roots.values()) r.watcher?.close();
    this.roots.clear();
    if (this.timer) clearTimeout(this.timer);
  }

  /** Resolves when every queued change has been replayed (tests). */
  settled(): Promise<void> {
    return this.busy;
  }

  /**
   * Replays at once every host change already made, without the burst window, and resolves when
   * the guest has them: a container started or exec'd after this reads a cached share's new
   * contents (docs/files.md "Caching"). The kernel queues an inotify event when the change is
   * made; two turns of the event loop let libuv read what is queued before the burst is cut.
   * Never rejects: replay failures are logged where they happen.
   */
  async drain(): Promise<void> {
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.cutBurst();
    }
    await this.busy;
  }

  private locate(guestPath: string): { share: Share; rel: string[] } | undefined {
    for (const share of this.shares) {
      if (isWithin(guestPath, share.spec.path)) return { share, rel: guestPath.slice(share.spec.path.replace(/\/+$/, '').length).split('/').filter(Boolean) };
    }
    return undefined;
  }

  /** Records `rel` and everything below it in the snapshot (breadth first, bounded); `guestPath` names it in a warning. */
  private scan(share: Share, rel: string[], guestPath: string): void {
    const top = this.lstat(share, rel);
    if (!top) return;
    this.snapshot.set(key(share, rel), top);
    let n = 1;
    const queue: string[][] = top.dir ? [rel] : [];
    while (queue.length > 0 && n < MAX_SNAPSHOT) {
      const dir = queue.shift()!;
      for (const e of this.list(share, dir)) {
        const r = [...dir, e.name];
        this.snapshot.set(key(share, r), e.entry);
        n++;
        if (e.entry.dir) queue.push(r);
      }
    }
    if (queue.length > 0) this.log('warn', 'shared folder too large to follow entirely for change events', { path: guestPath, entries: n });
  }

  /** What is at `rel` now, looked up beneath the share's root without following symlinks. */
  private lstat(share: Share, rel: string[]): Entry | undefined {
    try {
      return entry(share.lstat(rel));
    } catch {
      return undefined;
    }
  }

  /** The entries of the folder `rel` now (none when it is gone or no longer a folder), by name. */
  private list(share: Share, rel: string[]): { name: string; entry: Entry }[] {
    try {
      return share.list(rel).map(({ name, st }) => ({ name, entry: entry(st) }));
    } catch {
      return [];
    }
  }

  /**
   * A burst ends once the host has been quiet for WINDOW_MS, or MAX_BURST_MS after it began: a
   * fixed window from the first event cut a loaded machine's `rm` of 600 files into bursts
   * smaller than the replay limit, each replayed in full.
   */
  private touch(share: Share, rel: string[]): void {
    this.dirty.set(key(share, rel), { share, rel });
    if (this.timer === undefined) this.burstStart = Date.now();
    else if (Date.now() - this.burstStart < MAX_BURST_MS) clearTimeout(this.timer);
    else return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.cutBurst();
    }, WINDOW_MS);
  }

  /** Queues the paths collected so far as one burst, after the bursts already queued. */
  private cutBurst(): void {
    const batch = [...this.dirty.values()];
    this.dirty.clear();
    this.busy = this.busy.then(() => this.flush(batch)).catch((err: Error) => this.log('warn', 'replaying host changes failed', { err: err.message }));
  }

  /** Classifies one burst of changed paths and replays it. */
  private async flush(batch: { share: Share; rel: string[] }[]): Promise<void> {
    let vanished: Op[] = [];
    let appeared: { share: Share; rel: string[]; now: Entry }[] = [];
    const modified: Op[] = [];
    const pins: Op[] = [];
    /** Folders in which the guest removed, replaced or renamed entries (their pins are swept). */
    const sweeps = new Map<string, Op>();
    const now = Date.now();
    for (const { share, rel } of batch) {
      const k = key(share, rel);
      const echo = this.echoes.get(k);
      const before = this.snapshot.get(k);
      const after = this.lstat(share, rel);
      if (after) this.snapshot.set(k, after);
      else this.snapshot.delete(k);
      /** Another entry (or none) stands at this name than the one the guest knew. */
      const replaced = !before || !after || after.ino !== before.ino || after.dev !== before.dev;
      if (echo !== undefined && now - echo < ECHO_MS) {
        // The guest made this change: nothing to replay. The agent's pins are kept true: a name
        // the guest removed, replaced or renamed away is swept in its folder (the agent closes
        // the pins of what is gone and pins what stands under those names again), and a folder
        // it made is pinned, after the sweeps. The host may give the new d of a quick `rm -rf d
        // && mkdir d` the old one's inode number, so d looks unchanged here: the sweep of d's
        // old entries still covers d, and the agent pins what stands there now.
        if (before && replaced && rel.length > 0) {
          const parent = rel.slice(0, -1);
          sweeps.set(key(share, parent), { op: 'sweep', share, rel: parent });
        }
        if (after?.dir && replaced) pins.push({ op: 'pin', share, rel });
        continue;
      }
      if (before && replaced) vanished.push({ op: before.dir ? 'rmdir' : 'delete', share, rel, before });
      if (after && replaced) appeared.push({ share, rel, now: after });
      else if (after && before && !after.dir && (after.size !== before.size || after.mtimeNs !== before.mtimeNs)) modified.push({ op: 'modify', share, rel, size: after.size });
    }
    const ops: Op[] = [];
    // A name that vanished and one that appeared with the same inode: a rename.
    const renames: Op[] = [];
    for (const a of [...appeared]) {
      const i = vanished.findIndex((v) => v.share === a.share && v.before!.ino === a.now.ino && v.before!.dev === a.now.dev);
      if (i < 0) continue;
      const v = vanished.splice(i, 1)[0]!;
      appeared.splice(appeared.indexOf(a), 1);
      renames.push({ op: 'rename', share: a.share, rel: v.rel, to: a.rel, before: v.before! });
    }
    // Entries that moved along with a renamed folder are covered by its rename (the watcher
    // may report them too, under one name or both).
    renames.sort((x, y) => x.rel.length - y.rel.length);
    const moved: { share: Share; from: string[]; to: string[] }[] = [];
    const movedWith = (share: Share, rel: string[], side: 'from' | 'to') => moved.find((m) => m.share === share && under(rel, m[side]));
    for (const r of renames) {
      const m = movedWith(r.share, r.rel, 'from');
      if (m && under(r.to!, m.to) && r.rel.slice(m.from.length).join('/') === r.to!.slice(m.to.length).join('/')) continue;
      ops.push(r);
      if (r.before!.dir) moved.push({ share: r.share, from: r.rel, to: r.to! });
    }
    const replaced = new Set(ops.map((r) => key(r.share, r.to!)));
    // A rename over an existing name (mv -f, an editor's atomic save) removes the old file itself.
    vanished = vanished.filter((v) => !replaced.has(key(v.share, v.rel)));
    // What happened inside a renamed folder is sorted out after its rename, by comparing the
    // moved subtree with the host (below): until then the snapshot keeps what the guest knows.
    vanished = vanished.filter((v) => {
      if (!movedWith(v.share, v.rel, 'from')) return true;
      this.snapshot.set(key(v.share, v.rel), v.before!);
      return false;
    });
    appeared = appeared.filter((a) => {
      if (!movedWith(a.share, a.rel, 'to')) return true;
      this.snapshot.delete(key(a.share, a.rel));
      return false;
    });
    for (const m of moved) this.rekey(m.share, m.from, m.to);
    this.forgetUnder(vanished, new Set(batch.map((b) => key(b.share, b.rel))));
    vanished.sort((x, y) => y.rel.length - x.rel.length);
    ops.push(...vanished);
    appeared.sort((x, y) => x.rel.length - y.rel.length);
    const created = new Set<string>();
    const create = (op: Op) => {
      const k = key(op.share, op.rel);
      if (created.has(k)) return; // found both as an event and as the entry of a new folder
      created.add(k);
      ops.push(op);
    };
    for (const a of appeared) {
      create(a.now.dir ? { op: 'mkdir', share: a.share, rel: a.rel } : { op: 'create', share: a.share, rel: a.rel, size: a.now.size });
      // A folder created with its contents (cp -r, git checkout): its entries appear too.
      if (a.now.dir) for (const child of this.children(a.share, a.rel)) create(child);
    }
    ops.push(...modified);
    const max = this.limits.maxActsPerBurst;
    if (ops.length > max) {
      this.log('warn', 'too many host changes at once; only the first are replayed in containers', { changes: ops.length, replayed: max });
      // Names the host removed that are not replayed would stay in the VM (the agent's pins
      // hold them; a cached share keeps them anyway): a container could not make them again
      // (mkdir: EEXIST). The VM lets go of them instead, without events (ActOp 'unpin').
      const dropped = ops.splice(max);
      const gone = dropped.flatMap((o) => (o.op === 'delete' || o.op === 'rmdir' ? [o.rel] : o.op === 'rename' ? [o.rel, o.to!] : []).map((rel): Op => ({ op: 'unpin', share: o.share, rel })));
      ops.push(...outermost(gone));
    }
    // The guest's own changes, after the host's: they only keep the agent's pins true (a few
    // sweeps, one per outermost folder; pins bounded like the replays).
    ops.push(...outermost([...sweeps.values()]), ...pins.slice(0, max));
    this.burstGone = new Map(vanished.map((v) => [key(v.share, v.rel), v.before!]));
    try {
      for (const op of ops) await this.replay(op);
    } finally {
      this.burstGone.clear();
    }
    // Changes inside a renamed folder in the same burst: the watcher reports some of them under
    // the old name until it watches the new one. Compare the whole moved subtree with the host,
    // as a burst of its own.
    const again = new Map<string, { share: Share; rel: string[] }>();
    for (const m of moved) for (const rel of this.subtree(m.share, m.to)) again.set(key(m.share, rel), { share: m.share, rel });
    if (again.size > 0) await this.flush([...again.values()]);
  }

  /**
   * Takes out of the snapshot what it still holds under removed folders (`rmdir` ops) that the
   * watcher did not report (a folder beyond its limit, events lost to an inotify queue overflow;
   * Node 20's recursive fs.watch, used until 2026-12-07, lost most of a removed folder's entries).
   * Those are not replayed one by one (each replay is a process in the VM, ~25 ms under TCG):
   * the folder's own rmdir makes the VM forget everything under it (and the agent close its pins
   * there). But the snapshot must forget them too, or a name made again later would count as
   * replaced (a delete of what the VM no longer has, then the create). One pass over the
   * snapshot, checking each entry's folders against the set of removed ones.
   */
  private forgetUnder(removed: Op[], known: Set<string>): void {
    const gone = new Set(removed.filter((v) => v.op === 'rmdir').map((v) => key(v.share, v.rel)));
    if (gone.size === 0) return;
    // Deleting the current entry while iterating a Map is safe.
    for (const k of this.snapshot.keys()) {
      if (known.has(k)) continue;
      const sep = k.indexOf('\0');
      const rel = k.slice(sep + 1).split('/');
      for (let n = rel.length - 1; n > 0; n--) {
        if (!gone.has(`${k.slice(0, sep)}\0${rel.slice(0, n).join('/')}`)) continue;
        this.snapshot.delete(k);
        break;
      }
    }
  }

  /** The paths under `rel` (not itself) in the snapshot or on the host, bounded like a scan. */
  private subtree(share: Share, rel: string[]): string[][] {
    const out = new Map<string, string[]>();
    const prefix = `${key(share, rel)}/`;
    for (const k of this.snapshot.keys()) {
      if (out.size >= this.limits.maxActsPerBurst * 4) break;
      if (k.startsWith(prefix)) out.set(k, [...rel, ...k.slice(prefix.length).split('/')]);
    }
    const queue = [rel];
    while (queue.length > 0 && out.size < this.limits.maxActsPerBurst * 4) {
      const dir = queue.shift()!;
      for (const e of this.list(share, dir)) {
        const r = [...dir, e.name];
        out.set(key(share, r), r);
        if (e.entry.dir) queue.push(r);
      }
    }
    return [...out.values()];
  }

  /** Creates for the entries of a new host folder (recorded in the snapshot as they are found). */
  private children(share: Share, rel: string[]): Op[] {
    const out: Op[] = [];
    for (const { name, entry: st } of this.list(share, rel).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const r = [...rel, name];
      this.snapshot.set(key(share, r), st);
      out.push(st.dir ? { op: 'mkdir', share, rel: r } : { op: 'create', share, rel: r, size: st.size });
      if (st.dir) out.push(...this.children(share, r));
    }
    return out;
  }

  /** Moves snapshot entries under a renamed folder to their new names. */
  private rekey(share: Share, from: string[], to: string[]): void {
    const prefix = key(share, from);
    for (const [k, e] of [...this.snapshot]) {
      if (k === prefix || k.startsWith(`${prefix}/`)) {
        this.snapshot.delete(k);
        this.snapshot.set(key(share, to) + k.slice(prefix.length), e);
      }
    }
  }

  private async replay(o: Op): Promise<void> {
    const views: string[] = [];
    const set = (rel: string[], v: { absent: true } | { gone: GoneEntry }) => {
      const k = key(o.share, rel);
      this.views.set(k, v);
      views.push(k);
    };
    // What the guest must see during the request: a new name absent, a gone name present.
    if (o.op === 'create' || o.op === 'mkdir') set(o.rel, { absent: true });
    if ((o.op === 'delete' || o.op === 'rmdir' || o.op === 'rename') && o.before) {
      set(o.rel, { gone: o.before });
      // Folders above it that the host removed too (rm -r): the guest still has them until their
      // own rmdir is replayed, and its lookups walk through them.
      for (let n = o.rel.length - 1; n > 0; n--) {
        const gone = this.burstGone.get(key(o.share, o.rel.slice(0, n)));
        if (gone) set(o.rel.slice(0, n), { gone });
      }
    }
    if (o.op === 'rename' && o.to) set(o.to, { absent: true });
    const guest = (rel: string[]) => path.posix.join(o.share.spec.path, ...rel);
    try {
      await this.actuate({
        op: o.op,
        ...(REPLAYED_OPS.includes(o.op) ? { uid: this.actuatorUid } : {}),
        path: guest(o.rel),
        ...(o.to ? { to: guest(o.to) } : {}),
        ...(o.size !== undefined ? { size: Number(o.size) } : {}),
        ...(o.op === 'unpin' && o.share.spec.cache ? { cached: true } : {}),
      });
    } catch (err) {
      this.log('debug', 'a host change was not replayed in the guest', { op: o.op, path: guest(o.rel), err: (err as Error).message });
    } finally {
      for (const k of views) this.views.delete(k);
    }
  }
}

/** The ops whose path is not inside another one's (a sweep or an unpin covers everything below it). */
function outermost(ops: Op[]): Op[] {
  ops.sort((x, y) => x.rel.length - y.rel.length);
  const kept: Op[] = [];
  for (const o of ops) if (!kept.some((k) => k.share === o.share && (under(o.rel, k.rel) || o.rel.join('/') === k.rel.join('/')))) kept.push(o);
  return kept;
}

/** `rel` is strictly inside the folder `base`. */
function under(rel: readonly string[], base: readonly string[]): boolean {
  return rel.length > base.length && base.every((c, i) => rel[i] === c);
}

function entry(st: BigIntStats): Entry {
  return { dev: st.dev, ino: st.ino, dir: st.isDirectory(), mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: st.size, mtimeNs: st.mtimeNs };
}

function key(share: Share, rel: readonly string[]): string {
  return `${share.spec.id}\0${rel.join('/')}`;
}
