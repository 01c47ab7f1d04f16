import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../util/files.js';

/**
 * Verdicts of the accelerator's kernel probe, remembered per host boot so only the first `berth
 * start` after a host reboot pays for the probe (up to KERNEL_PROBE_TIMEOUT_MS when KVM is broken).
 *
 * The key covers everything that decides whether a hardware accelerator works: the host boot (a
 * reboot may load another kvm module or change the parent hypervisor), the QEMU binary and
 * version, the guest kernel (image key), the accelerator and the CPU model. The file lives in
 * BERTH_CACHE, shared by every berth home of the user. It is a cache: unreadable or malformed
 * content is treated as empty and rewritten, never an error.
 */
export interface Verdict {
  ok: boolean;
  reason?: string;
  /** When it was recorded (ISO time). */
  at: string;
}

export interface VerdictKeyParts {
  qemu: string;
  qemuVersion: string;
  imageKey: string;
  accelerator: string;
  cpuModel: string;
}

const MAX_ENTRIES = 32;

export class VerdictCache {
  constructor(
    private readonly file: string,
    private readonly hostBootId: string = readHostBootId(),
  ) {}

  keyFor(p: VerdictKeyParts): string {
    return createHash('sha256')
      .update(JSON.stringify([this.hostBootId, p.qemu, p.qemuVersion, p.imageKey, p.accelerator, p.cpuModel]))
      .digest('hex')
      .slice(0, 32);
  }

  async get(key: string): Promise<Verdict | undefined> {
    return (await this.readAll())[key];
  }

  async set(key: string, v: { ok: boolean; reason?: string }): Promise<void> {
    const all = await this.readAll();
    delete all[key];
    all[key] = { ok: v.ok, ...(v.reason ? { reason: v.reason } : {}), at: new Date().toISOString() };
    // Keep the newest entries only (insertion order is recording order).
    const kept = Object.fromEntries(Object.entries(all).slice(-MAX_ENTRIES));
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    await writeFileAtomic(this.file, JSON.stringify(kept, null, 2) + '\n', 0o644);
  }

  private async readAll(): Promise<Record<string, Verdict>> {
    let v: unknown;
    try {
      v = JSON.parse(await fs.readFile(this.file, 'utf8'));
    } catch {
      return {};
    }
    if (!v || typeof v !== 'object' || Array.isArray(v)) return {};
    const out: Record<string, Verdict> = {};
    for (const [k, e] of Object.entries(v as Record<string, unknown>)) {
      if (!e || typeof e !== 'object') continue;
      const o = e as Record<string, unknown>;
      if (typeof o.ok !== 'boolean' || typeof o.at !== 'string') continue;
      out[k] = { ok: o.ok, at: o.at, ...(typeof o.reason === 'string' ? { reason: o.reason.slice(0, 1000) } : {}) };
    }
    return out;
  }
}

/** Changes at every host boot: Linux's boot id, elsewhere the boot time to the minute. */
export function readHostBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return `boot-${Math.round((Date.now() / 1000 - os.uptime()) / 60)}`;
  }
}
