import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';

/**
 * Chooses the accelerator by *running* a tiny guest, not by looking at device nodes.
 *
 * Why: on nested hosts /dev/kvm exists and KVM_CREATE_VM succeeds, but the first KVM_RUN dies with
 * "KVM internal error. Suberror: 1" and QEMU then sits paused forever. Only executing guest code
 * tells the truth. The probe guest is a 64 KiB BIOS image whose reset vector writes 0x31 to an
 * isa-debug-exit port, so QEMU exits with status (0x31 << 1) | 1 = 99 iff a vCPU really ran.
 */

export type Accelerator = 'kvm' | 'hvf' | 'whpx' | 'tcg';

export interface ProbeAttempt {
  accelerator: Accelerator;
  ok: boolean;
  ms: number;
  reason?: string;
}

export interface ProbeResult {
  accelerator: Accelerator;
  /** Set when berth fell back to TCG: says why the hardware accelerator was not used. */
  warning?: string;
  attempts: ProbeAttempt[];
}

const PROBE_EXIT = 99;
const PROBE_TIMEOUT_MS = 5_000;

/** The probe firmware: `mov al,0x31; out 0xf4,al; hlt; jmp $` at the x86 reset vector. */
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

/** Runs the probe guest once with the given accelerator. Never throws. */
export async function runProbe(qemu: string, accel: Accelerator, timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeAttempt> {
  const start = performance.now();
  const done = (ok: boolean, reason?: string): ProbeAttempt => ({
    accelerator: accel,
    ok,
    ms: Math.round(performance.now() - start),
    ...(reason ? { reason } : {}),
  });
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
    const result = await new Promise<{ code: number | null; signal: string | null; stderr: string; timedOut: boolean }>((resolve) => {
      let stderr = '';
      let timedOut = false;
      const child = spawn(qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (d: string) => {
        if (stderr.length < 8192) stderr += d;
      });
      // A guest that hit a KVM internal error is paused, not dead: kill it after the timeout.
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        resolve({ code: null, signal: null, stderr: err.message, timedOut: false });
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stderr, timedOut });
      });
    });
    if (result.code === PROBE_EXIT) return done(true);
    return done(false, describeFailure(accel, result, timeoutMs));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function describeFailure(
  accel: Accelerator,
  r: { code: number | null; signal: string | null; stderr: string; timedOut: boolean },
  timeoutMs: number,
): string {
  const firstLines = r.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(0, 3)
    .join(' | ');
  if (/KVM internal error/i.test(r.stderr)) {
    return `KVM_RUN failed with a KVM internal error (typical of nested virtualization): ${firstLines}`;
  }
  if (r.timedOut) return `the ${accel} probe guest did not finish within ${timeoutMs} ms${firstLines ? `: ${firstLines}` : ''}`;
  return `QEMU exited with ${r.signal ? `signal ${r.signal}` : `status ${r.code}`}${firstLines ? `: ${firstLines}` : ''}`;
}

/**
 * Picks the accelerator. `requested` "auto" tries the platform's hardware accelerator and falls
 * back to TCG with a warning naming the reason; "kvm" fails with ACCEL_UNAVAILABLE instead of
 * falling back; "tcg" skips probing hardware.
 */
export async function chooseAccelerator(
  qemu: string,
  requested: 'auto' | 'kvm' | 'tcg',
  probe: (qemu: string, accel: Accelerator) => Promise<ProbeAttempt> = runProbe,
): Promise<ProbeResult> {
  const attempts: ProbeAttempt[] = [];
  const hardware = requested === 'tcg' ? [] : requested === 'kvm' ? (['kvm'] as Accelerator[]) : hardwareCandidates();
  for (const accel of hardware) {
    const a = await probe(qemu, accel);
    attempts.push(a);
    if (a.ok) return { accelerator: accel, attempts };
  }
  if (requested === 'kvm') {
    const reason = attempts[0]?.reason ?? 'not tried';
    throw new BerthError('ACCEL_UNAVAILABLE', `KVM was requested but does not work here: ${reason}.`, {
      hint: 'Fix KVM access, or run `berth settings set accelerator auto` to fall back to TCG emulation (slower).',
      details: { attempts },
    });
  }
  const tcg = await probe(qemu, 'tcg');
  attempts.push(tcg);
  if (!tcg.ok) {
    throw new BerthError('QEMU_FAILED', `QEMU cannot run even an emulated (TCG) guest: ${tcg.reason ?? 'unknown reason'}.`, {
      hint: 'Check that the QEMU install is complete (`sudo apt-get install --reinstall qemu-system-x86`).',
      details: { attempts },
    });
  }
  const failed = attempts.filter((a) => !a.ok);
  const result: ProbeResult = { accelerator: 'tcg', attempts };
  if (requested === 'auto' && failed.length > 0) {
    result.warning = `Hardware acceleration unavailable (${failed.map((a) => `${a.accelerator}: ${a.reason}`).join('; ')}); using TCG emulation, which is several times slower.`;
  }
  return result;
}
