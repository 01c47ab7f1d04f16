import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError, toBerthError } from '../util/errors.js';
import { silentLogger, type Logger } from '../util/log.js';
import { noProgress, step, type ProgressListener } from '../util/progress.js';
import { downloadPackages, prepareAptState, resolveClosure, updatePrivateIndices, type AptContext, type ResolvedPackage } from './apt.js';
import { snapshotBaseInputs, snapshotPackInputs, type BaseInputPaths } from './cache-key.js';
import { createMergedUsrTree, extractAll, extractDeb, kernelReleaseOf, prune } from './extract.js';
import { applyFixups, applyPackFixups, copyOverlay, installAgent } from './fixups.js';
import { checkHostTools } from './host-tools.js';
import { buildInitramfs } from './initramfs.js';
import { extractVmlinux } from './kernel.js';
import { acquireBuildLock, isAlive } from './lock.js';
import { HOST_SOURCE, packageName, type Manifest } from './manifest.js';
import { prepareModules } from './modules.js';
import { makeSquashfs } from './rootfs.js';
import { aborted, throwIfAborted } from './run.js';

/**
 * The guest image builder (docs/image.md). Two kinds of image, each built from its own section of
 * the manifest and cached under its own key:
 * - the base (kernel, initramfs, a read-only squashfs root with init, agent and tools), stored
 *   under <cacheDir>/images/<key>/;
 * - an engine version pack (one squashfs with the engine's packages and their whole closure, laid
 *   over the base root at boot), stored under <cacheDir>/packs/<key>/.
 *
 * Atomicity: everything is written into <key>.partial and renamed to <key> as the last step, so an
 * image directory is either complete or absent. Scratch space (apt state, unpacked trees) lives in
 * <cacheDir>/tmp/build-<key>-<pid> and is removed whether the build succeeds or fails.
 */
export interface BuildOptions extends BaseInputPaths {
  /** $BERTH_CACHE: debs in <cacheDir>/debs, images in <cacheDir>/images/<key>, packs in <cacheDir>/packs/<key>. */
  cacheDir: string;
  onProgress?: ProgressListener;
  log?: Logger;
  signal?: AbortSignal;
  /** Rebuild even when the key is cached. */
  force?: boolean;
}

/** versions.json of the base (and /etc/berth/image.json in the guest): what the image holds. */
export interface ImageVersions {
  key: string;
  builtAt: string;
  manifestName: string;
  kernel: { package: string; version: string; release: string };
  /** The nodejs package version. */
  node: string;
  agentSha256: string;
  /** Every package installed into the root image → version. */
  packages: Record<string, string>;
}

/** versions.json of a pack (and /etc/berth/engine.json in the guest). */
export interface PackVersions {
  id: string;
  title: string;
  key: string;
  builtAt: string;
  /** The engine's upstream version (docker.io's, without Debian's revision), e.g. "26.1.5". */
  engineVersion: string;
  /** docker.io, containerd, runc and, where present, docker-compose and docker-buildx → Debian version. */
  engine: Record<string, string>;
  /** The emulators kept for binfmt_misc. */
  emulators: string[];
  packages: Record<string, string>;
}

export interface ImageInfo {
  key: string;
  dir: string;
  vmlinux: string;
  initramfs: string;
  rootfs: string;
  versions: ImageVersions;
  /** True when the image came from the cache (nothing was built). */
  cached: boolean;
}

export interface PackInfo {
  id: string;
  key: string;
  dir: string;
  squashfs: string;
  /** The pack's docker CLI, for hosts without one. */
  dockerCli: string | undefined;
  /** The pack's docker CLI plugins (docker-compose, docker-buildx) by plugin file name. */
  cliPlugins: Record<string, string>;
  versions: PackVersions;
  cached: boolean;
}

export const IMAGE_FILES = {
  vmlinux: 'vmlinux',
  initramfs: 'initramfs.cpio',
  rootfs: 'rootfs.squashfs',
  versions: 'versions.json',
  manifest: 'manifest.json',
} as const;

