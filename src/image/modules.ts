import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { BerthError } from '../util/errors.js';
import { mkdirInTree } from './fsutil.js';
import { toolPath } from './host-tools.js';
import { runTool } from './run.js';

/**
 * Kernel module selection. Debian's kernel package ships ~4,000 modules (~390 MB) and no
 * modules.dep (its postinst runs depmod). We run `depmod -b` on the unpacked package, keep only
 * the dependency closure of the modules the manifest names, and run depmod again on the image so
 * `modprobe` works in the guest. The initramfs gets its own small set, in load order, so the
 * busybox `/init` can `insmod` them in glob order without modprobe or modules.dep.
 */

/** modules.dep: relative module path → relative paths of all modules it needs. */
export type ModulesDep = Map<string, string[]>;

/** Parses modules.dep lines `path: dep1 dep2` (paths relative to lib/modules/<release>). */
export function parseModulesDep(text: string): ModulesDep {
  const dep: ModulesDep = new Map();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    dep.set(line.slice(0, i).trim(), line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
  }
  return dep;
}

/** A module's name as the kernel and modprobe see it: file name without .ko[.xz|.gz|.zst], '-' as '_'. */
export function moduleName(relPath: string): string {
  return normalizeModuleName(path.posix.basename(relPath).replace(/\.ko(\.(xz|gz|zst))?$/, ''));
}

/** The kernel treats '-' and '_' in module names alike; we compare in the '_' form. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

/** Names of modules built into the kernel (modules.builtin lists their would-be paths). */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(text.split('\n').map((l) => l.trim()).filter(Boolean).map(moduleName));
}

export interface ModuleSelection {
  /** Relative paths, every module after all of its dependencies. */
  order: string[];
  /** Requested names that are built into the kernel (nothing to load). */
  builtin: string[];
}

/**
 * The dependency closure of `names`, dependencies before dependents (a valid insmod order).
 * A name that is neither a module nor built in → IMAGE_BUILD_FAILED naming it.
 */
