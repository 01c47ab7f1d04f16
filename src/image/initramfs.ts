import fs from 'node:fs/promises';
import { BerthError } from '../util/errors.js';
import { writeCpio, type CpioEntry } from './cpio.js';
import { moduleName, readModuleUncompressed } from './modules.js';

/**
 * The initramfs: just enough for guest/initramfs-init to load the boot modules, find the root
 * image and switch to it.
 *
 *   /init                      guest/initramfs-init (0755)
 *   /bin/busybox               from busybox-static (the only program; /init calls it by path)
 *   /dev /proc /sys /run       mount points
 *   /newroot /lower /upper     overlay root: tmpfs upper over the squashfs lower
 *   /lib/modules/boot/NN-name.ko   boot modules, NN = load order, so `for m in .../*.ko` loads
 *                              dependencies first without modprobe or modules.dep
 */
export const INITRAMFS_DIRS = ['bin', 'dev', 'proc', 'sys', 'run', 'newroot', 'lower', 'upper', 'lib', 'lib/modules', 'lib/modules/boot'];

export interface InitramfsInputs {
  initScript: string;
  busybox: string;
  /** Module files in load order (dependencies first). */
  modules: string[];
}

/** The file name of the `i`-th boot module: two-digit index (three past 99) so glob order is load order. */
export function bootModuleName(i: number, modulePath: string, count: number): string {
  return `${String(i).padStart(count > 100 ? 3 : 2, '0')}-${moduleName(modulePath)}.ko`;
}

export async function buildInitramfs(inputs: InitramfsInputs, signal?: AbortSignal): Promise<Buffer> {
  const entries: CpioEntry[] = INITRAMFS_DIRS.map((d) => ({ kind: 'dir', path: d, mode: 0o755 }));
  entries.push({ kind: 'file', path: 'init', mode: 0o755, data: await readInput(inputs.initScript, 'the initramfs init script') });
  entries.push({ kind: 'file', path: 'bin/busybox', mode: 0o755, data: await readInput(inputs.busybox, 'busybox (from busybox-static)') });
  for (const [i, m] of inputs.modules.entries()) {
    entries.push({ kind: 'file', path: `lib/modules/boot/${bootModuleName(i, m, inputs.modules.length)}`, mode: 0o644, data: await readModuleUncompressed(m, signal) });
  }
  return writeCpio(entries);
}

async function readInput(file: string, what: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "initramfs": cannot read ${what} at ${file}.`, {
      hint: 'Check that busybox-static is in packages.base of guest/manifest.json and that guest/initramfs-init exists.',
      cause: err,
    });
  }
}