export const PACK_FILES = {
  squashfs: 'pack.squashfs',
  versions: 'versions.json',
  docker: 'docker',
  plugins: 'cli-plugins',
} as const;

/** Host-side CLI plugins a pack may carry, copied out of its tree. */
const CLI_PLUGINS = ['docker-compose', 'docker-buildx'];
const PACK_VERSION_PACKAGES = ['docker.io', 'containerd', 'runc', 'docker-compose', 'docker-buildx'];

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** The base image stored in `dir`, or undefined if it is absent or incomplete. */
async function readImage(dir: string, key: string, cached: boolean): Promise<ImageInfo | undefined> {
  const versions = await readJson<ImageVersions>(path.join(dir, IMAGE_FILES.versions));
  if (versions?.key !== key) return undefined;
  for (const f of [IMAGE_FILES.vmlinux, IMAGE_FILES.initramfs, IMAGE_FILES.rootfs]) if (!(await exists(path.join(dir, f)))) return undefined;
  return { key, dir, vmlinux: path.join(dir, IMAGE_FILES.vmlinux), initramfs: path.join(dir, IMAGE_FILES.initramfs), rootfs: path.join(dir, IMAGE_FILES.rootfs), versions, cached };
}

/** The pack stored in `dir`, or undefined if it is absent or incomplete. */
async function readPack(dir: string, key: string, cached: boolean): Promise<PackInfo | undefined> {
  const versions = await readJson<PackVersions>(path.join(dir, PACK_FILES.versions));
  if (versions?.key !== key) return undefined;
  const squashfs = path.join(dir, PACK_FILES.squashfs);
  if (!(await exists(squashfs))) return undefined;
  const docker = path.join(dir, PACK_FILES.docker);
  const cliPlugins: Record<string, string> = {};
  for (const name of CLI_PLUGINS) {
    const f = path.join(dir, PACK_FILES.plugins, name);
    if (await exists(f)) cliPlugins[name] = f;
  }
  return { id: versions.id, key, dir, squashfs, dockerCli: (await exists(docker)) ? docker : undefined, cliPlugins, versions, cached };
}

/** The cached base for these inputs, or undefined. Never builds, never runs apt. */
export async function findImage(opts: BaseInputPaths & { cacheDir: string }): Promise<ImageInfo | undefined> {
  const { key } = await snapshotBaseInputs(opts);
  return readImage(path.join(opts.cacheDir, 'images', key), key, true);
}

/** The cached pack `id`, or undefined. Never builds. ENGINE_UNKNOWN if the manifest has no such pack. */
export async function findPack(opts: { manifestPath: string; cacheDir: string }, id: string): Promise<PackInfo | undefined> {
  const { key } = await snapshotPackInputs(opts, id);
  return readPack(path.join(opts.cacheDir, 'packs', key), key, true);
}

interface Frame {
  staging: string;
  work: string;
  emit: ProgressListener;
  log: Logger;
  signal: AbortSignal | undefined;
  /** A progress step `${prefix}.${name}` whose unexpected errors become IMAGE_BUILD_FAILED naming the step. */
  step: <T>(name: string, title: string, fn: (setDetail: (d: string) => void) => Promise<T>) => Promise<T>;
}

/**
 * The cached image of `key` under <cacheDir>/<kind>/, or a build of it: a cache hit is one
 * `${prefix}.cache` step; otherwise the build runs under the key's lock, in a staging folder that
 * is renamed into place only when complete.
 */
