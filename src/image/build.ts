import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError, toBerthError } from '../util/errors.js';
import { silentLogger, type Logger } from '../util/log.js';
import { noProgress, step, type ProgressListener } from '../util/progress.js';
import { downloadPackages, prepareAptState, resolveClosure, type AptContext, type ResolvedPackage } from './apt.js';
import { computeImageKey, snapshotInputs, type InputSnapshot } from './cache-key.js';
import { createMergedUsrTree, extractAll, extractDeb, kernelReleaseOf, prune } from './extract.js';
import { applyFixups, copyOverlay, installAgent } from './fixups.js';
import { checkHostTools } from './host-tools.js';
import { buildInitramfs } from './initramfs.js';
import { extractVmlinux } from './kernel.js';
import { acquireBuildLock, isAlive } from './lock.js';
import { packageName, userlandPackages, type Manifest } from './manifest.js';
import { prepareModules } from './modules.js';
import { makeSquashfs } from './rootfs.js';
import { aborted, throwIfAborted } from './run.js';

/**
 * The guest image builder (docs/image.md): manifest → vmlinux + initramfs + read-only squashfs
 * root, stored under <cacheDir>/images/<key>/ and reused while the key is unchanged.
 *
 * Atomicity: everything is written into <key>.partial and renamed to <key> as the last step, so an
 * image directory is either complete or absent. Scratch space (apt state, unpacked trees) lives in
 * <cacheDir>/tmp/build-<key>-<pid> and is removed whether the build succeeds or fails.
 */
export interface BuildOptions {
  /** e.g. <repo>/guest/manifest.json */
  manifestPath: string;
  /** <repo>/guest: `initramfs-init` and `rootfs/` (copied over the root, modes preserved). */
  guestDir: string;
  /** The agent, one JS file, installed as /usr/lib/berth/agent.cjs. */
  agentBundle: string;
  /** $BERTH_CACHE: debs in <cacheDir>/debs, images in <cacheDir>/images/<key>. */
  cacheDir: string;
  onProgress?: ProgressListener;
  log?: Logger;
  signal?: AbortSignal;
  /** Rebuild even when the key is cached. */
  force?: boolean;
}

/** versions.json (and /etc/berth/image.json in the guest): what the image holds. */
export interface ImageVersions {
  key: string;
  builtAt: string;
  manifestName: string;
  kernel: { package: string; version: string; release: string };
  /** docker.io, containerd, runc → Debian version. */
  engine: Record<string, string>;
  /** The nodejs package version. */
  node: string;
  agentSha256: string;
  /** Every package installed into the root image → version. */
  packages: Record<string, string>;
}

export interface ImageInfo {
  key: string;
  dir: string;
  vmlinux: string;
  initramfs: string;
  rootfs: string;
  /** The docker CLI from the image's docker.io, for hosts without one. */
  dockerCli: string | undefined;
  versions: ImageVersions;
  /** True when the image came from the cache (nothing was built). */
  cached: boolean;
}

export const IMAGE_FILES = {
  vmlinux: 'vmlinux',
  initramfs: 'initramfs.cpio',
  rootfs: 'rootfs.squashfs',
  versions: 'versions.json',
  manifest: 'manifest.json',
  docker: 'docker',
} as const;

const ENGINE_PACKAGES = ['docker.io', 'containerd', 'runc'];

type Inputs = Pick<BuildOptions, 'manifestPath' | 'guestDir' | 'agentBundle' | 'cacheDir'>;

/** The image stored in `dir`, or undefined if it is absent or incomplete. */
async function readImage(dir: string, key: string, cached: boolean): Promise<ImageInfo | undefined> {
  let versions: ImageVersions;
  try {
    versions = JSON.parse(await fs.readFile(path.join(dir, IMAGE_FILES.versions), 'utf8')) as ImageVersions;
    if (versions.key !== key) return undefined;
    for (const f of [IMAGE_FILES.vmlinux, IMAGE_FILES.initramfs, IMAGE_FILES.rootfs]) await fs.access(path.join(dir, f));
  } catch {
    return undefined;
  }
  const docker = path.join(dir, IMAGE_FILES.docker);
  const hasDocker = await fs.access(docker).then(
    () => true,
    () => false,
  );
  return {
    key,
    dir,
    vmlinux: path.join(dir, IMAGE_FILES.vmlinux),
    initramfs: path.join(dir, IMAGE_FILES.initramfs),
    rootfs: path.join(dir, IMAGE_FILES.rootfs),
    dockerCli: hasDocker ? docker : undefined,
    versions,
    cached,
  };
}

