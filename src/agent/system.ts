import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import type { Logger } from '../util/log.js';
import type { Engine } from './engine.js';
import type { ByteCounts, SystemInfo } from '../control/agent-api.js';

/**
 * System-level requests: information for `berth status`/diagnostics, and the clean shutdown
 * sequence (engine stop → sync → unmount the data disk → power off).
 */
export function readBootTimes(file = '/run/berth/boot-times'): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const [k, v] = line.trim().split(/\s+/);
      if (k && v && Number.isFinite(Number(v))) out[k] = Number(v);
    }
  } catch {
    // not written (not booted by our init)
  }
  return out;
}

/**
 * This boot's id: the kernel's, or in namespaces (where the kernel's is the host's and outlives
 * every launch) the one init wrote at the launch.
 */
export function readBootId(): string {
  for (const f of ['/run/berth/boot-id', '/proc/sys/kernel/random/boot_id']) {
    try {
      return fs.readFileSync(f, 'utf8').trim();
    } catch {
      // next
    }
  }
  return 'unknown';
}

export function readImageKey(): string {
  try {
    return String((JSON.parse(fs.readFileSync('/etc/berth/image.json', 'utf8')) as { key?: string }).key ?? '');
  } catch {
    return '';
  }
}

/** system.info's fields about the VM (the agent adds its own and the engine's). */
export function systemInfo(): Omit<SystemInfo, 'agentVersion' | 'imageKey' | 'engine' | 'streams'> {
  let disk: ByteCounts | undefined;
  try {
    const s = fs.statfsSync('/mnt/data');
    disk = { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
  } catch {
    // not mounted
  }
  return {
    bootId: readBootId(),
    kernel: os.release(),
    uptimeSec: os.uptime(),
    memory: { totalBytes: os.totalmem(), freeBytes: os.freemem() },
    loadavg: os.loadavg(),
    dataDisk: disk,
    bootTimes: readBootTimes(),
  };
}

function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${stderr}`.trim() }));
  });
}

/**
 * Stops the engine, flushes and unmounts the data disk, and returns what happened. The caller
 * replies to the host and then calls `powerOff()`.
 */
export async function prepareShutdown(engine: Engine, engineTimeoutMs: number, log: Logger): Promise<{ engineForced: boolean; unmounted: boolean }> {
  fs.writeFileSync('/run/berth/powering-off', '');
  const { forced } = await engine.stop(engineTimeoutMs);
  await run('/bin/busybox', ['sync']);
  let unmounted = true;
  for (const m of ['/var/lib/docker', '/var/lib/containerd', '/mnt/data']) {
    const r = await run('/bin/busybox', ['umount', m]);
    if (!r.ok) {
      // Something still holds it (a stray process): make it read-only so the journal is clean.
      log.warn('unmount failed; remounting read-only', { mount: m, out: r.out });
      await run('/bin/busybox', ['mount', '-o', 'remount,ro', m]);
      unmounted = false;
    }
  }
  await run('/bin/busybox', ['sync']);
  return { engineForced: forced, unmounted };
}

export function powerOff(): void {
  execFile('/bin/busybox', ['poweroff', '-f'], () => {});
}
