import { BerthError } from '../util/errors.js';
import type { Accelerator } from './accel-probe.js';
import { watchLog } from './log-watch.js';

/** What QEMU prints on stderr when KVM_RUN fails; the guest is then paused for good. */
const KVM_INTERNAL_ERROR = /KVM internal error[^\n]*/;

/**
 * Watches QEMU's stderr log (`qemu.log`) while a hardware-accelerated guest boots. The probe boots
 * the kernel to its first userspace instruction, but a nested KVM can still fail later (seen
 * here: "emulation failure" on an instruction the L1 hypervisor cannot emulate). Without this
 * watch such a guest sits paused until the start timeout; with it, the start fails within a
 * fraction of a second with ACCEL_FAILED_AT_RUNTIME, and the controller can fall back to TCG.
 *
 * `failed` rejects (never resolves) once the failure is seen; `stop()` ends the watch.
 */
export function watchForAccelFailure(qemuLog: string, accelerator: Accelerator): { failed: Promise<never>; stop: () => void } {
  return watchLog(qemuLog, (text) => {
    const m = KVM_INTERNAL_ERROR.exec(text);
    if (!m) return undefined;
    return new BerthError('ACCEL_FAILED_AT_RUNTIME', `${accelerator.toUpperCase()} failed while the guest was running: QEMU reported "${m[0].trim()}" (typical of nested virtualization).`, {
      hint: 'Run `berth settings set accelerator tcg` to use emulation, or fix hardware virtualization on this host.',
    });
  });
}
