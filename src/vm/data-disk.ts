import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { BerthError, errnoCode } from '../util/errors.js';

const run = promisify(execFile);

export interface DiskState {
  path: string;
  virtualGiB: number;
  /** Bytes the sparse file really occupies on the host. */
  allocatedBytes: number;
  created: boolean;
  /** Set when the disk was grown or a requested shrink was refused. */
  note?: string;
}

interface QemuImgInfo {
  format?: string;
  'virtual-size'?: number;
  'actual-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
}

/**
 * Makes sure the data disk exists as a sparse qcow2 of (at least) `sizeGiB`.
 *
 * The disk is created empty; the guest formats it on first boot. An existing disk must be a qcow2
 * without a backing file: a backing-file path inside an image would let the image make QEMU read an
 * arbitrary host file (Lima GHSA-f7qw-jj9c-rpq9 / CVE-2023-32684). Growing is allowed (the guest
 * runs resize2fs); shrinking would destroy data and is refused with a note.
 * Must only be called while no QEMU has the disk open.
 */
export async function ensureDataDisk(qemuImg: string, file: string, sizeGiB: number): Promise<DiskState> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  let exists = true;
  try {
    await fs.access(file);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw diskError(`Cannot access the data disk ${file}.`, err);
    exists = false;
  }
  if (!exists) {
    try {
      await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', file, `${sizeGiB}G`]);
    } catch (err) {
      throw diskError(`Cannot create the data disk ${file} (${sizeGiB} GiB, sparse).`, err, 'Check free space and permissions in your berth home.');
    }
    const info = await inspect(qemuImg, file);
    return { path: file, virtualGiB: sizeGiB, allocatedBytes: info['actual-size'] ?? 0, created: true };
  }
  const info = await inspect(qemuImg, file);
  if (info.format !== 'qcow2') {
    throw diskError(`The data disk ${file} is not a qcow2 image (format: ${info.format ?? 'unknown'}).`, undefined, 'Move the file away and start again to get a new, empty disk.');
  }
  if (info['backing-filename'] || info['full-backing-filename']) {
    throw diskError(`The data disk ${file} refers to a backing file (${info['backing-filename']}); berth refuses such images because they can make QEMU read other host files.`, undefined, 'Move the file away and start again to get a new, empty disk.');
  }
  const currentGiB = Math.round((info['virtual-size'] ?? 0) / 1024 ** 3);
  let note: string | undefined;
  if (sizeGiB > currentGiB) {
    try {
      await run(qemuImg, ['resize', '-q', '-f', 'qcow2', file, `${sizeGiB}G`]);
      note = `data disk grown from ${currentGiB} GiB to ${sizeGiB} GiB`;
    } catch (err) {
      throw diskError(`Cannot grow the data disk ${file} to ${sizeGiB} GiB.`, err);
    }
  } else if (sizeGiB < currentGiB) {
    note = `diskGiB is ${sizeGiB} but the data disk is already ${currentGiB} GiB; shrinking would lose data, so the disk keeps its size`;
  }
  return { path: file, virtualGiB: Math.max(sizeGiB, currentGiB), allocatedBytes: info['actual-size'] ?? 0, created: false, ...(note ? { note } : {}) };
}

async function inspect(qemuImg: string, file: string): Promise<QemuImgInfo> {
  try {
    // No -U: if another QEMU holds the image lock, failing here is the right answer.
    const { stdout } = await run(qemuImg, ['info', '--output=json', file]);
    return JSON.parse(stdout) as QemuImgInfo;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    if (/lock/i.test(stderr)) {
      throw diskError(`The data disk ${file} is in use by another QEMU process.`, err, 'Another berth VM (or a stray QEMU) uses this berth home; stop it first (`berth stop`, or find it with `pgrep -a qemu`).');
    }
    throw diskError(`Cannot read the data disk ${file}: ${stderr.trim() || String(err)}.`, err);
  }
}

function diskError(message: string, cause: unknown, hint = 'See the message above; your data disk was not modified.'): BerthError {
  return new BerthError('DISK_FAILED', message, { cause, hint });
}
