import fs from 'node:fs/promises';
import { BerthError } from '../util/errors.js';

/**
 * The guest image manifest (guest/manifest.json): what the image is made of. `loadManifest` parses
 * and validates it into a typed value. Every error is IMAGE_MANIFEST_INVALID and names the field
 * (`details.field`, e.g. "packages.engine[2]"). Unknown keys are errors too: a misspelt "exclude"
 * would otherwise silently put perl into the image.
 */
export interface Manifest {
  name: string;
  /** Manifest format version: 2 (a base image plus engine version packs). */
  format: 2;
  /** Debian architecture; only amd64 so far. */
  arch: 'amd64';
  /**
   * Private apt sources by name, for the base or a pack to resolve against instead of the host's
   * own indices (`"host"`, always available): the builder keeps their indices in its cache.
   */
  sources: Record<string, AptSourceSpec>;
  /** The base image: kernel, init, agent, tools. */
  base: {
    /** A name from `sources`, or "host". */
    source: string;
    kernel: KernelSpec;
    /** Each entry is `name`, `name=version` or `name/release` (Debian syntax). */
    packages: string[];
  };
  /** Engine version packs, each its own read-only image overlaid on the base. At least one. */
  packs: PackSpec[];
  /** Packages pulled in as dependencies but not installed (base and packs). */
  exclude: string[];
  /** Paths (relative to /) removed after unpacking (base and packs). */
  prune: string[];
}

export interface KernelSpec {
  /** Kernel package or metapackage (linux-image-amd64). The builder finds the real image package. */
  package: string;
  /** Where the kernel comes from when not from the base's source: a name from `sources`, or "host". */
  source?: string;
  /** Kernel command line (the daemon appends berth.* parameters). */
  cmdline: string;
  /** Modules copied into the initramfs and loaded by /init (their dependencies come along). */
  initramfsModules: string[];
  /** Modules kept in the root image (with their dependencies); all others are dropped. */
  modules: string[];
}

export interface AptSourceSpec {
  /** The OpenPGP keyring that signs the suites (an absolute path on the build host). */
  keyring: string;
  /** One-line sources without "deb": `URI SUITE COMPONENT...`. */
  lines: string[];
}

export interface PackSpec {
  /** What `engine.version` names: the engine's major.minor, e.g. "26" or "20.10". */
  id: string;
  /** Shown by `berth engine list`. */
  title: string;
  /** A name from `sources`, or "host". */
  source: string;
  /** The engine's packages (docker.io first), installed with their whole closure. */
  packages: string[];
  /** qemu-user emulators kept for binfmt_misc (e.g. "aarch64"); the others are dropped. */
  emulators: string[];
}

/** `name`, `name=version` (Debian policy 5.6.1 / 5.6.12) or `name/release` (apt's target release, e.g. bookworm-backports). */
const PACKAGE_SPEC = /^[a-z0-9][a-z0-9+.-]+(=[0-9][A-Za-z0-9.+:~-]*|\/[a-z0-9][a-z0-9.-]*)?$/;
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const MODULE_NAME = /^[A-Za-z0-9_-]+$/;
/** Relative, no "..", no leading "/", no empty segments. */
const SAFE_REL_PATH = /^(?!\/)(?!.*\/\/)(?!.*(^|\/)\.\.?(\/|$))[A-Za-z0-9._+@/-]+$/;

const TOP_KEYS = ['name', 'format', 'arch', 'sources', 'base', 'packs', 'exclude', 'prune'];
const KERNEL_KEYS = ['package', 'source', 'cmdline', 'initramfsModules', 'modules'];
const BASE_KEYS = ['source', 'kernel', 'packages'];
const PACK_KEYS = ['id', 'title', 'source', 'packages', 'emulators'];
const SOURCE_KEYS = ['keyring', 'lines'];
/** The source name that means the build host's own apt indices. */
export const HOST_SOURCE = 'host';
/** A pack id: the engine's version as users type it ("26", "20.10"). */
export const PACK_ID = /^[0-9]+(\.[0-9]+)?$/;
const SOURCE_NAME = /^[a-z][a-z0-9-]*$/;
/** `URI SUITE COMPONENT...` with an http(s) URI and Debian-style suite and component names. */
const SOURCE_LINE = /^https?:\/\/[A-Za-z0-9._~:/%-]+( [a-z0-9][a-z0-9.-]*){2,}$/;
const EMULATOR = /^[a-z0-9_]+$/;

