import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findImage, findPack, loadManifest } from '../src/image/index.js';
import { imageInputs } from '../src/daemon/image-source.js';
import { resolvePaths } from '../src/settings/paths.js';
import { findQemu } from '../src/vm/qemu-binary.js';
import { chooseAccelerator, PROBE_MARKER, type Accelerator } from '../src/vm/accel-probe.js';
import { VerdictCache } from '../src/vm/accel-verdicts.js';
import { kernelArgs, machineArgs } from '../src/vm/qemu-args.js';
import { median, type BenchResult, type Row } from './report.js';

/**
 * Cold start to API-ready for each engine pack and for Debian 13's kernel, each against its floor.
 *
 * - floor: the same kernel, initramfs, machine, accelerator, CPUs and memory, booted with
 *   `berth.probe`: the initramfs /init prints a line at once and powers off. Nothing berth does
 *   can be faster than this.
 * - cold start: `berth start` with no daemon and no VM running (the data disk already exists), until
 *   the Docker API answers /_ping through the host socket; the CLI's wall time, plus the phases the
 *   daemon reports.
 * - first start: the same on a fresh home (creates and formats the data disk), once.
 * - memory: the daemon's RSS once the VM is running and idle, and QEMU's.
 * - the namespace backend (docs/namespace.md, when this host can run it): cold start to API-ready
 *   against its floor, dockerd of the same pack started by hand in a plain `unshare` namespace
 *   over the same images (no cgroup subtree, no network, no agent, no berth).
 */
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const berth = path.join(repo, 'bin', 'berth');

/** One way to boot: an engine pack, and optionally another guest folder (another kernel) or the namespace backend. */
interface Variant {
  name: string;
  engine: string;
  env: NodeJS.ProcessEnv;
  backend?: 'namespace';
}