async function cachedOrBuilt<T>(
  opts: BuildOptions,
  kind: 'images' | 'packs',
  prefix: string,
  key: string,
  read: (dir: string, cached: boolean) => Promise<T | undefined>,
  build: (f: Frame) => Promise<void>,
): Promise<T> {
  const emit = opts.onProgress ?? noProgress;
  const log = opts.log ?? silentLogger;
  const signal = opts.signal;
  const dir = path.join(opts.cacheDir, kind);
  const finalDir = path.join(dir, key);
  const cacheHit = async (): Promise<T | undefined> => {
    if (opts.force) return undefined;
    const hit = await read(finalDir, true);
    if (hit) await step(emit, `${prefix}.cache`, kind === 'images' ? 'Find the guest image in the cache' : 'Find the engine pack in the cache', async (d) => d('cache hit'));
    return hit;
  };
  const hit = await cacheHit();
  if (hit) return hit;

  await checkHostTools();
  await fs.mkdir(dir, { recursive: true });
  const release = await acquireBuildLock(path.join(dir, `${key}.lock`), signal, (pid) =>
    emit({ type: 'note', level: 'info', message: `Waiting for another build of the same image (pid ${pid}) to finish.`, at: Date.now() }),
  );
  try {
    // Another process may have finished the same build while we waited for the lock.
    const again = await cacheHit();
    if (again) return again;
    const t0 = performance.now();
    const staging = `${finalDir}.partial`;
    const tmpRoot = path.join(opts.cacheDir, 'tmp');
    const work = path.join(tmpRoot, `build-${key.slice(0, 16)}-${process.pid}`);
    await removeStaleWorkDirs(tmpRoot, log);
    await fs.rm(staging, { recursive: true, force: true }); // left by a crashed build of this key
    await fs.rm(work, { recursive: true, force: true });
    await fs.mkdir(staging, { recursive: true });
    await fs.mkdir(work, { recursive: true });
    const frameStep = async <R>(name: string, title: string, fn: (setDetail: (d: string) => void) => Promise<R>): Promise<R> => {
      throwIfAborted(signal);
      const result = await step(emit, `${prefix}.${name}`, title, async (d) => {
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
      await build({ staging, work, emit, log, signal, step: frameStep });
      await swapIntoPlace(staging, finalDir);
    } catch (err) {
      await fs.rm(staging, { recursive: true, force: true }).catch(() => {});
      throw err;
    } finally {
      await fs.rm(work, { recursive: true, force: true }).catch(() => {});
    }
    const info = await read(finalDir, false);
    if (!info) throw new BerthError('IMAGE_BUILD_FAILED', `The image ${finalDir} was written but cannot be read back.`, { hint: 'Build again with --force.' });
    log.info(kind === 'images' ? 'guest image built' : 'engine pack built', { key, ms: Math.round(performance.now() - t0), dir: finalDir });
    return info;
  } finally {
    await release();
  }
}

/** Apt state for one build: the host's indices, or a private source's (refreshed first). */
function aptContext(f: Frame, opts: BuildOptions, manifest: Manifest, source: string): AptContext {
  const ctx: AptContext = { stateDir: path.join(f.work, 'apt'), debsDir: path.join(opts.cacheDir, 'debs'), signal: f.signal };
  if (source !== HOST_SOURCE) {
    const spec = manifest.sources[source]!;
    ctx.source = { name: source, spec, listsDir: path.join(opts.cacheDir, 'apt', `${source}-${crypto.createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 12)}`, 'lists') };
  }
  return ctx;
}

/** Downloads each part's packages with its own apt state into the deb cache, as one progress step. */
async function downloadStep(f: Frame, prefix: string, parts: Array<[AptContext, ResolvedPackage[]]>): Promise<void> {
  await f.step('download', 'Download the packages', async (d) => {
    // A package in two parts (the kernel's closure shares packages with the userland's) is fetched once.
    const seen = new Set<string>();
    const unique = parts.map(([apt, pkgs]): [AptContext, ResolvedPackage[]] => [apt, pkgs.filter((p) => !seen.has(p.filename) && seen.add(p.filename))]);
    const all = unique.flatMap(([, pkgs]) => pkgs);
    const total = sumSizes(all);
    let before = 0;
    let cached = 0;
    for (const [apt, pkgs] of unique) {
      if (pkgs.length === 0) continue;
      let first: number | undefined;
      const offset = before;
      await downloadPackages(apt, pkgs, (done) => {
        first ??= done;
        f.emit({ type: 'step-progress', id: `${prefix}.download`, done: Math.min(total, offset + done), total, unit: 'bytes', at: Date.now() });
      });
      cached += first ?? 0;
      before += sumSizes(pkgs);
    }
    d(`${all.length} packages, ${formatMB(total)}${cached ? ` (${formatMB(cached)} already cached)` : ''}`);
  });
}

/** Unpacks `pkgs` into a fresh merged-/usr tree (in parallel, as one progress event stream) and prunes it. */
async function unpackUserland(f: Frame, prefix: string, apt: AptContext, pkgs: ResolvedPackage[], tree: string, pruned: string[]): Promise<void> {
  await createMergedUsrTree(tree);
  const debs = pkgs.map((p) => path.join(apt.debsDir, p.filename));
  await extractAll(debs, tree, {
    scratch: path.join(f.work, 'tars'),
    parallel: Math.max(2, Math.min(8, os.availableParallelism())),
    onDone: (n) => f.emit({ type: 'step-progress', id: `${prefix}.extract`, done: n, total: debs.length, unit: 'packages', at: Date.now() }),
    signal: f.signal,
  });
  await prune(tree, pruned);
}

/** `closure` without the manifest's excluded packages; logs the exclusions that matched nothing. */
function withoutExcluded(closure: ResolvedPackage[], manifest: Manifest, log: Logger): ResolvedPackage[] {
  const excluded = new Set(manifest.exclude);
  const unused = manifest.exclude.filter((n) => !closure.some((p) => p.name === n));
  if (unused.length > 0) log.debug('excluded packages not in the closure', { packages: unused.join(' ') });
  return closure.filter((p) => !excluded.has(p.name));
}

function packageVersions(pkgs: ResolvedPackage[]): Record<string, string> {
  return Object.fromEntries(pkgs.map((p) => [p.name, p.version] as const).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/**
 * Builds the base, or returns the cached one (cached: true, one 'image.cache' step) when the key
 * is already built and `force` is not set.
 */
export async function buildImage(opts: BuildOptions): Promise<ImageInfo> {
  throwIfAborted(opts.signal);
  const inputs = await snapshotBaseInputs(opts);
  const { key, manifest } = inputs;
  return cachedOrBuilt(opts, 'images', 'image', key, (dir, cached) => readImage(dir, key, cached), async (f) => {
    const apt = aptContext(f, opts, manifest, manifest.base.source);
    await prepareAptState(apt);
    // The kernel may come from another source (Debian 13's kernel on a Debian 12 base).
    const kernelSource = manifest.base.kernel.source ?? manifest.base.source;
    const kernelApt = kernelSource === manifest.base.source ? apt : { ...aptContext(f, opts, manifest, kernelSource), stateDir: path.join(f.work, 'apt-kernel') };
    if (kernelApt !== apt) await prepareAptState(kernelApt);

    // 1. resolve. The userland closure and the kernel's are resolved separately: only the kernel
    // package itself is used, and its dependencies (initramfs-tools, udev, linux-base, ...) must not
    // end up in the image.
    const resolved = await f.step('resolve', 'Resolve the Debian packages', async (d) => {
      await updatePrivateIndices(apt);
      if (kernelApt !== apt) await updatePrivateIndices(kernelApt);
      const userlandClosure = await resolveClosure(apt, manifest.base.packages);
      const kernelClosure = await resolveClosure(kernelApt, [manifest.base.kernel.package]);
      const installed = withoutExcluded(userlandClosure, manifest, f.log);
      const inUserland = new Set(userlandClosure.map((p) => p.filename));
      const kernelOnly = kernelClosure.filter((p) => !inUserland.has(p.filename));
      d(`${installed.length} packages to install (${userlandClosure.length - installed.length} excluded), ${kernelClosure.length} for the kernel, ${formatMB(sumSizes([...userlandClosure, ...kernelOnly]))}`);
      return { installed, userlandClosure, kernelCandidates: kernelOnly.length > 0 ? kernelOnly : kernelClosure };
    });
    f.log.debug('resolved packages', { packages: resolved.installed.map((p) => `${p.name}=${p.version}`).join(' ') });

    // 2. download (each closure from its own source, into the one deb cache)
    await downloadStep(f, 'image', [
      [apt, resolved.userlandClosure],
      [kernelApt, resolved.kernelCandidates],
    ]);
    const debPath = (p: ResolvedPackage) => path.join(apt.debsDir, p.filename);

    // 3. extract (userland into the merged-/usr tree, the kernel package into its own tree)
    const tree = path.join(f.work, 'root');
    const kernelTree = path.join(f.work, 'kernel');
    const kernel = await f.step('extract', 'Unpack the packages (no maintainer scripts)', async (d) => {
      const kernel = await findKernelPackage(resolved.kernelCandidates, debPath, manifest, f.signal);
      await fs.mkdir(kernelTree);
      // The kernel goes into its own tree, so it can be unpacked alongside (xz-bound: ~5 s).
      await Promise.all([unpackUserland(f, 'image', apt, resolved.installed, tree, manifest.prune), extractDeb(debPath(kernel.pkg), kernelTree, f.signal)]);
      d(`${resolved.installed.length} packages + ${kernel.pkg.name} ${kernel.pkg.version}`);
      return kernel;
    });

    // 4./5. modules (fixups run with the rootfs step, after versions.json is known)
    const k = manifest.base.kernel;
    const modules = await f.step('modules', 'Select the kernel modules', async (d) => {
      const m = await prepareModules(kernelTree, tree, kernel.release, k.modules, k.initramfsModules, f.signal);
      if (m.builtin.length > 0) f.log.info('modules built into the kernel, nothing to load', { modules: m.builtin.join(' ') });
      d(`${m.kept.length} of ${m.available} modules kept, ${m.boot.length} in the initramfs`);
      return m;
    });

    // 6. kernel
    await f.step('kernel', 'Decompress the kernel (PVH boot)', async (d) => {
      const r = await extractVmlinux(path.join(kernelTree, 'boot', `vmlinuz-${kernel.release}`), path.join(f.staging, IMAGE_FILES.vmlinux), f.signal);
      d(`${kernel.release}, ${r.compression} ${formatMB(r.length)} → ${formatMB(r.size)}`);
    });

    // 7. initramfs
    await f.step('initramfs', 'Write the initramfs', async (d) => {
      const cpio = await buildInitramfs(
        { initScript: path.join(opts.guestDir, 'initramfs-init'), busybox: path.join(tree, 'usr', 'bin', 'busybox'), modules: modules.boot },
        f.signal,
      );
      await fs.writeFile(path.join(f.staging, IMAGE_FILES.initramfs), cpio, { mode: 0o644 });
      d(`${modules.boot.length} modules, ${formatMB(cpio.length)}`);
    });

    // 8. rootfs (with the fixups, guest/rootfs and the agent)
    const versions: ImageVersions = {
      key,
      builtAt: new Date().toISOString(),
      manifestName: manifest.name,
      kernel: { package: kernel.pkg.name, version: kernel.pkg.version, release: kernel.release },
      node: versionOf(resolved.installed, 'nodejs'),
      agentSha256: inputs.agentSha256,
      packages: packageVersions(resolved.installed),
    };
    const versionsJson = JSON.stringify(versions, null, 2) + '\n';
    await f.step('rootfs', 'Write the read-only root image', async (d) => {
      await applyFixups(tree, { key, imageJson: versionsJson });
      const overlayFiles = await copyOverlay(path.join(opts.guestDir, 'rootfs'), tree);
      await installAgent(inputs.agent, tree);
      const out = path.join(f.staging, IMAGE_FILES.rootfs);
      await makeSquashfs(tree, out, f.signal);
      d(`${formatMB((await fs.stat(out)).size)} squashfs (lz4), ${overlayFiles} file${overlayFiles === 1 ? '' : 's'} from guest/rootfs`);
    });

    // 9. finalize
    await f.step('finalize', 'Store the image', async (d) => {
      await fs.writeFile(path.join(f.staging, IMAGE_FILES.versions), versionsJson, { mode: 0o644 });
      await fs.writeFile(path.join(f.staging, IMAGE_FILES.manifest), inputs.manifestText, { mode: 0o644 });
      d(key.slice(0, 12));
    });
  });
}

/**
 * Builds the engine pack `id`, or returns the cached one. The pack is the whole closure of its
 * packages from its own source (libc included), so it runs whatever release the base is from; at
 * boot it is the upper lower layer of the root overlay, so its files win over the base's.
 */
export async function buildPack(opts: BuildOptions, id: string): Promise<PackInfo> {
  throwIfAborted(opts.signal);
  const inputs = await snapshotPackInputs(opts, id);
  const { key, manifest, pack } = inputs;
  return cachedOrBuilt(opts, 'packs', 'pack', key, (dir, cached) => readPack(dir, key, cached), async (f) => {
    const apt = aptContext(f, opts, manifest, pack.source);
    await prepareAptState(apt);
    const installed = await f.step('resolve', `Resolve the packages of engine ${pack.id}`, async (d) => {
      await updatePrivateIndices(apt);
      const closure = await resolveClosure(apt, pack.packages);
      const installed = withoutExcluded(closure, manifest, f.log);
      d(`${installed.length} packages (${closure.length - installed.length} excluded), ${formatMB(sumSizes(installed))}${pack.source === HOST_SOURCE ? '' : ` from "${pack.source}"`}`);
      return installed;
    });
    await downloadStep(f, 'pack', [[apt, installed]]);
    const tree = path.join(f.work, 'root');
    await f.step('extract', 'Unpack the packages (no maintainer scripts)', async (d) => {
      await unpackUserland(f, 'pack', apt, installed, tree, manifest.prune);
      d(`${installed.length} packages`);
    });
    const docker = versionOf(installed, 'docker.io');
    const versions: PackVersions = {
      id: pack.id,
      title: pack.title,
      key,
      builtAt: new Date().toISOString(),
      engineVersion: upstreamVersion(docker),
      engine: Object.fromEntries(PACK_VERSION_PACKAGES.filter((n) => installed.some((p) => p.name === n)).map((n) => [n, versionOf(installed, n)])),
      emulators: [],
      packages: packageVersions(installed),
    };
    await f.step('rootfs', `Write the engine ${pack.id} image`, async (d) => {
      versions.emulators = (await applyPackFixups(tree, pack, JSON.stringify(versions, null, 2) + '\n')).emulators;
      await copyHostTools(tree, f.staging);
      const out = path.join(f.staging, PACK_FILES.squashfs);
      await makeSquashfs(tree, out, f.signal);
      d(`${formatMB((await fs.stat(out)).size)} squashfs (lz4), emulators: ${versions.emulators.join(' ') || 'none'}`);
    });
    await f.step('finalize', 'Store the engine pack', async (d) => {
      await fs.writeFile(path.join(f.staging, PACK_FILES.versions), JSON.stringify(versions, null, 2) + '\n', { mode: 0o644 });
      d(`${pack.id}: Docker ${versions.engineVersion}, ${key.slice(0, 12)}`);
    });
  });
}

/** Copies the pack's docker CLI and CLI plugins out of its tree, for the host (hosts without them). */
async function copyHostTools(tree: string, staging: string): Promise<void> {
  const copy = async (from: string, to: string): Promise<void> => {
    if (!(await exists(from))) return;
    await fs.mkdir(path.dirname(to), { recursive: true });
    await fs.copyFile(from, to);
    await fs.chmod(to, 0o755);
  };
  await copy(path.join(tree, 'usr', 'bin', 'docker'), path.join(staging, PACK_FILES.docker));
  for (const name of CLI_PLUGINS) await copy(path.join(tree, 'usr', 'libexec', 'docker', 'cli-plugins', name), path.join(staging, PACK_FILES.plugins, name));
}

/** "26.1.5+dfsg1-9+deb13u1+b1" → "26.1.5"; "1:2.3-4" → "2.3". */
export function upstreamVersion(debian: string): string {
  const noEpoch = debian.replace(/^[0-9]+:/, '');
  return noEpoch.replace(/[-+~].*$/, '');
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
  throw new BerthError('IMAGE_EXTRACT_FAILED', `Image build failed at step "extract": no package in the closure of ${packageName(manifest.base.kernel.package)} ships /boot/vmlinuz-*.`, {
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