export async function loadManifest(file: string): Promise<Manifest> {
  return parseManifest(await readManifestText(file), file);
}

/** The manifest file's text; IMAGE_MANIFEST_INVALID if it cannot be read. */
export async function readManifestText(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new BerthError('IMAGE_MANIFEST_INVALID', `Cannot read the image manifest ${file}.`, {
      hint: 'Run berth from a complete checkout (guest/manifest.json is part of the repository).',
      cause: err,
      details: { file },
    });
  }
}

/** Parses manifest text (JSON) and validates it; `file` only appears in messages. */
export function parseManifest(text: string, file = 'manifest.json'): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new BerthError('IMAGE_MANIFEST_INVALID', `The image manifest ${file} is not valid JSON: ${(err as Error).message}.`, {
      hint: `Fix the JSON syntax of ${file}.`,
      details: { file },
    });
  }
  return validateManifest(raw, file);
}

export function validateManifest(raw: unknown, file = 'manifest.json'): Manifest {
  const bad = (field: string, want: string): never => {
    throw new BerthError('IMAGE_MANIFEST_INVALID', `The image manifest ${file} is invalid: "${field}" ${want}.`, {
      hint: `Fix "${field}" in ${file} (docs/image.md describes the manifest).`,
      details: { file, field },
    });
  };
  const obj = (v: unknown, field: string, keys: readonly string[]): Record<string, unknown> => {
    if (!v || typeof v !== 'object' || Array.isArray(v)) return bad(field, 'must be an object');
    for (const k of Object.keys(v)) {
      if (!keys.includes(k)) bad(field === '(top level)' ? k : `${field}.${k}`, `is not a known field (known: ${keys.join(', ')})`);
    }
    return v as Record<string, unknown>;
  };
  const str = (v: unknown, field: string, re?: RegExp, want?: string): string => {
    if (typeof v !== 'string' || v.length === 0) return bad(field, 'must be a non-empty string');
    if (re && !re.test(v)) bad(field, `must be ${want}, not ${JSON.stringify(v)}`);
    return v;
  };
  const list = (v: unknown, field: string, re: RegExp, want: string): string[] => {
    if (!Array.isArray(v)) return bad(field, `must be a list of ${want}`);
    const seen = new Set<string>();
    return v.map((x, i) => {
      const s = str(x, `${field}[${i}]`, re, want);
      if (seen.has(s)) bad(`${field}[${i}]`, `repeats ${JSON.stringify(s)}`);
      seen.add(s);
      return s;
    });
  };

  const m = obj(raw, '(top level)', TOP_KEYS);
  if (m.format !== 2) bad('format', 'must be 2 (a base plus engine packs: the only manifest format this berth understands)');
  if (m.arch !== 'amd64') bad('arch', 'must be "amd64" (the only architecture supported so far)');
  const spec = 'a Debian package name, name=version or name/release';
  const sourcesRaw = m.sources === undefined ? {} : obj(m.sources, 'sources', Object.keys(m.sources ?? {}));
  const sources: Record<string, AptSourceSpec> = {};
  for (const [name, v] of Object.entries(sourcesRaw)) {
    if (!SOURCE_NAME.test(name) || name === HOST_SOURCE) bad(`sources.${name}`, `is not a usable source name (lower-case letters, digits and "-"; "${HOST_SOURCE}" is reserved)`);
    const src = obj(v, `sources.${name}`, SOURCE_KEYS);
    const keyring = str(src.keyring, `sources.${name}.keyring`, /^\/[A-Za-z0-9._/-]+$/, 'an absolute path');
    const lines = list(src.lines, `sources.${name}.lines`, SOURCE_LINE, '"URI SUITE COMPONENT..." lines');
    if (lines.length === 0) bad(`sources.${name}.lines`, 'must name at least one suite');
    sources[name] = { keyring, lines };
  }
  const sourceRef = (v: unknown, field: string): string => {
    const s = str(v, field);
    if (s !== HOST_SOURCE && !Object.hasOwn(sources, s)) bad(field, `names the source ${JSON.stringify(s)}, which "sources" does not define (nor is it "${HOST_SOURCE}")`);
    return s;
  };
  const base = obj(m.base, 'base', BASE_KEYS);
  const kernel = obj(base.kernel, 'base.kernel', KERNEL_KEYS);
  if (!Array.isArray(m.packs) || m.packs.length === 0) bad('packs', 'must be a list of at least one engine pack');
  const packs = (m.packs as unknown[]).map((p, i): PackSpec => {
    const f = `packs[${i}]`;
    const o = obj(p, f, PACK_KEYS);
    return {
      id: str(o.id, `${f}.id`, PACK_ID, 'a version such as "26" or "20.10"'),
      title: str(o.title, `${f}.title`, /^[\x20-\x7e]{1,80}$/, 'printable text of at most 80 characters'),
      source: sourceRef(o.source, `${f}.source`),
      packages: list(o.packages, `${f}.packages`, PACKAGE_SPEC, spec),
      emulators: o.emulators === undefined ? [] : list(o.emulators, `${f}.emulators`, EMULATOR, 'qemu-user emulator names (aarch64, arm, ...)'),
    };
  });
  const out: Manifest = {
    name: str(m.name, 'name', /^[A-Za-z0-9._-]+$/, 'a name of letters, digits, ".", "_" or "-"'),
    format: 2,
    arch: 'amd64',
    sources,
    base: {
      source: sourceRef(base.source, 'base.source'),
      kernel: {
        package: str(kernel.package, 'base.kernel.package', PACKAGE_SPEC, spec),
        ...(kernel.source === undefined ? {} : { source: sourceRef(kernel.source, 'base.kernel.source') }),
        cmdline: str(kernel.cmdline, 'base.kernel.cmdline'),
        initramfsModules: list(kernel.initramfsModules, 'base.kernel.initramfsModules', MODULE_NAME, 'kernel module names'),
        modules: list(kernel.modules, 'base.kernel.modules', MODULE_NAME, 'kernel module names'),
      },
      packages: list(base.packages, 'base.packages', PACKAGE_SPEC, spec),
    },
    packs,
    exclude: m.exclude === undefined ? [] : list(m.exclude, 'exclude', PACKAGE_NAME, 'package names (no versions)'),
    prune: m.prune === undefined ? [] : list(m.prune, 'prune', SAFE_REL_PATH, 'relative paths inside the image (no "..", no leading "/")'),
  };
  const ids = new Set<string>();
  packs.forEach((p, i) => {
    if (ids.has(p.id)) bad(`packs[${i}].id`, `repeats ${JSON.stringify(p.id)}`);
    ids.add(p.id);
  });
  // One package named twice (say "tini" and "tini=0.19") leaves apt to pick; refuse it instead. A
  // package both wanted and excluded would silently vanish from the image.
  const checkGroup = (specs: string[], field: string): void => {
    const wanted = new Set<string>();
    specs.forEach((s, i) => {
      const name = packageName(s);
      if (wanted.has(name)) bad(`${field}[${i}]`, `names ${name} a second time`);
      wanted.add(name);
    });
    out.exclude.forEach((name, i) => {
      if (wanted.has(name)) bad(`exclude[${i}]`, `excludes ${name}, which ${field} asks for`);
    });
  };
  checkGroup(out.base.packages, 'base.packages');
  packs.forEach((p, i) => checkGroup(p.packages, `packs[${i}].packages`));
  if (out.base.kernel.modules.length === 0) bad('base.kernel.modules', 'must name at least one module');
  return out;
}

/** The pack `id`, or undefined. */
export function findPack(m: Manifest, id: string): PackSpec | undefined {
  return m.packs.find((p) => p.id === id);
}

/** Package name without the `=version` pin or `/release`. */
export function packageName(spec: string): string {
  const i = spec.search(/[=/]/);
  return i < 0 ? spec : spec.slice(0, i);
}