export async function benchStart(runs: number): Promise<BenchResult> {
  const paths = resolvePaths();
  const inputs = imageInputs(paths.cache);
  const manifest = await loadManifest(inputs.manifestPath);
  const kernel612 = makeKernelVariant(inputs.guestDir);
  const variants: Variant[] = [
    ...manifest.packs.map((p) => ({ name: `engine ${p.id}`, engine: p.id, env: {} })),
    { name: `engine ${manifest.packs[0]!.id}, Debian 13 kernel`, engine: manifest.packs[0]!.id, env: { BERTH_GUEST_DIR: kernel612 } },
    ...(canRunNamespace() ? [{ name: `namespace backend, engine ${manifest.packs[0]!.id}`, engine: manifest.packs[0]!.id, env: {}, backend: 'namespace' as const }] : []),
  ].filter((v) => wanted(v.name));
  const qemu = await findQemu();
  const cpus = Math.max(1, Math.min(4, os.cpus().length));
  const rows: Row[] = [];
  const homes: string[] = [];
  let accel: Accelerator = 'tcg';
  const floorFailures = new Map<Variant, string[]>();
  try {
    const state = new Map<Variant, { env: NodeJS.ProcessEnv; cold: number[]; phases: Map<string, number[]>; first: number; floorInit: number[]; floor: number[]; kernel: string; daemonRss: number; qemuRss: number }>();
    for (const v of variants) {
      const home = fs.mkdtempSync('/tmp/berth-bench-');
      homes.push(home);
      const env = { ...process.env, ...v.env, BERTH_HOME: home, DOCKER_CONFIG: path.join(home, 'docker') };
      fs.writeFileSync(path.join(home, 'settings.json'), JSON.stringify({ 'engine.version': v.engine, ...(v.backend ? { backend: v.backend } : {}) }));
      cli(['image', 'build'], env); // not timed: a build is not a start
      const vInputs = imageInputs(paths.cache, env);
      const image = await findImage(vInputs);
      if (!image) throw new Error(`no guest image for ${v.name}`);
      const cmdline = (await loadManifest(vInputs.manifestPath)).base.kernel.cmdline;
      const kernel = { vmlinux: image.vmlinux, initramfs: image.initramfs, cmdline, imageKey: image.key, cpus };
      accel = (await chooseAccelerator(qemu.system, 'auto', { kernel, verdicts: new VerdictCache(paths.accelVerdicts), qemuVersion: qemu.version })).accelerator;
      const floor: number[] = [];
      const floorInit: number[] = [];
      for (let i = 0; i < runs; i++) {
        if (v.backend === 'namespace') {
          const pack = await findPack(vInputs, v.engine);
          if (!pack) throw new Error(`no engine pack ${v.engine}`);
          const ms = plainNamespaceDockerd(image.rootfs, pack.squashfs);
          floor.push(ms);
          floorInit.push(ms);
          continue;
        }
        // A floor boot that does not reach init (seen: Debian 13's 6.12 panicking in
        // sched_clock_cpu under TCG, once in some twenty boots) is counted and run again.
        const r = await bootFloor(qemu.system, accel, cpus, image.vmlinux, image.initramfs, cmdline).catch(async (err: Error) => {
          floorFailures.set(v, [...(floorFailures.get(v) ?? []), err.message.split('\n').filter((l) => /panic|BUG|RIP/.test(l)).slice(0, 2).join(' / ') || 'no init']);
          return bootFloor(qemu.system, accel, cpus, image.vmlinux, image.initramfs, cmdline);
        });
        floor.push(r.exitMs);
        floorInit.push(r.initMs);
      }
      const first = timed(() => cli(['start'], env));
      cli(['stop'], env);
      state.set(v, { env, cold: [], phases: new Map(), first, floorInit, floor, kernel: image.versions.kernel.release, daemonRss: 0, qemuRss: 0 });
    }
    // Runs alternate between the variants, so a slow spell of the machine falls on all of them.
    for (let i = 0; i < runs; i++) {
      for (const v of variants) {
        const st = state.get(v)!;
        st.cold.push(timed(() => cli(['start'], st.env)));
        const status = JSON.parse(cli(['status', '--json'], st.env)) as { lastStart: { phases: { id: string; ms: number }[] }; daemonPid: number; qemuPid: number };
        for (const p of status.lastStart.phases) st.phases.set(p.id, [...(st.phases.get(p.id) ?? []), p.ms]);
        if (i === runs - 1) {
          await new Promise((r) => setTimeout(r, 3000)); // idle
          st.daemonRss = rssMiB(status.daemonPid);
          st.qemuRss = rssMiB(status.qemuPid);
        }
        cli(['stop'], st.env);
      }
    }
    const base = median(state.get(variants[0]!)!.cold);
    for (const v of variants) {
      const st = state.get(v)!;
      const coldMed = median(st.cold);
      if (v.backend === 'namespace') rows.push({ name: `${v.name} (the host's kernel ${os.release()}): floor, the pack's dockerd in a plain namespace`, value: median(st.floorInit), unit: 'ms', note: `runs: ${st.floor.join(', ')} ms` });
      else rows.push({ name: `${v.name} (kernel ${st.kernel}): floor, same kernel to an empty init`, value: median(st.floorInit), unit: 'ms', note: `to QEMU exit ${median(st.floor)} ms${floorFailures.has(v) ? `; ${floorFailures.get(v)!.length} boot(s) did not reach init and were run again: ${floorFailures.get(v)!.join('; ')}` : ''}` });
      rows.push({ name: `${v.name}: cold start to Docker API ready`, value: coldMed, unit: 'ms', ratio: coldMed / median(st.floorInit), note: `runs: ${st.cold.join(', ')} ms; ${(coldMed / base).toFixed(2)}× ${variants[0]!.name}` });
      rows.push({ name: `${v.name}: first start (creates and formats the disk)`, value: st.first, unit: 'ms' });
      for (const [id, ms] of st.phases) rows.push({ name: `  phase ${id}`, value: median(ms), unit: 'ms' });
      rows.push({ name: `${v.name}: daemon RSS, VM running and idle`, value: st.daemonRss, unit: 'MiB' });
      rows.push({ name: v.backend === 'namespace' ? `${v.name}: the namespace's PID 1 RSS (init; dockerd and the rest are beside it)` : `${v.name}: QEMU RSS (guest memory touched + QEMU)`, value: st.qemuRss, unit: 'MiB' });
    }
  } finally {
    for (const home of homes) {
      try {
        cli(['stop'], { ...process.env, BERTH_HOME: home });
      } catch {
        // already stopped
      }
      fs.rmSync(home, { recursive: true, force: true });
    }
    fs.rmSync(kernel612, { recursive: true, force: true });
  }
  return { title: `Start per engine pack and kernel (${accel.toUpperCase()}, ${cpus} vCPUs, QEMU ${qemu.version}, median of ${runs}, runs alternating)`, rows };
}

