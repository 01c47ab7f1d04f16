/**
 * A writer for the "newc" cpio format that the Linux kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst):
 *
 *   header   "070701" + 13 fields of 8 hex digits: ino mode uid gid nlink mtime filesize
 *            devmajor devminor rdevmajor rdevminor namesize check      (110 bytes)
 *   name     NUL-terminated, then NUL padding to a multiple of 4 (counted from the header start)
 *   data     filesize bytes (a symlink's data is its target), NUL padding to a multiple of 4
 *   ...      and a final entry named "TRAILER!!!".
 *
 * Every entry is owned by uid/gid 0 and gets the given mtime (default 0, so the same inputs give
 * the same bytes). The archive is built in memory from buffers: no root privileges are needed and
 * nothing about the build host's files (owners, times) leaks into it. A missing parent directory
 * is added (mode 0755) before its first child, because the kernel does not create parents.
 */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; data: Buffer }
  | { kind: 'symlink'; path: string; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const MAGIC = '070701';
const TRAILER = 'TRAILER!!!';

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio: field value ${n} does not fit 32 bits`);
  return n.toString(16).padStart(8, '0');
}

/** Archive path: no leading '/', no '.', '..' or empty segments. */
function normalize(p: string): string {
  const name = p.replace(/^\/+/, '').replace(/\/+$/, '');
  const parts = name.split('/');
  if (!name || parts.some((s) => s === '' || s === '.' || s === '..')) throw new Error(`cpio: invalid path ${JSON.stringify(p)}`);
  return name;
}

export function writeCpio(entries: CpioEntry[], opts: { mtime?: number } = {}): Buffer {
  const mtime = opts.mtime ?? 0;
  const parts: Buffer[] = [];
  let offset = 0;
  let ino = 1;
  const written = new Set<string>();

  const pad = () => {
    const n = (4 - (offset % 4)) % 4;
    if (n) {
      parts.push(Buffer.alloc(n));
      offset += n;
    }
  };
  const add = (name: string, mode: number, nlink: number, data: Buffer) => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const fields = [ino++, mode, 0, 0, nlink, mtime, data.length, 0, 0, 0, 0, nameBuf.length, 0];
    const header = Buffer.from(MAGIC + fields.map(hex8).join(''), 'ascii');
    parts.push(header, nameBuf);
    offset += header.length + nameBuf.length;
    pad();
    if (data.length) {
      parts.push(data);
      offset += data.length;
      pad();
    }
  };
  const ensureParents = (name: string) => {
    const segs = name.split('/');
    for (let i = 1; i < segs.length; i++) {
      const dir = segs.slice(0, i).join('/');
      if (!written.has(dir)) {
        written.add(dir);
        add(dir, S_IFDIR | 0o755, 2, Buffer.alloc(0));
      }
    }
  };

  for (const e of entries) {
    const name = normalize(e.path);
    if (name === TRAILER) throw new Error(`cpio: ${TRAILER} is reserved`);
    if (written.has(name)) {
      if (e.kind === 'dir') continue; // already there (maybe added as a parent); keep the first
      throw new Error(`cpio: duplicate entry ${name}`);
    }
    ensureParents(name);
    written.add(name);
    if (e.kind === 'dir') add(name, S_IFDIR | (e.mode & 0o7777), 2, Buffer.alloc(0));
    else if (e.kind === 'file') add(name, S_IFREG | (e.mode & 0o7777), 1, e.data);
    else add(name, S_IFLNK | 0o777, 1, Buffer.from(e.target, 'utf8'));
  }
  add(TRAILER, 0, 1, Buffer.alloc(0));
  return Buffer.concat(parts);
}
