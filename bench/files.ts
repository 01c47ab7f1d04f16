import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { which } from '../src/vm/qemu-binary.js';
import { debianImageTar } from '../test/e2e/images.js';
import { median, type BenchResult, type Row } from './report.js';

/**
 * File sharing against QEMU's own virtio-9p (-virtfs), on the same guest in the same run.
 *
 * One VM serves all four backends: berth's own VM, started by `berth start` with a BERTH_HOME
 * whose `shares` setting is three temporary folders, one of them cached (`"cache": true`), and with
 * BERTH_QEMU pointing at a two-line wrapper that adds
 * `-virtfs local,path=<a fourth temporary folder>,mount_tag=bench,security_model=none` to the VM's
 * QEMU command line. The guest mounts berth's shares as it always does (trans=tcp to berth's file
 * server, msize 512 KiB, access=user; cache=mmap (Linux 6.1: the same as the anchor's cache=none
 * for every workload here, docs/files.md "Transport"), or cache=loose for the cached one, which the
 * change events keep fresh: docs/files.md "Caching") and the anchor with
 * `mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none` at its host path too, so
 * the commands are the same for all but for the folder. Runs rotate the order of the backends.
 *
 * Two of berth's backends are the same uncached share setting, once as a folder no container
 * uses ("berth") and once bind-mounted by a running container ("berth-mounted"): that is how
 * containers use a share, and then the agent holds the folder's entries open for change events
 * (docs/files.md "Pins"), so paths through them cost no walk requests. The cached share is
 * bind-mounted by the same container: its cache is kept fresh by change events, which flow only
 * for folders a container mounts. The workloads still run in the VM's shell, for all four
 * alike; the container only holds the mounts (`sleep`), and its start, which waits while the
 * agent pins both folders, is timed and printed. Unpacked folders in the mounted folders are
 * removed in the guest (untimed), not on the host, whose removal of 10,000 files the change
 * events would replay in the VM while the next runs are timed.
 *
 * The VM itself runs the workloads (`berth shell`, no container), timed in the guest from
 * /proc/uptime (10 ms resolution), so only the file sharing is measured and not the shell's round
 * trip. Before each timed command the guest drops its caches (`sync; echo 3 >
 * /proc/sys/vm/drop_caches`); the host's page cache stays warm for both (the host just wrote the
 * files).
 *
 * - walk: `find DIR -type f | wc -l` over a tree of 5,000 files (50 folders × 100 files of
 *   1–4 KiB); busybox find lstat()s every entry.
 * - walk again: the same find, timed the second time after an untimed first one: what caching buys
 *   a tool that walks a tree over and over (a watcher, a build).
 * - read: `find DIR -type f -exec cat {} + >/dev/null` over the first 20 folders of the same tree
 *   (2,000 files: every read costs ~4 round trips without caching, and all 5,000 took ~90 s a run).
 * - big read: `dd if=FILE of=/dev/null bs=1M`, a 200 MiB file the host made.
 * - big write: `dd if=/dev/zero of=FILE bs=1M count=200 conv=fsync` (written through to the host's
 *   disk by the fsync on all).
 * - unpack: busybox `tar -xf` of a tarball of 10,000 small files (100 folders × 100 files of
 *   1–4 KiB) into a new folder in the share; the tarball is copied to the VM's own /run/tmp
 *   first, so only the unpack is timed. busybox tar names each path about eight times (unlink,
 *   open, write, close, chown, chmod, utimensat, ...): on TCG 9–30 ms per file, so this workload
 *   alone takes ~10 minutes a round.
 */
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const berth = path.join(repo, 'bin', 'berth');
const MIB = 1024 * 1024;
const TAG = 'bench';

export interface FilesSizes {
  /** The tree walked and read: dirs × files per dir. */
  treeDirs: number;
  treeFilesPerDir: number;
  /** Files read by the read workload: the first readDirs folders of the tree. */
  readDirs: number;
  bigMiB: number;
  /** The tarball: dirs × files per dir. */
  tarDirs: number;
  tarFilesPerDir: number;
}