/**
 * A copy of the guest folder whose base takes Debian 13's kernel (6.12) instead of the base
 * source's: the anchor of the kernel comparison (docs/performance.md "Kernel"). Only the kernel
 * changes; the base userland, the packs and the agent are the same.
 */
export function makeKernelVariant(guestDir: string): string {
  const dir = fs.mkdtempSync('/tmp/berth-guest-k612-');
  fs.cpSync(guestDir, dir, { recursive: true });
  const file = path.join(dir, 'manifest.json');
  const m = JSON.parse(fs.readFileSync(file, 'utf8')) as { base: { kernel: { source?: string } } };
  m.base.kernel.source = 'trixie';
  fs.writeFileSync(file, JSON.stringify(m, null, 2));
  return dir;
}

/** BERTH_BENCH_START: variant names separated by "|" ("engine 26|namespace backend, engine 26"); only those run. */
function wanted(name: string): boolean {
  const only = process.env.BERTH_BENCH_START?.split('|').map((w) => w.trim()).filter(Boolean);
  return !only || only.includes(name);
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

/** Root, Linux, namespaces, squashfs and overlay: what the namespace backend needs (its own check says more). */
function canRunNamespace(): boolean {
  try {
    const fsList = fs.readFileSync('/proc/filesystems', 'utf8');
    return process.platform === 'linux' && process.getuid?.() === 0 && /\ssquashfs$/m.test(fsList) && /\soverlay$/m.test(fsList) && fs.existsSync('/dev/loop-control');
  } catch {
    return false;
  }
}

/**
 * The namespace backend's floor: the pack's containerd and dockerd started by hand in a plain
 * `unshare` namespace over the same two images, until `docker version` answers; milliseconds.
 * Everything goes with the namespace's PID 1 when the script ends.
 */
function plainNamespaceDockerd(base: string, pack: string): number {
  const work = fs.mkdtempSync('/tmp/berth-nsfloor-');
  const script = [
    'set -e',
    'W=$1',
    'mount -t tmpfs floor "$W"',
    'mkdir "$W/b" "$W/p" "$W/u" "$W/r"',
    'mount -t squashfs -o ro,loop "$2" "$W/b"',
    'mount -t squashfs -o ro,loop "$3" "$W/p"',
    'mount -t tmpfs upper "$W/u"',
    'mkdir "$W/u/d" "$W/u/w"',
    'mount -t overlay overlay -o "lowerdir=$W/p:$W/b,upperdir=$W/u/d,workdir=$W/u/w" "$W/r"',
    'mount -t proc proc "$W/r/proc"',
    'mount --rbind /sys "$W/r/sys"',
    'mount --rbind /dev "$W/r/dev"',
    'mount -t tmpfs run "$W/r/run"',
    'mount -t tmpfs lib "$W/r/var/lib/docker"',
    'exec chroot "$W/r" /bin/busybox sh -c \'ip link set lo up; containerd --address /run/containerd/containerd.sock >/dev/null 2>&1 & dockerd -H unix:///run/docker.sock --containerd=/run/containerd/containerd.sock >/dev/null 2>&1 & until docker -H unix:///run/docker.sock version >/dev/null 2>&1; do busybox usleep 20000; done\'',
  ].join('\n');
  try {
    return timed(() => execFileSync('unshare', ['--mount', '--net', '--pid', '--fork', '--propagation', 'private', 'sh', '-c', script, 'floor', work, base, pack], { stdio: 'ignore', timeout: 120_000 }));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

