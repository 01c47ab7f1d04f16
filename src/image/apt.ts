import fs from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { runTool, throwIfAborted } from './run.js';
import { toolPath } from './host-tools.js';
import type { AptSourceSpec } from './manifest.js';

/**
 * Package resolution and download with apt itself, using the host's package indices
 * (/var/lib/apt/lists, refreshed by `apt-get update`).
 *
 * Resolution: `apt-get install --print-uris` against a private, *empty* dpkg status file computes
 * the whole dependency closure as if installing onto an empty system, without reading or touching
 * the host's installed packages. `--print-uris` only prints `'URL' filename size hash` lines.
 *
 * Download: `apt-get install --download-only` of the exact resolved versions into the shared deb
 * cache. apt verifies every file against the signed indices and skips files already there.
 *
 * Why resolution uses a private archives directory: apt leaves packages that are already present
 * in Dir::Cache::archives out of `--print-uris` (checked with apt 2.6), so resolving against the
 * shared deb cache would list only what is missing, not the closure.
 */
export interface ResolvedPackage {
  name: string;
  version: string;
  arch: string;
  /** File name in the deb cache (apt's naming: name_version_arch.deb, ':' in the version as %3a). */
  filename: string;
  size: number;
  url: string;
}

/**
 * Parses one `--print-uris` line: `'URL' filename size hash`. Name, version and architecture come
 * from the file name, which apt builds as `name_version_arch.deb` with the version URL-quoted.
 * Returns undefined for any other line (apt's chatter on stdout).
 */
export function parsePrintUrisLine(line: string): ResolvedPackage | undefined {
  const m = /^'([^']+)' (\S+) (\d+)(?: \S*)?$/.exec(line.trim());
  if (!m) return undefined;
  const [, url, filename, size] = m as unknown as [string, string, string, string];
  const fm = /^([a-z0-9][a-z0-9+.-]*)_([^_/]+)_([a-z0-9-]+)\.deb$/.exec(filename);
  if (!fm) return undefined;
  let version: string;
  try {
    version = decodeURIComponent(fm[2]!);
  } catch {
    return undefined;
  }
  return { name: fm[1]!, version, arch: fm[3]!, filename, size: Number(size), url };
}

export interface AptContext {
  /** Private apt state for this build: an empty dpkg status, apt's binary caches, a scratch archives dir. */
  stateDir: string;
  /** The shared deb cache (<cacheDir>/debs). */
  debsDir: string;
  /** A private source list and where its indices are kept; absent: the host's own sources and indices. */
  source?: PrivateSource | undefined;
  /** A Debian architecture other than the host's (e.g. "arm64"); needs a private source. */
  arch?: string | undefined;
  signal?: AbortSignal | undefined;
}

export interface PrivateSource {
  /** The source's name in the manifest (for messages). */
  name: string;
  spec: AptSourceSpec;
  /** Where its indices live between builds (<cacheDir>/apt/<name>-<hash>/lists). */
  listsDir: string;
}

export async function prepareAptState(ctx: AptContext): Promise<void> {
  await fs.mkdir(path.join(ctx.stateDir, 'cache', 'archives', 'partial'), { recursive: true });
  await fs.mkdir(path.join(ctx.debsDir, 'partial'), { recursive: true });
  await fs.writeFile(path.join(ctx.stateDir, 'status'), '');
  if (ctx.source) {
    await fs.mkdir(path.join(ctx.source.listsDir, 'partial'), { recursive: true });
    await fs.writeFile(path.join(ctx.stateDir, 'sources.list'), sourcesListText(ctx.source.spec));
  }
}

/** The one-line-style sources.list for a private source: every line signed by its keyring. */
export function sourcesListText(spec: AptSourceSpec): string {
  return spec.lines.map((l) => `deb [signed-by=${spec.keyring}] ${l}\n`).join('');
}

/**
 * Refreshes a private source's indices (`apt-get update` against our own list and lists folder;
 * the host's apt state is never read or written). apt's conditional requests make a refresh of
 * unchanged indices cheap.
 */