export const FILES_SIZES: FilesSizes = { treeDirs: 50, treeFilesPerDir: 100, readDirs: 20, bigMiB: 200, tarDirs: 100, tarFilesPerDir: 100 };
/** Smaller, for the kernel comparison, which runs the whole bench twice. */
export const KERNEL_FILES_SIZES: FilesSizes = { treeDirs: 20, treeFilesPerDir: 50, readDirs: 10, bigMiB: 100, tarDirs: 10, tarFilesPerDir: 50 };

type Backend = 'virtio-9p' | 'berth' | 'berth-mounted' | 'berth-cached';
const BACKENDS: Backend[] = ['virtio-9p', 'berth', 'berth-mounted', 'berth-cached'];
/** berth's backends, each compared with the anchor. */
const OURS: Backend[] = ['berth', 'berth-mounted', 'berth-cached'];
/** The container that holds berth-mounted's and berth-cached's folders bind-mounted. */
const HOLDER = 'berth-bench-holder';
/** The backends whose folder the holder container bind-mounts. */
const MOUNTED: Backend[] = ['berth-mounted', 'berth-cached'];

type Workload = 'walk' | 'walkAgain' | 'read' | 'bigRead' | 'bigWrite' | 'untar';
const WORKLOADS: Workload[] = ['walk', 'walkAgain', 'read', 'bigRead', 'bigWrite', 'untar'];

/** `variant`: extra environment (BERTH_GUEST_DIR for another kernel) and its name in the title. */
export async function benchFiles(runs: number, sizes: FilesSizes = FILES_SIZES, variant: { name: string; env: NodeJS.ProcessEnv } = { name: '', env: {} }): Promise<BenchResult> {
  const root = fs.mkdtempSync('/tmp/berth-benchfs-');
  const dirs: Record<Backend, string> = {
    'virtio-9p': path.join(root, 'virtio-9p'),
    berth: path.join(root, 'berth'),
    'berth-mounted': path.join(root, 'berth-mounted'),
    'berth-cached': path.join(root, 'berth-cached'),
  };
  const home = path.join(root, 'home');
  const env: NodeJS.ProcessEnv = { ...process.env, ...variant.env, BERTH_HOME: home, DOCKER_CONFIG: path.join(home, 'docker') };
  delete env.DOCKER_HOST;
  const measured = new Map<Backend, Map<Workload, number[]>>(BACKENDS.map((b) => [b, new Map(WORKLOADS.map((w) => [w, []]))]));
  /** Why a backend was not measured at all, or one workload on it. */
  const failed = new Map<Backend, string>();
  const failedRuns = new Map<string, string>();
  const counts = { tree: sizes.treeDirs * sizes.treeFilesPerDir, read: sizes.readDirs * sizes.treeFilesPerDir, tar: sizes.tarDirs * sizes.tarFilesPerDir };
  try {
    const t0 = performance.now();
    for (const b of BACKENDS) makeData(dirs[b], sizes);
    makeTarball(path.join(root, 'tar-src'), path.join(dirs.berth, 'bench.tar'), sizes);
    console.error(`bench files: data made on the host in ${Math.round(performance.now() - t0)} ms (${counts.tree} files, ${sizes.bigMiB} MiB, tarball of ${counts.tar} files)`);

    try {
      await startVm(env, root, dirs, failed);
    } catch (err) {
      for (const b of BACKENDS) failed.set(b, `the VM did not start: ${errText(err)}`);
      console.error(`bench files: ${errText(err)}`);
    }
    for (const w of WORKLOADS) {
      for (let r = 0; r < runs; r++) {
        // Rotate which backend goes first, so drift in the machine's load hits all alike.
        const order = BACKENDS.map((_, i) => BACKENDS[(i + r) % BACKENDS.length]!);
        for (const b of order) {
          if (failed.has(b) || failedRuns.has(`${b} ${w}`)) continue;
          try {
            const ms = runWorkload(env, w, dirs[b], r, counts, sizes, MOUNTED.includes(b) ? 'guest' : 'host');
            measured.get(b)!.get(w)!.push(ms);
            console.error(`bench files: ${w} ${b} run ${r + 1}: ${ms} ms`);
          } catch (err) {
            failedRuns.set(`${b} ${w}`, errText(err));
            console.error(`bench files: ${w} ${b} failed: ${errText(err)}`);
          }
        }
      }
    }
  } finally {
    try {
      cli(['stop'], env);
    } catch {
      // not running
    }
    fs.rmSync(root, { recursive: true, force: true });
  }

  const rows: Row[] = [];
  const fmt = (n: number) => n.toLocaleString('en-US');
  const names: Record<Workload, string> = {
    walk: `walk: find -type f (lstat each) over ${fmt(counts.tree)} files`,
    walkAgain: `walk the same ${fmt(counts.tree)} files again (second find, caches kept)`,
    read: `read: cat every one of ${fmt(counts.read)} small files`,
    bigRead: `read ${sizes.bigMiB} MiB (dd bs=1M)`,
    bigWrite: `write ${sizes.bigMiB} MiB (dd bs=1M conv=fsync)`,
    untar: `unpack a tarball of ${fmt(counts.tar)} small files (busybox tar)`,
  };
  for (const w of WORKLOADS) {
    const med = (b: Backend) => {
      const xs = measured.get(b)!.get(w)!;
      return xs.length === runs ? median(xs) : undefined;
    };
    for (const b of BACKENDS) {
      const xs = measured.get(b)!.get(w)!;
      const v = med(b);
      if (v === undefined) {
        rows.push({ name: `${names[w]}: ${b}`, value: NaN, unit: 'ms', note: `not measured: ${failed.get(b) ?? failedRuns.get(`${b} ${w}`) ?? 'unknown'}` });
        continue;
      }
      const rate = w === 'bigRead' || w === 'bigWrite' ? `${Math.round((sizes.bigMiB * 1000) / v)} MiB/s; ` : '';
      rows.push({ name: `${names[w]}: ${b}`, value: v, unit: 'ms', note: `${rate}runs: ${xs.join(', ')} ms` });
    }
    const a = med('virtio-9p');
    for (const b of OURS) {
      const ours = med(b);
      if (a !== undefined && ours !== undefined && a > 0 && ours > 0) {
        rows.push({ name: `  ${b} vs virtio-9p`, value: Number((a / ours).toFixed(2)), unit: '×', note: 'anchor time / berth time: higher is better for berth' });
      }
    }
  }
  return {
    title: `File sharing${variant.name ? `, ${variant.name}` : ''}, run in the VM's shell (TCG, ${runs} runs per backend, medians; virtio-9p cache=none; berth cache=mmap, a folder no container uses; berth-mounted cache=mmap, bind-mounted by a running container, so pinned for change events; berth-cached cache=loose, bind-mounted by that container and kept fresh by change events)`,
    rows,
  };
}

