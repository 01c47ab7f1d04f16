import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { cpuModelFor, kernelArgs, machineArgs } from './qemu-args.js';
import type { VerdictCache } from './accel-verdicts.js';

/**
 * Chooses the accelerator by *running* a guest, not by looking at device nodes (docs/vm.md).
 *
 * Why: /dev/kvm can exist and still be useless. Seen on the machines this project runs on:
 * - nested hosts where KVM_CREATE_VM succeeds but the first KVM_RUN dies with "KVM internal
 *   error. Suberror: 1" and QEMU then sits paused forever;
 * - nested hosts where a trivial guest runs, `-cpu host` aborts QEMU ("failed to set MSR 0x10a"),
 *   and with another CPU model the kernel crawls (10 s to its first lines) and then dies with the
 *   same internal error on a `lock cmpxchg16b`.
 * Only booting the real kernel, with the real machine and CPU model, to its first userspace
 * instruction tells the truth. That boot is the probe for hardware accelerators; its verdict is
 * cached per host boot (accel-verdicts.ts), so only the first start after a host reboot pays it.
 *
 * TCG needs no such proof (it is QEMU itself); a firmware-sized guest checks that QEMU can run one.
 */

export type Accelerator = 'kvm' | 'hvf' | 'whpx' | 'tcg';

export interface ProbeAttempt {
  accelerator: Accelerator;
  ok: boolean;
  ms: number;
  reason?: string;
  /** The verdict came from the cache of an earlier probe on this host boot. */
  cached?: boolean;
}

export interface ProbeResult {
  accelerator: Accelerator;
  /** Set when berth fell back to TCG: says why the hardware accelerator was not used. */
  warning?: string;
  attempts: ProbeAttempt[];
  /** Cache key of the chosen hardware accelerator's verdict (to revoke it if it fails later). */
  verdictKey?: string;
}

/** The guest the kernel probe boots: the image's kernel and initramfs. */
export interface KernelProbeTarget {
  vmlinux: string;
  initramfs: string;
  /** The image's kernel command line; the probe adds `berth.probe`. */
  cmdline: string;
  /** Identifies the kernel in the verdict cache. */
  imageKey: string;
  cpus: number;
  cpuModel?: string;
}

export type Prober = (qemu: string, accel: Accelerator, kernel: KernelProbeTarget | undefined) => Promise<ProbeAttempt>;

const FIRMWARE_EXIT = 99;
const FIRMWARE_TIMEOUT_MS = 5_000;
/**
 * How long a hardware-accelerated kernel may take to reach init. With working KVM it takes well
 * under a second; TCG needs ~2.5 s on a 2-core host. An accelerator slower than that is no gain.
 */
export const KERNEL_PROBE_TIMEOUT_MS = 8_000;
/** What guest/initramfs-init prints (and then powers off) when booted with `berth.probe`. */
export const PROBE_MARKER = 'berth-probe: init reached';

/** The firmware probe: `mov al,0x31; out 0xf4,al; hlt; jmp $` at the x86 reset vector. */
export function probeBios(): Buffer {
  const bios = Buffer.alloc(64 * 1024, 0xf4); // hlt everywhere else
  Buffer.from([0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfe]).copy(bios, 0xfff0);
  return bios;
}

/** Hardware accelerators worth trying on this platform, best first. */
export function hardwareCandidates(platform: NodeJS.Platform = process.platform): Accelerator[] {
  if (platform === 'linux') return ['kvm'];
  if (platform === 'darwin') return ['hvf'];
  if (platform === 'win32') return ['whpx'];
  return [];
}

