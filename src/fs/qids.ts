import type { BigIntStats } from 'node:fs';
import { QTDIR, QTFILE, QTSYMLINK, type Qid } from './p9-wire.js';

/**
 * qid.path for host files: unique and stable per (device, inode). The guest's v9fs derives inode
 * numbers from it and, on kernels with the 2024 "simplify iget" change, looks inodes up by it
 * alone, so two host files must never share one, and hard links must share it (dataplane.md §6.4,
 * QEMU's multidevs=remap). Devices get small indices in the order they are met; a device's inodes
 * below 2^48 map to (index << 48 | ino), larger ones to numbers allocated from a table (never a
 * hash of the path: that would break hard links and renames). qid.version stays 0: a changing
 * version makes cached-mode clients allocate new inodes and lose inotify watches.
 */
const INO_BITS = 48n;
const INO_MASK = (1n << INO_BITS) - 1n;
/** Allocated paths live above every (index << 48 | ino) value of the first 0xffff devices. */
const OVERFLOW_BASE = 0xffffn << INO_BITS;

export class QidMap {
  private readonly devices = new Map<bigint, bigint>();
  private readonly overflow = new Map<string, bigint>();
  private nextOverflow = OVERFLOW_BASE;

  path(dev: bigint, ino: bigint): bigint {
    let index = this.devices.get(dev);
    if (index === undefined) {
      index = BigInt(this.devices.size);
      this.devices.set(dev, index);
    }
    if (ino <= INO_MASK && index < 0xffffn) return (index << INO_BITS) | ino;
    const key = `${dev}:${ino}`;
    let p = this.overflow.get(key);
    if (p === undefined) {
      p = this.nextOverflow++;
      this.overflow.set(key, p);
    }
    return p;
  }

  qid(st: Pick<BigIntStats, 'dev' | 'ino' | 'isDirectory' | 'isSymbolicLink'>): Qid {
    return { type: qidType(st), version: 0, path: this.path(st.dev, st.ino) };
  }
}

export function qidType(st: { isDirectory(): boolean; isSymbolicLink(): boolean }): number {
  if (st.isDirectory()) return QTDIR;
  if (st.isSymbolicLink()) return QTSYMLINK;
  return QTFILE;
}