/**
 * Starts berth's VM with the 9p device added (through a BERTH_QEMU wrapper), mounts the anchor in
 * the guest and copies the tarball into the VM's own tmpfs.
 */
async function startVm(env: NodeJS.ProcessEnv, root: string, dirs: Record<Backend, string>, failed: Map<Backend, string>): Promise<void> {
  const qemu = process.env.BERTH_QEMU || which('qemu-system-x86_64');
  if (!qemu) throw new Error('qemu-system-x86_64 not found');
  const wrapper = path.join(root, 'qemu');
  // Only the VM itself gets the 9p device (its command line has -pidfile), not `--version`.
  fs.writeFileSync(
    wrapper,
    `#!/bin/sh\ncase " $* " in *" -pidfile "*) exec '${qemu}' "$@" -virtfs 'local,path=${dirs['virtio-9p']},mount_tag=${TAG},security_model=none,id=fs0' ;; esac\nexec '${qemu}' "$@"\n`,
    { mode: 0o755 },
  );
  env.BERTH_QEMU = wrapper;
  cli(['settings', 'set', 'shares', JSON.stringify([{ path: dirs.berth }, { path: dirs['berth-mounted'] }, { path: dirs['berth-cached'], cache: true }])], env);
  const t0 = performance.now();
  cli(['start'], env);
  console.error(`bench files: VM started in ${Math.round(performance.now() - t0)} ms`);
  try {
    shell(env, `modprobe 9pnet_virtio && mkdir -p ${dirs['virtio-9p']} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none ${TAG} ${dirs['virtio-9p']} && test -f ${dirs['virtio-9p']}/big`);
  } catch (err) {
    failed.set('virtio-9p', `cannot mount it in the guest: ${errText(err)}`);
  }
  try {
    // The tarball, from the share into the VM's own tmpfs (untimed).
    shell(env, `test -f ${dirs.berth}/big && cp ${dirs.berth}/bench.tar /run/tmp/bench.tar`);
  } catch (err) {
    failed.set('berth', `the share is not mounted in the guest: ${errText(err)}`);
    if (!failed.has('virtio-9p')) shell(env, `cp ${dirs['virtio-9p']}/bench.tar /run/tmp/bench.tar`);
  }
  try {
    // A container holds the mounted backends' folders (at their own paths); its start waits
    // for the pins.
    const image = 'berth-bench/holder:1';
    docker(env, ['import', '-', image], await debianImageTar([]));
    const t1 = performance.now();
    docker(env, ['run', '-d', '--name', HOLDER, ...MOUNTED.flatMap((b) => ['-v', `${dirs[b]}:${dirs[b]}`]), image, 'sleep', '1000000']);
    console.error(`bench files: the container holding ${MOUNTED.join(' and ')} started in ${Math.round(performance.now() - t1)} ms (the agent pinned both folders' entries meanwhile)`);
  } catch (err) {
    for (const b of MOUNTED) failed.set(b, `no container could bind-mount the folder: ${errText(err)}`);
  }
  try {
    // Not measured unless the guest really caches it.
    shell(env, `test -f ${dirs['berth-cached']}/big && grep -Eq " ${dirs['berth-cached']} 9p .*[ ,]loose," /proc/mounts`);
  } catch (err) {
    failed.set('berth-cached', `the cached share is not mounted with cache=loose in the guest: ${errText(err)}`);
  }
}