/** Cheap pre-checks that explain a failure better than QEMU would. Returns a reason or undefined. */
async function precheck(accel: Accelerator): Promise<string | undefined> {
  if (accel !== 'kvm') return undefined;
  try {
    await fs.access('/dev/kvm', fsc.R_OK | fsc.W_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return '/dev/kvm does not exist (no KVM module, or virtualization is off in the firmware or the parent hypervisor)';
    if (code === 'EACCES') return `/dev/kvm is not accessible to user ${os.userInfo().username} (add yourself to the "kvm" group)`;
    return `/dev/kvm cannot be opened (${code})`;
  }
}

interface QemuRun {
  code: number | null;
  signal: string | null;
  stderr: string;
  timedOut: boolean;
  /** The stdout marker was seen (the run was then stopped). */
  marked: boolean;
  /** A KVM internal error was reported on stderr (the run was then stopped). */
  kvmInternalError: boolean;
}

/**
 * Runs QEMU until it exits, prints `marker` on stdout, reports a KVM internal error, or times
 * out; in the last three cases it is killed (a guest that hit a KVM internal error is paused,
 * not dead). Never throws.
 */
function runQemu(qemu: string, args: string[], timeoutMs: number, marker?: string): Promise<QemuRun> {
  return new Promise((resolve) => {
    const r: QemuRun = { code: null, signal: null, stderr: '', timedOut: false, marked: false, kvmInternalError: false };
    let stdout = '';
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const stop = () => child.kill('SIGKILL');
    const timer = setTimeout(() => {
      r.timedOut = true;
      stop();
    }, timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout = (stdout + d).slice(-4096);
      if (marker && !r.marked && stdout.includes(marker)) {
        r.marked = true;
        stop();
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      if (r.stderr.length < 8192) r.stderr += d;
      if (!r.kvmInternalError && /KVM internal error/i.test(r.stderr)) {
        r.kvmInternalError = true;
        stop();
      }
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ...r, stderr: err.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ ...r, code, signal });
    });
  });
}

function attemptTimer(accel: Accelerator): (ok: boolean, reason?: string) => ProbeAttempt {
  const start = performance.now();
  return (ok, reason) => ({ accelerator: accel, ok, ms: Math.round(performance.now() - start), ...(reason ? { reason } : {}) });
}

