import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findImage, loadManifest } from '../src/image/index.js';
import { imageInputs } from '../src/daemon/image-source.js';
import { resolvePaths } from '../src/settings/paths.js';
import { findQemu } from '../src/vm/qemu-binary.js';
import { chooseAccelerator, PROBE_MARKER, type Accelerator } from '../src/vm/accel-probe.js';
import { VerdictCache } from '../src/vm/accel-verdicts.js';
import { kernelArgs, machineArgs } from '../src/vm/qemu-args.js';
import { median, type BenchResult, type Row } from './report.js';

/**
 * Cold start to API-ready, against its floor.
 *
 * - floor: the same kernel, initramfs, machine, accelerator, CPUs and memory, booted with
 *   `berth.probe`: the initramfs /init prints a line at once and powers off. Nothing berth does
 *   can be faster than this.
 * - cold start: `berth start` with no daemon and no VM running (the data disk already exists), until
 *   the Docker API answers /_ping through the host socket; the CLI's wall time, plus the phases the
 *   daemon reports.
 * - first start: the same on a fresh home (creates and formats the data disk), once.
 * - memory: the daemon's RSS once the VM is running and idle, and QEMU's.
 */
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const berth = path.join(repo, 'bin', 'berth');

export async function benchStart(runs: number): Promise<BenchResult> {
  const paths = resolvePaths();
  const inputs = imageInputs(paths.cache);
  const image = await findImage(inputs);
  if (!image) throw new Error('no guest image: run `bin/berth image build` first');
  const cmdline = (await loadManifest(inputs.manifestPath)).kernel.cmdline;
  const qemu = await findQemu();
  const cpus = Math.max(1, Math.min(4, os.cpus().length));
  const kernel = { vmlinux: image.vmlinux, initramfs: image.initramfs, cmdline, imageKey: image.key, cpus };
  const accel = (await chooseAccelerator(qemu.system, 'auto', { kernel, verdicts: new VerdictCache(paths.accelVerdicts), qemuVersion: qemu.version })).accelerator;

  const floor: number[] = [];
  const floorInit: number[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await bootFloor(qemu.system, accel, cpus, image.vmlinux, image.initramfs, cmdline);
    floor.push(r.exitMs);
    floorInit.push(r.initMs);
  }

  const home = fs.mkdtempSync('/tmp/berth-bench-');
  const env = { ...process.env, BERTH_HOME: home, DOCKER_CONFIG: path.join(home, 'docker') };
  const cold: number[] = [];
  const phases = new Map<string, number[]>();
  let first = 0;
  let daemonRss = 0;
  let qemuRss = 0;
  try {
    first = timed(() => cli(['start'], env));
    cli(['stop'], env);
    for (let i = 0; i < runs; i++) {
      cold.push(timed(() => cli(['start'], env)));
      const status = JSON.parse(cli(['status', '--json'], env)) as { lastStart: { phases: { id: string; ms: number }[] }; daemonPid: number; qemuPid: number };
      for (const p of status.lastStart.phases) phases.set(p.id, [...(phases.get(p.id) ?? []), p.ms]);
      if (i === runs - 1) {
        await new Promise((r) => setTimeout(r, 3000)); // idle
        daemonRss = rssMiB(status.daemonPid);
        qemuRss = rssMiB(status.qemuPid);
      }
      cli(['stop'], env);
    }
  } finally {
    try {
      cli(['stop'], env);
    } catch {
      // already stopped
    }
    fs.rmSync(home, { recursive: true, force: true });
  }

  const coldMed = median(cold);
  const rows: Row[] = [
    { name: 'floor: same kernel to an empty init', value: median(floorInit), unit: 'ms', note: `to QEMU exit ${median(floor)} ms` },
    { name: 'berth cold start to Docker API ready', value: coldMed, unit: 'ms', ratio: coldMed / median(floorInit), note: `runs: ${cold.join(', ')} ms` },
    { name: 'berth first start (creates and formats the disk)', value: first, unit: 'ms' },
  ];
  for (const [id, ms] of phases) rows.push({ name: `  phase ${id}`, value: median(ms), unit: 'ms' });
  rows.push({ name: 'daemon RSS, VM running and idle', value: daemonRss, unit: 'MiB' });
  rows.push({ name: 'QEMU RSS (guest memory touched + QEMU)', value: qemuRss, unit: 'MiB' });
  return { title: `Start (${accel.toUpperCase()}, ${cpus} vCPUs, QEMU ${qemu.version}, median of ${runs})`, rows };
}

function cli(args: string[], env: NodeJS.ProcessEnv): string {
  return execFileSync(berth, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
}

function timed(fn: () => unknown): number {
  const t0 = performance.now();
  fn();
  return Math.round(performance.now() - t0);
}

function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

/** Same machine as berth's VM (q35, PVH vmlinux, same accelerator/CPU/memory), no devices. */
function bootFloor(qemu: string, accel: Accelerator, cpus: number, vmlinux: string, initramfs: string, cmdline: string): Promise<{ initMs: number; exitMs: number }> {
  const args = [
    ...machineArgs({ accelerator: accel, cpus, memoryMiB: 2048 }),
    '-serial', 'stdio',
    ...kernelArgs(accel, vmlinux, initramfs, `${cmdline} berth.probe`),
  ];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let initMs = -1;
    let out = '';
    const q = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => q.kill('SIGKILL'), 60_000);
    q.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (initMs < 0 && out.includes(PROBE_MARKER)) initMs = Math.round(performance.now() - t0);
    });
    q.on('close', () => {
      clearTimeout(timer);
      if (initMs < 0) reject(new Error(`floor boot did not reach init:\n${out.slice(-2000)}`));
      else resolve({ initMs, exitMs: Math.round(performance.now() - t0) });
    });
  });
}
