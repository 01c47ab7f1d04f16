import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BerthError } from '../util/errors.js';

const run = promisify(execFile);

/**
 * Internal qcow2 snapshots of the data disk (`qemu-img snapshot`), taken before an engine upgrade
 * so `berth engine rollback` can bring back the data as the older engine left it. Internal
 * snapshots share unchanged clusters with the live disk: taking one costs a refcount update, and
 * it holds on only to what the new engine rewrites. Only one is kept (the last upgrade's).
 * Every function here must run while no QEMU has the disk open.
 */
export async function createSnapshot(qemuImg: string, disk: string, name: string): Promise<void> {
  await qemuImgSnapshot(qemuImg, ['-c', name, disk], `take the snapshot ${name} of the data disk`);
}

export async function applySnapshot(qemuImg: string, disk: string, name: string): Promise<void> {
  await qemuImgSnapshot(qemuImg, ['-a', name, disk], `restore the snapshot ${name} of the data disk`);
}

export async function deleteSnapshot(qemuImg: string, disk: string, name: string): Promise<void> {
  await qemuImgSnapshot(qemuImg, ['-d', name, disk], `delete the snapshot ${name} of the data disk`);
}

/** The names of the disk's internal snapshots (from `qemu-img info --output=json`). */
export async function listSnapshots(qemuImg: string, disk: string): Promise<string[]> {
  let stdout: string;
  try {
    ({ stdout } = await run(qemuImg, ['info', '--force-share', '--output=json', disk], { maxBuffer: 4 << 20 }));
  } catch (err) {
    throw new BerthError('DISK_FAILED', `Cannot read the snapshots of the data disk ${disk}.`, { cause: err, hint: 'Check that the file exists and is readable.' });
  }
  const info = JSON.parse(stdout) as { snapshots?: Array<{ name?: unknown }> };
  return (info.snapshots ?? []).map((s) => s.name).filter((n): n is string => typeof n === 'string');
}

async function qemuImgSnapshot(qemuImg: string, args: string[], what: string): Promise<void> {
  try {
    await run(qemuImg, ['snapshot', ...args]);
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim().split('\n').slice(-3).join(' ');
    throw new BerthError('DISK_FAILED', `Cannot ${what}${stderr ? `: ${stderr}` : ''}.`, {
      cause: err,
      hint: 'Make sure the VM is stopped (`berth stop`) and the disk has free space on the host, then try again.',
    });
  }
}