/** The cached image for these inputs, or undefined. Never builds, never runs apt. */
export async function findImage(opts: Inputs): Promise<ImageInfo | undefined> {
  const key = await computeImageKey(opts);
  return readImage(path.join(opts.cacheDir, 'images', key), key, true);
}

/**
 * Builds the image, or returns the cached one (cached: true, one 'image.cache' step) when the key
 * is already built and `force` is not set.
 */
export async function buildImage(opts: BuildOptions): Promise<ImageInfo> {
  const emit = opts.onProgress ?? noProgress;
  const log = opts.log ?? silentLogger;
  throwIfAborted(opts.signal);
  const inputs = await snapshotInputs(opts);
  const key = inputs.key;
  const imagesDir = path.join(opts.cacheDir, 'images');
  const finalDir = path.join(imagesDir, key);
  const cacheHit = async (): Promise<ImageInfo | undefined> => {
    if (opts.force) return undefined;
    const hit = await readImage(finalDir, key, true);
    if (hit) await step(emit, 'image.cache', 'Find the guest image in the cache', async (d) => d('cache hit'));
    return hit;
  };
  const hit = await cacheHit();
  if (hit) return hit;

  await checkHostTools();
  await fs.mkdir(imagesDir, { recursive: true });
  const release = await acquireBuildLock(path.join(imagesDir, `${key}.lock`), opts.signal, (pid) =>
    emit({ type: 'note', level: 'info', message: `Waiting for another build of the same image (pid ${pid}) to finish.`, at: Date.now() }),
  );
  try {
    // Another process may have finished the same build while we waited for the lock.
    const hit = await cacheHit();
    if (hit) return hit;
    const t0 = performance.now();
    const info = await buildLocked({ opts, inputs, manifest: inputs.manifest, key, finalDir, emit, log });
    log.info('guest image built', { key, ms: Math.round(performance.now() - t0), dir: finalDir });
    return info;
  } finally {
    await release();
  }
}

interface BuildContext {
  opts: BuildOptions;
  inputs: InputSnapshot;
  manifest: Manifest;
  key: string;
  finalDir: string;
  emit: ProgressListener;
  log: Logger;
}

