import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { BerthError, errnoCode } from '../../util/errors.js';
import type { DataStore, DataStoreState } from '../driver.js';

const run = promisify(execFile);
const GiB = 1024 ** 3;

/**
 * The namespace backend's data store: a sparse file holding ext4 (formatted by the launcher when
 * blank), loop-mounted in the namespace. Grown by extending the file (the launcher runs
 * resize2fs); never shrunk. Snapshots for the engine switch are copies beside it
 * (`cp --reflink=auto --sparse=always`: instant where the host's filesystem shares extents, a
 * sparse copy elsewhere). Every method must run while no namespace has the store mounted.
 */
export class RawDataStore implements DataStore {
  readonly engineStamp: string;

  constructor(readonly path: string) {
    this.engineStamp = `${path}.engine.json`;
  }

  async ensure(sizeGiB: number): Promise<DataStoreState> {
    await fs.mkdir(path.dirname(this.path), { recursive: true, mode: 0o700 });
    const want = sizeGiB * GiB;
    let created = false;
    let note: string | undefined;
    let st = await fs.lstat(this.path).catch((err: unknown) => {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw new BerthError('DISK_FAILED', `Cannot read the data store ${this.path}.`, { cause: err });
    });
    if (st && !st.isFile()) throw new BerthError('DISK_FAILED', `The data store ${this.path} is not a regular file; berth does not follow links there.`, { hint: 'Move it away; berth makes a new one.' });
    if (!st) {
      const fh = await fs.open(this.path, 'wx', 0o600);
      await fh.truncate(want);
      await fh.close();
      created = true;
    } else if (st.size < want) {
      await fs.truncate(this.path, want);
      note = `The data store grew from ${Math.round(st.size / GiB)} GiB to ${sizeGiB} GiB.`;
    } else if (st.size > want) {
      note = `The data store stays at ${Math.round(st.size / GiB)} GiB: berth does not shrink it (diskGiB is ${sizeGiB}).`;
    }
    st = await fs.stat(this.path);
    return { virtualGiB: Math.round(st.size / GiB), allocatedBytes: st.blocks * 512, created, ...(note ? { note } : {}) };
  }

  async createSnapshot(name: string): Promise<void> {
    await copySparse(this.path, this.snapshotPath(name), `take the snapshot ${name} of the data store`);
  }

  async applySnapshot(name: string): Promise<void> {
    await copySparse(this.snapshotPath(name), this.path, `restore the snapshot ${name} of the data store`);
  }

  async deleteSnapshot(name: string): Promise<void> {
    await fs.rm(this.snapshotPath(name), { force: true });
  }

  async listSnapshots(): Promise<string[]> {
    const prefix = `${path.basename(this.path)}.snapshot.`;
    const names = await fs.readdir(path.dirname(this.path)).catch(() => [] as string[]);
    return names.filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
  }

  private snapshotPath(name: string): string {
    if (!/^[\w.-]{1,128}$/.test(name)) throw new BerthError('USAGE', `Not a snapshot name: ${JSON.stringify(name)}.`);
    return `${this.path}.snapshot.${name}`;
  }
}

async function copySparse(from: string, to: string, what: string): Promise<void> {
  try {
    await run('cp', ['--reflink=auto', '--sparse=always', '--', from, `${to}.tmp`]);
    await fs.rename(`${to}.tmp`, to);
  } catch (err) {
    await fs.rm(`${to}.tmp`, { force: true });
    throw new BerthError('DISK_FAILED', `Cannot ${what}.`, { cause: err, hint: 'Make sure berth is stopped and the disk has free space on the host, then try again.' });
  }
}
