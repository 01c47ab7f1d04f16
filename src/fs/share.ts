import fs from 'node:fs';
import path from 'node:path';
import { E, P9Error } from './errno.js';

/**
 * A shared host folder and the path rules that keep every guest request inside it (docs/files.md
 * "Security"). Node has no openat/O_PATH, so fids are share-relative name lists and every request
 * turns them into a host path again, checking on the way that no directory in between is a
 * symlink (CVE-2016-9602: the server must never follow a symlink the guest walks through; the
 * client resolves symlinks itself). Final components are never followed: lstat, O_NOFOLLOW,
 * lutimes. The server is single-threaded and uses synchronous calls, so no guest request can
 * change the tree between a check and the use that follows it (CVE-2018-19364 class races).
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

export class Share {
  /** The folder's real path (symlinks in the configured path resolved once, at start). */
  readonly root: string;

  constructor(readonly spec: ShareSpec) {
    this.root = fs.realpathSync.native(spec.path);
    if (!fs.statSync(this.root).isDirectory()) throw new Error(`${spec.path} is not a directory`);
  }

  get readOnly(): boolean {
    return this.spec.readOnly;
  }

  /**
   * The host path of the directory `comps`, after checking that it is inside the share with no
   * symlink on the way (its real path is exactly the joined path). ENOENT/ENOTDIR as the host says.
   */
  dir(comps: readonly string[]): string {
    const p = comps.length === 0 ? this.root : path.join(this.root, ...comps);
    const real = fs.realpathSync.native(p);
    if (real !== p) throw new P9Error(E.ELOOP, `${p} resolves to ${real}: a symlink inside the path`);
    return p;
  }

  /** The host path of `comps` without following its last component (its parent is checked). */
  path(comps: readonly string[]): string {
    if (comps.length === 0) return this.root;
    return path.join(this.dir(comps.slice(0, -1)), comps[comps.length - 1]!);
  }

  assertWritable(): void {
    if (this.spec.readOnly) throw new P9Error(E.EROFS, `share ${this.spec.path} is read-only`);
  }
}

/** A name the guest may create or walk: one component, no separators, no NUL, no dot names. */
export function checkName(name: string): void {
  if (name === '' || name === '.' || name === '..') throw new P9Error(E.EINVAL, `invalid name ${JSON.stringify(name)}`);
  if (name.includes('/') || name.includes('\0')) throw new P9Error(E.EINVAL, 'a name with "/" or NUL');
  if (Buffer.byteLength(name) > MAX_NAME) throw new P9Error(E.ENAMETOOLONG, 'name longer than 255 bytes');
}