export function moduleClosure(dep: ModulesDep, names: string[], builtin: Set<string> = new Set()): ModuleSelection {
  const byName = new Map<string, string>();
  for (const p of dep.keys()) byName.set(moduleName(p), p);
  const order: string[] = [];
  const seen = new Set<string>();
  const builtinHits: string[] = [];
  // Depth-first post-order: a module is appended only after everything it depends on. modules.dep
  // already lists the full transitive set per module, but recursing keeps the order valid even
  // for a hand-written or partial file; `seen` is set before recursing, so a cycle cannot loop.
  const visit = (p: string) => {
    if (seen.has(p)) return;
    seen.add(p);
    // modules.dep lists dependencies so that loading from the end of the list backwards works;
    // visiting them in reverse mirrors modprobe's own order.
    for (const d of [...(dep.get(p) ?? [])].reverse()) visit(d);
    order.push(p);
  };
  for (const n of names) {
    const key = normalizeModuleName(n);
    const p = byName.get(key);
    if (p) visit(p);
    else if (builtin.has(key)) builtinHits.push(n);
    else {
      throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "modules": the kernel has no module named ${n}.`, {
        hint: 'Fix kernel.modules / kernel.initramfsModules in guest/manifest.json (the module may have been renamed in this kernel version).',
        details: { module: n },
      });
    }
  }
  return { order, builtin: builtinHits };
}

/** Files depmod reads besides the modules themselves (modules.builtin.* may be absent on old kernels). */
const METADATA = ['modules.order', 'modules.builtin', 'modules.builtin.modinfo'];

export interface PreparedModules {
  /** Modules kept in the image (relative paths). */
  kept: string[];
  /** Absolute paths (in the kernel tree) of the initramfs modules, in load order. */
  boot: string[];
  /** Modules in the kernel package. */
  available: number;
  /** Requested modules that are built into the kernel. */
  builtin: string[];
}

/**
 * Debian 13's kernel packages ship their modules under usr/lib/modules (merged /usr); Debian 12's
 * under lib/modules, where the host's depmod -b looks. A kernel tree without lib/ gets lib -> usr/lib.
 */
async function mergeKernelUsr(kernelRoot: string): Promise<void> {
  try {
    await fs.lstat(path.join(kernelRoot, 'lib'));
    return;
  } catch {
    // no lib/: merged /usr
  }
  try {
    await fs.access(path.join(kernelRoot, 'usr', 'lib', 'modules'));
  } catch {
    return; // neither: depmod reports it
  }
  await fs.symlink('usr/lib', path.join(kernelRoot, 'lib'));
}

/**
 * `kernelRoot` is the unpacked kernel package (lib/modules/<release>/...); `imageRoot` the merged-/usr
 * image tree. Copies the closure of `modules` into imageRoot/usr/lib/modules/<release>/ (same
 * relative paths) with the metadata files, and runs depmod on both trees.
 */
export async function prepareModules(
  kernelRoot: string,
  imageRoot: string,
  release: string,
  modules: string[],
  initramfsModules: string[],
  signal?: AbortSignal,
): Promise<PreparedModules> {
  const depmod = (base: string, what: string) =>
    runTool(toolPath('depmod'), ['-b', base, release], { code: 'IMAGE_BUILD_FAILED', what: `Image build failed at step "modules" (depmod on the ${what})`, signal });
  const src = path.join(kernelRoot, 'lib', 'modules', release);
  await mergeKernelUsr(kernelRoot);
  await depmod(kernelRoot, 'kernel package');
  const dep = parseModulesDep(await fs.readFile(path.join(src, 'modules.dep'), 'utf8'));
  const builtin = parseModulesBuiltin(await fs.readFile(path.join(src, 'modules.builtin'), 'utf8').catch(() => ''));
  const keep = moduleClosure(dep, modules, builtin);
  const boot = moduleClosure(dep, initramfsModules, builtin);

  const destRel = `usr/lib/modules/${release}`;
  const dest = path.join(imageRoot, destRel);
  await mkdirInTree(imageRoot, destRel);
  for (const rel of keep.order) {
    await mkdirInTree(dest, path.posix.dirname(rel));
    await fs.copyFile(path.join(src, rel), path.join(dest, rel));
  }
  for (const f of METADATA) {
    await fs.copyFile(path.join(src, f), path.join(dest, f)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
  // imageRoot/lib is a symlink to usr/lib, so depmod -b finds the modules under lib/modules.
  await depmod(imageRoot, 'image');
  // depmod creates its index files with the builder's umask; the guest's modprobe may not run as
  // root (and a umask-077 builder would otherwise produce 0600 files).
  for (const f of await fs.readdir(dest)) if (f.startsWith('modules.')) await fs.chmod(path.join(dest, f), 0o644);
  return {
    kept: keep.order,
    boot: boot.order.map((rel) => path.join(src, rel)),
    available: dep.size,
    builtin: [...new Set([...keep.builtin, ...boot.builtin])],
  };
}

/**
 * A module file's contents, uncompressed: busybox insmod in the initramfs loads plain ELF objects.
 * (Debian 12 ships plain .ko files; later releases compress them with xz.)
 */
export async function readModuleUncompressed(file: string, signal?: AbortSignal): Promise<Buffer> {
  const data = await fs.readFile(file);
  if (file.endsWith('.ko')) return data;
  if (file.endsWith('.ko.gz')) return zlib.gunzipSync(data);
  if (file.endsWith('.ko.xz')) {
    const out = await runTool(toolPath('xz'), ['-dc'], { code: 'IMAGE_BUILD_FAILED', what: `Image build failed at step "initramfs": cannot decompress ${path.basename(file)}`, signal, input: data });
    return out.stdoutBuffer;
  }
  throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "initramfs": ${path.basename(file)} uses a module compression the builder does not support.`, {
    hint: 'Use a kernel package with plain or xz-compressed modules (kernel.package in guest/manifest.json).',
  });
}
