import { BerthError } from '../util/errors.js';
import { watchLog } from './log-watch.js';

/** The first line berth's initramfs prints on the console (guest/initramfs-init, `mark`). */
const FIRST_MARK = 'berth-boot: ';
/** How long a kernel may stay silent before the boot counts as hung (normally ~2 s, also on TCG). */
export const SILENT_BOOT_MS = 45_000;

/**
 * Watches the VM's console log (`vm.log`) for the first line of berth's initramfs. Seen once
 * (2026-12-07, in one of some forty boots that day, and not again in 30 boots in a row): a TCG
 * guest whose kernel printed nothing at all and never reached the initramfs, until the 180 s
 * start timeout. A kernel that is silent for `ms` counts as hung: `failed` rejects with
 * VM_SILENT_BOOT, and the controller boots the VM once more. `stop()` ends the watch; `failed`
 * never resolves.
 */
export function watchForSilentBoot(vmLog: string, ms: number = silentBootMs()): { failed: Promise<never>; stop: () => void } {
  const until = Date.now() + ms;
  return watchLog(vmLog, (text) => {
    if (text.includes(FIRST_MARK)) return 'done';
    if (Date.now() < until) return undefined;
    return new BerthError('VM_SILENT_BOOT', `The VM's kernel printed nothing for ${Math.round(ms / 1000)} s and did not reach berth's initramfs (it normally does within a few seconds, also under emulation).`, {
      hint: 'berth boots the VM once more by itself. If that hangs too, send the console log (`berth logs vm`, and vm.prev.log beside it) with a bug report.',
    });
  });
}

/** SILENT_BOOT_MS, or BERTH_SILENT_BOOT_SEC (whole seconds, at least 1) for tests. */
function silentBootMs(): number {
  const v = process.env.BERTH_SILENT_BOOT_SEC;
  const n = v === undefined ? NaN : Number(v);
  return Number.isInteger(n) && n >= 1 ? n * 1000 : SILENT_BOOT_MS;
}