/**
 * One timed workload in the guest: drops the guest's caches, then times the command alone from
 * /proc/uptime and checks its result. New names per run for what it writes, removed on the host.
 */
function runWorkload(env: NodeJS.ProcessEnv, w: Workload, dir: string, run: number, counts: { tree: number; read: number; tar: number }, sizes: FilesSizes, removeIn: 'host' | 'guest'): number {
  const setup: string[] = [];
  /** Untimed commands after the caches were dropped. */
  const warm: string[] = [];
  const after: string[] = [];
  let cmd: string;
  switch (w) {
    case 'walk':
      cmd = `n=$(find ${dir}/tree -type f | wc -l)`;
      break;
    case 'walkAgain':
      warm.push(`find ${dir}/tree -type f >/dev/null`);
      cmd = `n=$(find ${dir}/tree -type f | wc -l)`;
      break;
    case 'read':
      // find does not pass on cat's failures: any message from cat fails the run.
      cmd = `find ${readDirs(dir, sizes)} -type f -exec cat {} + >/dev/null 2>/run/tmp/bench.err`;
      after.push('if [ -s /run/tmp/bench.err ]; then head -c 300 /run/tmp/bench.err >&2; exit 1; fi');
      break;
    case 'bigRead':
      cmd = `dd if=${dir}/big of=/dev/null bs=1M 2>/dev/null`;
      break;
    case 'bigWrite':
      cmd = `dd if=/dev/zero of=${dir}/write-${run} bs=1M count=${sizes.bigMiB} conv=fsync 2>/dev/null`;
      break;
    case 'untar':
      setup.push(`mkdir ${dir}/untar-${run}`);
      cmd = `tar -xf /run/tmp/bench.tar -C ${dir}/untar-${run}`;
      break;
  }
  // `read` is a shell builtin: nothing is forked around the command.
  const script = ['set -e', ...setup, 'sync', 'echo 3 > /proc/sys/vm/drop_caches', ...warm, 'read a x < /proc/uptime', cmd, 'read b x < /proc/uptime', ...after, 'echo "T $a $b ${n:-}"'].join('; ');
  const out = shell(env, script);
  const m = /^T (\d+\.\d+) (\d+\.\d+) ?(\d*)$/m.exec(out);
  if (!m) throw new Error(`no timing in the guest's output: ${out.slice(-300)}`);
  const ms = Math.round((Number(m[2]) - Number(m[1])) * 1000);
  // Check what the workload did.
  if ((w === 'walk' || w === 'walkAgain') && Number(m[3]) !== counts.tree) throw new Error(`find counted ${m[3]} files, expected ${counts.tree}`);
  if (w === 'bigWrite') {
    const f = path.join(dir, `write-${run}`);
    const size = fs.statSync(f).size;
    fs.rmSync(f);
    if (size !== sizes.bigMiB * MIB) throw new Error(`the written file has ${size} bytes on the host, expected ${sizes.bigMiB * MIB}`);
  }
  if (w === 'untar') {
    const d = path.join(dir, `untar-${run}`);
    const n = countFiles(d);
    if (removeIn === 'guest') shell(env, `rm -rf ${d}`);
    else fs.rmSync(d, { recursive: true, force: true });
    if (n !== counts.tar) throw new Error(`unpacked ${n} files, expected ${counts.tar}`);
  }
  return ms;
}