async function buildLocked(ctx: BuildContext): Promise<ImageInfo> {
  const { opts, inputs, manifest, key, finalDir, emit, log } = ctx;
  const signal = opts.signal;
  const staging = `${finalDir}.partial`;
  const tmpRoot = path.join(opts.cacheDir, 'tmp');
  const work = path.join(tmpRoot, `build-${key.slice(0, 16)}-${process.pid}`);
  await removeStaleWorkDirs(tmpRoot, log);
  await fs.rm(staging, { recursive: true, force: true }); // left by a crashed build of this key
  await fs.rm(work, { recursive: true, force: true });
  await fs.mkdir(staging, { recursive: true });
  await fs.mkdir(work, { recursive: true });

  /** A progress step whose unexpected errors become IMAGE_BUILD_FAILED naming the step. */
  const imageStep = async <T>(name: string, title: string, fn: (setDetail: (d: string) => void) => Promise<T>): Promise<T> => {
    throwIfAborted(signal);
    const result = await step(emit, `image.${name}`, title, async (d) => {
      try {
        return await fn(d);
      } catch (err) {
        if (err instanceof BerthError) throw err;
        if (signal?.aborted) throw aborted();
        const e = toBerthError(err, 'IMAGE_BUILD_FAILED');
        throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "${name}": ${e.message}`, {
          hint: 'Check the free space and permissions of the cache directory (BERTH_CACHE), then build again.',
          cause: err,
        });
      }
    });
    throwIfAborted(signal);
    return result;
  };

  try {
    const apt: AptContext = { stateDir: path.join(work, 'apt'), debsDir: path.join(opts.cacheDir, 'debs'), signal };
    await prepareAptState(apt);

    // 1. resolve. The userland closure and the kernel's are resolved separately: only the kernel
    // package itself is used, and its dependencies (initramfs-tools, udev, linux-base, ...) must not
    // end up in the image.
    const resolved = await imageStep('resolve', 'Resolve the Debian packages', async (d) => {
      const userlandClosure = await resolveClosure(apt, userlandPackages(manifest));
      const kernelClosure = await resolveClosure(apt, [manifest.kernel.package]);
      const excluded = new Set(manifest.exclude);
      const installed = userlandClosure.filter((p) => !excluded.has(p.name));
      const inUserland = new Set(userlandClosure.map((p) => p.filename));
      const kernelOnly = kernelClosure.filter((p) => !inUserland.has(p.filename));
      const unused = manifest.exclude.filter((n) => !userlandClosure.some((p) => p.name === n));
      if (unused.length > 0) log.debug('excluded packages not in the closure', { packages: unused.join(' ') });
      const all = [...userlandClosure, ...kernelOnly];
      d(`${installed.length} packages to install (${userlandClosure.length - installed.length} excluded), ${kernelClosure.length} for the kernel, ${formatMB(sumSizes(all))}`);
      return { installed, kernelCandidates: kernelOnly.length > 0 ? kernelOnly : kernelClosure, all };
    });
    log.debug('resolved packages', { packages: resolved.installed.map((p) => `${p.name}=${p.version}`).join(' ') });

    // 2. download
    await imageStep('download', 'Download the packages', async (d) => {
      let first: number | undefined;
      await downloadPackages(apt, resolved.all, (done, total) => {
        first ??= done;
        emit({ type: 'step-progress', id: 'image.download', done, total, unit: 'bytes', at: Date.now() });
      });
      const total = sumSizes(resolved.all);
      d(`${resolved.all.length} packages, ${formatMB(total)}${first ? ` (${formatMB(first)} already cached)` : ''}`);
    });
    const debPath = (p: ResolvedPackage) => path.join(apt.debsDir, p.filename);

    // 3. extract (userland into the merged-/usr tree, the kernel package into its own tree)
    const tree = path.join(work, 'root');
    const kernelTree = path.join(work, 'kernel');
    const kernel = await imageStep('extract', 'Unpack the packages (no maintainer scripts)', async (d) => {
      const kernel = await findKernelPackage(resolved.kernelCandidates, debPath, manifest, signal);
      await createMergedUsrTree(tree);
      await fs.mkdir(kernelTree);
      const debs = resolved.installed.map(debPath);
      // The kernel goes into its own tree, so it can be unpacked alongside (xz-bound: ~5 s).
      await Promise.all([
        extractAll(debs, tree, {
          scratch: path.join(work, 'tars'),
          parallel: Math.max(2, Math.min(8, os.availableParallelism())),
          onDone: (n) => emit({ type: 'step-progress', id: 'image.extract', done: n, total: debs.length, unit: 'packages', at: Date.now() }),
          signal,
        }),
        extractDeb(debPath(kernel.pkg), kernelTree, signal),
      ]);
      await prune(tree, manifest.prune);
      d(`${debs.length} packages + ${kernel.pkg.name} ${kernel.pkg.version}`);
      return kernel;
    });

    // 4./5. modules (fixups run with the rootfs step, after versions.json is known)
    const modules = await imageStep('modules', 'Select the kernel modules', async (d) => {
      const m = await prepareModules(kernelTree, tree, kernel.release, manifest.kernel.modules, manifest.kernel.initramfsModules, signal);
      if (m.builtin.length > 0) log.info('modules built into the kernel, nothing to load', { modules: m.builtin.join(' ') });
      d(`${m.kept.length} of ${m.available} modules kept, ${m.boot.length} in the initramfs`);
      return m;
    });

    // 6. kernel
    await imageStep('kernel', 'Decompress the kernel (PVH boot)', async (d) => {
      const r = await extractVmlinux(path.join(kernelTree, 'boot', `vmlinuz-${kernel.release}`), path.join(staging, IMAGE_FILES.vmlinux), signal);
      d(`${kernel.release}, ${r.compression} ${formatMB(r.length)} → ${formatMB(r.size)}`);
    });

    // 7. initramfs
    await imageStep('initramfs', 'Write the initramfs', async (d) => {
      const cpio = await buildInitramfs(
        { initScript: path.join(opts.guestDir, 'initramfs-init'), busybox: path.join(tree, 'usr', 'bin', 'busybox'), modules: modules.boot },
        signal,
      );
      await fs.writeFile(path.join(staging, IMAGE_FILES.initramfs), cpio, { mode: 0o644 });
      d(`${modules.boot.length} modules, ${formatMB(cpio.length)}`);
    });

    // 8. rootfs (with the fixups, guest/rootfs and the agent)
    const versions: ImageVersions = {
      key,
      builtAt: new Date().toISOString(),
      manifestName: manifest.name,
      kernel: { package: kernel.pkg.name, version: kernel.pkg.version, release: kernel.release },
      engine: Object.fromEntries(ENGINE_PACKAGES.map((n) => [n, versionOf(resolved.installed, n)])),
      node: versionOf(resolved.installed, 'nodejs'),
      agentSha256: inputs.agentSha256,
      packages: Object.fromEntries(resolved.installed.map((p) => [p.name, p.version] as const).sort(([a], [b]) => (a < b ? -1 : 1))),
    };
    const versionsJson = JSON.stringify(versions, null, 2) + '\n';
    await imageStep('rootfs', 'Write the read-only root image', async (d) => {
      await applyFixups(tree, { key, imageJson: versionsJson });
      const overlayFiles = await copyOverlay(path.join(opts.guestDir, 'rootfs'), tree);
      await installAgent(inputs.agent, tree);
      const docker = path.join(tree, 'usr', 'bin', 'docker');
      if (await exists(docker)) {
        await fs.copyFile(docker, path.join(staging, IMAGE_FILES.docker));
        await fs.chmod(path.join(staging, IMAGE_FILES.docker), 0o755);
      }
      const out = path.join(staging, IMAGE_FILES.rootfs);
      await makeSquashfs(tree, out, signal);
      d(`${formatMB((await fs.stat(out)).size)} squashfs (lz4), ${overlayFiles} file${overlayFiles === 1 ? "" : "s"} from guest/rootfs`);
    });

    // 9. finalize
    await imageStep('finalize', 'Store the image', async (d) => {
      await fs.writeFile(path.join(staging, IMAGE_FILES.versions), versionsJson, { mode: 0o644 });
      await fs.writeFile(path.join(staging, IMAGE_FILES.manifest), inputs.manifestText, { mode: 0o644 });
      await swapIntoPlace(staging, finalDir);
      d(key.slice(0, 12));
    });
    const info = await readImage(finalDir, key, false);
    if (!info) throw new BerthError('IMAGE_BUILD_FAILED', `The image ${finalDir} was written but cannot be read back.`, { hint: 'Build again with --force.' });
    return info;
  } catch (err) {
    await fs.rm(staging, { recursive: true, force: true }).catch(() => {});
    throw err;
  } finally {
    await fs.rm(work, { recursive: true, force: true }).catch(() => {});
  }
}

/**
 * The package behind kernel.package that ships /boot/vmlinuz-<release>, and that release. The
 * linux-image-* packages are looked at first (cheap), then any other package of the kernel closure.
 */
async function findKernelPackage(
  candidates: ResolvedPackage[],
  debPath: (p: ResolvedPackage) => string,
  manifest: Manifest,
  signal: AbortSignal | undefined,
): Promise<{ pkg: ResolvedPackage; release: string }> {
  const ordered = [...candidates].sort((a, b) => Number(!a.name.startsWith('linux-image-')) - Number(!b.name.startsWith('linux-image-')));
  for (const pkg of ordered) {
    const release = await kernelReleaseOf(debPath(pkg), signal);
    if (release) return { pkg, release };
  }
  throw new BerthError('IMAGE_EXTRACT_FAILED', `Image build failed at step "extract": no package in the closure of ${packageName(manifest.kernel.package)} ships /boot/vmlinuz-*.`, {
    hint: 'kernel.package in guest/manifest.json must name a Debian kernel image package or metapackage (e.g. linux-image-amd64).',
    details: { candidates: candidates.map((p) => p.name) },
  });
}

/**
 * Moves the finished staging directory to its final name. A previous image of the same key
 * (--force) is first renamed aside, so the final name always points at a complete image.
 */
async function swapIntoPlace(staging: string, finalDir: string): Promise<void> {
  const old = `${finalDir}.old-${process.pid}`;
  let hadOld = false;
  try {
    await fs.rename(finalDir, old);
    hadOld = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await fs.rename(staging, finalDir);
  if (hadOld) await fs.rm(old, { recursive: true, force: true });
}

/** Removes <cacheDir>/tmp/build-*-<pid> directories whose builder process is gone. */
async function removeStaleWorkDirs(tmpRoot: string, log: Logger): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(tmpRoot);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^build-[0-9a-f]+-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isAlive(pid)) continue; // ours is removed by its own build; live ones are busy
    log.debug('removing a stale build directory', { dir: name });
    await fs.rm(path.join(tmpRoot, name), { recursive: true, force: true }).catch(() => {});
  }
}

function versionOf(pkgs: ResolvedPackage[], name: string): string {
  return pkgs.find((p) => p.name === name)?.version ?? 'absent';
}

function sumSizes(pkgs: ResolvedPackage[]): number {
  return pkgs.reduce((n, p) => n + p.size, 0);
}

function formatMB(bytes: number): string {
  return `${(bytes / 1e6).toFixed(bytes < 10e6 ? 1 : 0)} MB`;
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