export async function updatePrivateIndices(ctx: AptContext): Promise<void> {
  if (!ctx.source) return;
  throwIfAborted(ctx.signal);
  await runTool(toolPath('apt-get'), [...aptOptions(ctx, path.join(ctx.stateDir, 'cache', 'archives')), 'update', '-q'], {
    code: 'IMAGE_RESOLVE_FAILED',
    what: `Image build failed at step "resolve" (apt-get update of the source "${ctx.source.name}")`,
    hint: `Check that the mirror in "sources.${ctx.source.name}" of guest/manifest.json is reachable and its keyring exists, then build again.`,
    signal: ctx.signal,
  });
}

function aptOptions(ctx: AptContext, archives: string): string[] {
  const opts = [
    '-o', `Dir::State::status=${path.join(ctx.stateDir, 'status')}`,
    '-o', `Dir::Cache=${path.join(ctx.stateDir, 'cache')}`,
    '-o', `Dir::Cache::archives=${archives}`,
    // Our state is private; the host's dpkg lock is irrelevant and needs root.
    '-o', 'Debug::NoLocking=1',
    '-o', 'APT::Install-Recommends=false',
    '-o', 'APT::Install-Suggests=false',
  ];
  if (ctx.source) {
    opts.push(
      '-o', `Dir::Etc::sourcelist=${path.join(ctx.stateDir, 'sources.list')}`,
      // A folder that holds no lists: the host's sources.list.d must not add suites to ours.
      '-o', `Dir::Etc::sourceparts=${path.join(ctx.stateDir, 'no-sources.d')}`,
      '-o', `Dir::State::Lists=${ctx.source.listsDir}`,
    );
    if (ctx.arch) opts.push('-o', `APT::Architecture=${ctx.arch}`, '-o', `APT::Architectures=${ctx.arch}`);
  }
  // As root, apt downloads as the unprivileged _apt user, which cannot write into root's cache
  // directory; as a normal user apt cannot switch users and downloads as that user anyway.
  if (process.getuid?.() === 0) opts.push('-o', 'APT::Sandbox::User=root');
  return opts;
}

/** The full closure of `specs` (name or name=version) as apt would fetch it onto an empty system. */
export async function resolveClosure(ctx: AptContext, specs: string[]): Promise<ResolvedPackage[]> {
  throwIfAborted(ctx.signal);
  const args = [...aptOptions(ctx, path.join(ctx.stateDir, 'cache', 'archives')), 'install', '--print-uris', '-y', '-q', ...specs];
  let stdout: string;
  try {
    ({ stdout } = await runTool(toolPath('apt-get'), args, { code: 'IMAGE_RESOLVE_FAILED', what: 'Image build failed at step "resolve"', signal: ctx.signal }));
  } catch (err) {
    if (err instanceof BerthError && err.code === 'IMAGE_RESOLVE_FAILED') throw explainResolveFailure(err, specs);
    throw err;
  }
  const pkgs: ResolvedPackage[] = [];
  for (const line of stdout.split('\n')) {
    const p = parsePrintUrisLine(line);
    if (p) pkgs.push(p);
  }
  if (pkgs.length === 0) {
    throw new BerthError('IMAGE_RESOLVE_FAILED', `Image build failed at step "resolve": apt listed no packages for ${specs.join(' ')}.`, {
      hint: 'Run `sudo apt-get update` so apt has package indices, then build again.',
      details: { packages: specs, stdoutTail: stdout.trim().split('\n').slice(-20).join('\n') },
    });
  }
  return pkgs;
}

/**
 * Turns apt's failure into an error naming the package: "Unable to locate package X", "Version 'v'
 * for 'X' was not found", "Package 'X' has no installation candidate", or a broken dependency
 * (" X : Depends: Y but it is not installable", printed on stdout).
 */