/** The folders the read workload reads: the whole tree, or its first readDirs folders. */
function readDirs(dir: string, sizes: FilesSizes): string {
  if (sizes.readDirs >= sizes.treeDirs) return `${dir}/tree`;
  return Array.from({ length: sizes.readDirs }, (_, i) => `${dir}/tree/d${String(i).padStart(3, '0')}`).join(' ');
}

/** Small files of 1–4 KiB, sizes and contents from a fixed seed (the same for both backends). */
function smallFiles(dir: string, dirs: number, perDir: number): number {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const pool = Buffer.alloc(4096);
  for (let i = 0; i < pool.length; i++) pool[i] = Math.floor(rand() * 256);
  let bytes = 0;
  for (let d = 0; d < dirs; d++) {
    const sub = path.join(dir, `d${String(d).padStart(3, '0')}`);
    fs.mkdirSync(sub, { recursive: true });
    for (let f = 0; f < perDir; f++) {
      const size = 1024 + Math.floor(rand() * 3072);
      fs.writeFileSync(path.join(sub, `f${String(f).padStart(3, '0')}.txt`), pool.subarray(0, size));
      bytes += size;
    }
  }
  return bytes;
}

/** One backend's folder: the tree and the big file. */
function makeData(dir: string, sizes: FilesSizes): void {
  fs.mkdirSync(dir, { recursive: true });
  smallFiles(path.join(dir, 'tree'), sizes.treeDirs, sizes.treeFilesPerDir);
  const chunk = Buffer.alloc(MIB);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 2654435761) >>> 24;
  const fd = fs.openSync(path.join(dir, 'big'), 'w');
  for (let i = 0; i < sizes.bigMiB; i++) fs.writeSync(fd, chunk);
  fs.closeSync(fd);
}

/** The tarball (ustar, by the host's tar) of small files, built from a scratch folder. */
function makeTarball(src: string, tarball: string, sizes: FilesSizes): void {
  smallFiles(path.join(src, 'pkg'), sizes.tarDirs, sizes.tarFilesPerDir);
  execFileSync('tar', ['--format=ustar', '-cf', tarball, '-C', src, 'pkg'], { stdio: ['ignore', 'ignore', 'inherit'] });
  fs.rmSync(src, { recursive: true, force: true });
}

function countFiles(dir: string): number {
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) n++;
  return n;
}

/** The docker CLI on berth's socket (the default path in this BERTH_HOME). */
function docker(env: NodeJS.ProcessEnv, args: string[], input?: Buffer): string {
  const host = `unix://${path.join(env.BERTH_HOME!, 'run', 'docker.sock')}`;
  return execFileSync('docker', ['-H', host, ...args], { env, encoding: 'utf8', input, stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'], timeout: 600_000, maxBuffer: 64 * MIB });
}

function cli(args: string[], env: NodeJS.ProcessEnv): string {
  return execFileSync(berth, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
}

function shell(env: NodeJS.ProcessEnv, script: string): string {
  return execFileSync(berth, ['shell', '--', 'sh', '-c', script], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 900_000 });
}

function errText(err: unknown): string {
  const e = err as Error & { stderr?: string };
  return `${e.message.split('\n')[0]}${e.stderr ? `: ${String(e.stderr).trim().slice(-300)}` : ''}`;
}