/** Runs the firmware probe guest once with the given accelerator. Never throws. */
export async function runFirmwareProbe(qemu: string, accel: Accelerator, timeoutMs = FIRMWARE_TIMEOUT_MS): Promise<ProbeAttempt> {
  const done = attemptTimer(accel);
  const pre = await precheck(accel);
  if (pre) return done(false, pre);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-probe-'));
  const bios = path.join(dir, 'probe.bin');
  try {
    await fs.writeFile(bios, probeBios());
    const args = [
      '-machine', 'pc', '-accel', accel, '-nodefaults', '-no-user-config', '-display', 'none',
      '-m', '16', '-bios', bios, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
    ];
    const r = await runQemu(qemu, args, timeoutMs);
    if (r.code === FIRMWARE_EXIT) return done(true);
    return done(false, describeFailure(accel, r, timeoutMs, 'the probe guest'));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/**
 * Boots the image's kernel with `accel` on the VM's own machine and CPU model, until the initramfs
 * prints PROBE_MARKER. Never throws.
 */
export async function runKernelProbe(qemu: string, accel: Accelerator, k: KernelProbeTarget, timeoutMs = KERNEL_PROBE_TIMEOUT_MS): Promise<ProbeAttempt> {
  const done = attemptTimer(accel);
  const pre = await precheck(accel);
  if (pre) return done(false, pre);
  const args = [
    ...machineArgs({ accelerator: accel, cpus: k.cpus, memoryMiB: 256, ...(k.cpuModel ? { cpuModel: k.cpuModel } : {}) }),
    '-serial', 'stdio',
    ...kernelArgs(accel, k.vmlinux, k.initramfs, `${k.cmdline} berth.probe`),
  ];
  const r = await runQemu(qemu, args, timeoutMs, PROBE_MARKER);
  if (r.marked) return done(true);
  return done(false, describeFailure(accel, r, timeoutMs, 'the guest kernel'));
}

function describeFailure(accel: Accelerator, r: QemuRun, timeoutMs: number, what: string): string {
  const firstLines = r.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^qemu-system-\S+: warning: host doesn't support requested feature/.test(l))
    .slice(0, 1)
    .join('');
  if (r.kvmInternalError) return `KVM_RUN failed with a KVM internal error while running ${what} (typical of nested virtualization)`;
  if (r.timedOut) {
    return `${what} did not reach its first instruction of userspace within ${timeoutMs / 1000} s under ${accel} (typical of nested virtualization without hardware support: slower than emulation)${firstLines ? `: ${firstLines}` : ''}`;
  }
  return `QEMU exited with ${r.signal ? `signal ${r.signal}` : `status ${r.code}`} while running ${what}${firstLines ? `: ${firstLines}` : ''}`;
}

/** The default prober: the kernel probe for hardware accelerators when a kernel is known, else the firmware probe. */
export const defaultProber: Prober = (qemu, accel, kernel) =>
  accel !== 'tcg' && kernel ? runKernelProbe(qemu, accel, kernel) : runFirmwareProbe(qemu, accel);

export interface ChooseOptions {
  /** The image's kernel, for the boot probe of hardware accelerators. */
  kernel?: KernelProbeTarget;
  /** Verdicts of earlier probes on this host boot. */
  verdicts?: VerdictCache;
  /** Identifies the QEMU build in the verdict cache. */
  qemuVersion?: string;
  prober?: Prober;
}

/**
 * Picks the accelerator. `requested` "auto" tries the platform's hardware accelerator and falls
 * back to TCG with a warning naming the reason; "kvm" fails with ACCEL_UNAVAILABLE instead of
 * falling back; "tcg" skips probing hardware.
 */
export async function chooseAccelerator(qemu: string, requested: 'auto' | 'kvm' | 'tcg', opts: ChooseOptions = {}): Promise<ProbeResult> {
  const prober = opts.prober ?? defaultProber;
  const attempts: ProbeAttempt[] = [];
  const hardware = requested === 'tcg' ? [] : requested === 'kvm' ? (['kvm'] as Accelerator[]) : hardwareCandidates();
  for (const accel of hardware) {
    const key = opts.verdicts && opts.kernel
      ? opts.verdicts.keyFor({ qemu, qemuVersion: opts.qemuVersion ?? '', imageKey: opts.kernel.imageKey, accelerator: accel, cpuModel: cpuModelFor({ accelerator: accel, ...(opts.kernel.cpuModel ? { cpuModel: opts.kernel.cpuModel } : {}) }) })
      : undefined;
    const known = key ? await opts.verdicts!.get(key) : undefined;
    const a: ProbeAttempt = known
      ? { accelerator: accel, ok: known.ok, ms: 0, cached: true, ...(known.reason ? { reason: known.reason } : {}) }
      : await prober(qemu, accel, opts.kernel);
    if (key && !known) await opts.verdicts!.set(key, { ok: a.ok, ...(a.reason ? { reason: a.reason } : {}) });
    attempts.push(a);
    if (a.ok) return { accelerator: accel, attempts, ...(key ? { verdictKey: key } : {}) };
  }
  if (requested === 'kvm') {
    const reason = attempts[0]?.reason ?? 'not tried';
    throw new BerthError('ACCEL_UNAVAILABLE', `KVM was requested but does not work here: ${reason}.`, {
      hint: 'Fix KVM access, or run `berth settings set accelerator auto` to fall back to TCG emulation (slower).',
      details: { attempts },
    });
  }
  const tcg = await prober(qemu, 'tcg', opts.kernel);
  attempts.push(tcg);
  if (!tcg.ok) {
    throw new BerthError('QEMU_FAILED', `QEMU cannot run even an emulated (TCG) guest: ${tcg.reason ?? 'unknown reason'}.`, {
      hint: 'Check that the QEMU install is complete (`sudo apt-get install --reinstall qemu-system-x86`).',
      details: { attempts },
    });
  }
  const failed = attempts.filter((a) => !a.ok);
  const result: ProbeResult = { accelerator: 'tcg', attempts };
  if (requested === 'auto' && failed.length > 0) result.warning = fallbackWarning(failed);
  return result;
}

/** The warning shown when berth falls back to TCG. */
export function fallbackWarning(failed: ProbeAttempt[]): string {
  const why = failed.map((a) => `${a.accelerator}: ${a.reason ?? 'failed'}${a.cached ? ' [probed earlier since this host booted]' : ''}`).join('; ');
  return `Hardware acceleration unavailable (${why}); using TCG emulation, which is several times slower.`;
}