export function explainResolveFailure(err: BerthError, specs: string[]): BerthError {
  const text = `${String(err.details?.stderrTail ?? '')}\n${String(err.details?.stdoutTail ?? '')}`;
  let what: string | undefined;
  let pkg: string | undefined;
  let m: RegExpExecArray | null;
  if ((m = /Unable to locate package (\S+)/.exec(text))) {
    pkg = m[1]!;
    what = `package ${pkg} is not in the package indices`;
  } else if ((m = /Version '([^']+)' for '([^']+)' was not found/.exec(text))) {
    pkg = `${m[2]}=${m[1]}`;
    what = `version ${m[1]} of ${m[2]} is not in the package indices`;
  } else if ((m = /Package '([^']+)' has no installation candidate/.exec(text))) {
    pkg = m[1]!;
    what = `package ${pkg} has no installable version`;
  } else if ((m = /^\s*(\S+) : (?:Pre-)?Depends: (.+)$/m.exec(text))) {
    pkg = m[1]!;
    what = `${pkg} depends on ${m[2]!.trim()}`;
  }
  const message = what ? `apt cannot resolve the guest packages: ${what}` : 'apt cannot resolve the guest packages';
  return new BerthError('IMAGE_RESOLVE_FAILED', `Image build failed at step "resolve": ${message}.`, {
    hint:
      'Run `sudo apt-get update` so apt knows the current Debian packages, then build again. ' +
      'If the package or pinned version is really gone from the archive, fix it in guest/manifest.json.',
    details: { ...(err.details ?? {}), packages: specs, ...(pkg ? { package: pkg } : {}) },
    cause: err,
  });
}

/**
 * Downloads exactly `pkgs` (name=version) into the shared deb cache. `onProgress(doneBytes,
 * totalBytes)` is called about twice a second from the sizes of finished and partial files.
 */
export async function downloadPackages(ctx: AptContext, pkgs: ResolvedPackage[], onProgress: (done: number, total: number) => void): Promise<void> {
  throwIfAborted(ctx.signal);
  const total = pkgs.reduce((n, p) => n + p.size, 0);
  const measure = async (): Promise<number> => {
    let n = 0;
    for (const p of pkgs) {
      const size = await fileSize(path.join(ctx.debsDir, p.filename));
      n += size ?? Math.min(p.size, (await fileSize(path.join(ctx.debsDir, 'partial', p.filename))) ?? 0);
    }
    return n;
  };
  onProgress(await measure(), total);
  let measuring = false;
  const timer = setInterval(() => {
    if (measuring) return;
    measuring = true;
    void measure()
      .then((n) => onProgress(n, total))
      .finally(() => (measuring = false));
  }, 500);
  try {
    const args = [...aptOptions(ctx, ctx.debsDir), 'install', '--download-only', '-y', '-q', ...pkgs.map((p) => `${p.name}=${p.version}`)];
    await runTool(toolPath('apt-get'), args, {
      code: 'IMAGE_DOWNLOAD_FAILED',
      what: 'Image build failed at step "download"',
      hint: 'Check that the Debian mirror is reachable (`sudo apt-get update`), then build again; packages already downloaded are kept.',
      signal: ctx.signal,
    });
  } finally {
    clearInterval(timer);
  }
  const missing: string[] = [];
  for (const p of pkgs) if ((await fileSize(path.join(ctx.debsDir, p.filename))) === undefined) missing.push(p.filename);
  if (missing.length > 0) {
    throw new BerthError('IMAGE_DOWNLOAD_FAILED', `Image build failed at step "download": apt finished but ${missing.length} package file(s) are missing from ${ctx.debsDir}: ${missing.slice(0, 5).join(', ')}.`, {
      hint: 'Build again; if it persists, run `sudo apt-get update` first.',
      details: { missing },
    });
  }
  onProgress(total, total);
}

async function fileSize(file: string): Promise<number | undefined> {
  try {
    return (await fs.stat(file)).size;
  } catch {
    return undefined;
  }
}
