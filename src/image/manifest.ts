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
  /** Manifest format version; only 1 exists. */
  format: 1;
  /** Debian architecture; only amd64 so far. */
  arch: 'amd64';
  kernel: {
    /** Kernel package or metapackage (linux-image-amd64). The builder finds the real image package. */
    package: string;
    /** Kernel command line (the daemon appends berth.* parameters). */
    cmdline: string;
    /** Modules copied into the initramfs and loaded by /init (their dependencies come along). */
    initramfsModules: string[];
    /** Modules kept in the root image (with their dependencies); all others are dropped. */
    modules: string[];
  };
  /** Package groups; each entry is `name` or `name=version` (Debian syntax). */
  packages: {
    base: string[];
    engine: string[];
    agent: string[];
  };
  /** Packages pulled in as dependencies but not installed into the image. */
  exclude: string[];
  /** Paths (relative to /) removed from the image after unpacking. */
  prune: string[];
}

/** `name`, `name=version` (Debian policy 5.6.1 / 5.6.12) or `name/release` (apt's target release, e.g. bookworm-backports). */
const PACKAGE_SPEC = /^[a-z0-9][a-z0-9+.-]+(=[0-9][A-Za-z0-9.+:~-]*|\/[a-z0-9][a-z0-9.-]*)?$/;
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const MODULE_NAME = /^[A-Za-z0-9_-]+$/;
/** Relative, no "..", no leading "/", no empty segments. */
const SAFE_REL_PATH = /^(?!\/)(?!.*\/\/)(?!.*(^|\/)\.\.?(\/|$))[A-Za-z0-9._+@/-]+$/;

const TOP_KEYS = ['name', 'format', 'arch', 'kernel', 'packages', 'exclude', 'prune'];
const KERNEL_KEYS = ['package', 'cmdline', 'initramfsModules', 'modules'];
const PACKAGE_GROUPS = ['base', 'engine', 'agent'] as const;

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
  if (m.format !== 1) bad('format', 'must be 1 (the only manifest format this berth understands)');
  if (m.arch !== 'amd64') bad('arch', 'must be "amd64" (the only architecture supported so far)');
  const kernel = obj(m.kernel, 'kernel', KERNEL_KEYS);
  const packages = obj(m.packages, 'packages', PACKAGE_GROUPS);
  const spec = 'a Debian package name, name=version or name/release';
  const out: Manifest = {
    name: str(m.name, 'name', /^[A-Za-z0-9._-]+$/, 'a name of letters, digits, ".", "_" or "-"'),
    format: 1,
    arch: 'amd64',
    kernel: {
      package: str(kernel.package, 'kernel.package', PACKAGE_SPEC, spec),
      cmdline: str(kernel.cmdline, 'kernel.cmdline'),
      initramfsModules: list(kernel.initramfsModules, 'kernel.initramfsModules', MODULE_NAME, 'kernel module names'),
      modules: list(kernel.modules, 'kernel.modules', MODULE_NAME, 'kernel module names'),
    },
    packages: {
      base: list(packages.base, 'packages.base', PACKAGE_SPEC, spec),
      engine: list(packages.engine, 'packages.engine', PACKAGE_SPEC, spec),
      agent: list(packages.agent, 'packages.agent', PACKAGE_SPEC, spec),
    },
    exclude: m.exclude === undefined ? [] : list(m.exclude, 'exclude', PACKAGE_NAME, 'package names (no versions)'),
    prune: m.prune === undefined ? [] : list(m.prune, 'prune', SAFE_REL_PATH, 'relative paths inside the image (no "..", no leading "/")'),
  };
  // One package named twice (say "tini" and "tini=0.19") leaves apt to pick; refuse it instead.
  const wanted = new Map<string, string>();
  for (const g of PACKAGE_GROUPS) {
    out.packages[g].forEach((spec, i) => {
      const name = packageName(spec);
      if (wanted.has(name)) bad(`packages.${g}[${i}]`, `names ${name} a second time`);
      wanted.set(name, spec);
    });
  }
  // A package both wanted and excluded would silently vanish from the image.
  out.exclude.forEach((name, i) => {
    if (wanted.has(name)) bad(`exclude[${i}]`, `excludes ${name}, which packages.* asks for`);
  });
  if (out.kernel.modules.length === 0) bad('kernel.modules', 'must name at least one module');
  return out;
}

/** All userland package specs of the manifest, in group order. */
export function userlandPackages(m: Manifest): string[] {
  return PACKAGE_GROUPS.flatMap((g) => m.packages[g]);
}

/** Package name without the `=version` pin or `/release`. */
export function packageName(spec: string): string {
  const i = spec.search(/[=/]/);
  return i < 0 ? spec : spec.slice(0, i);
}
