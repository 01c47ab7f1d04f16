import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError, errnoCode } from '../util/errors.js';
import { findPack, HOST_SOURCE, parseManifest, readManifestText, type Manifest, type PackSpec } from './manifest.js';

/**
 * The image cache keys (docs/image.md): one for the base, one per engine pack, each over its own
 * inputs only.
 * Same inputs → same key → the image is reused without running apt at all. Floating package
 * versions are deliberately not part of it (they are resolved at build time and recorded in
 * versions.json); pin `name=version` in the manifest to change the key with a version.
 *
 * The builder's own code is part of the key too (a hash of the modules in this folder), so a change
 * to how images are assembled rebuilds them without anyone having to remember a version bump.
 * BUILDER_FORMAT remains for changes outside this folder that alter the output.
 */
export const BUILDER_FORMAT = 'berth-image-builder/2';

let builderHash: Promise<string> | undefined;

/** sha256 over the builder's compiled modules (this folder, tests excluded), computed once. */
export function builderCodeHash(): Promise<string> {
  builderHash ??= (async () => {
    const dir = path.dirname(fileURLToPath(import.meta.url));
    const h = crypto.createHash('sha256');
    const files = (await fs.readdir(dir)).filter((f) => /\.(js|ts)$/.test(f) && !/\.test\.|\.d\.ts$|fixture/.test(f)).sort();
    for (const f of files) h.update(`${f}\n`).update(await fs.readFile(path.join(dir, f)));
    return h.digest('hex');
  })();
  return builderHash;
}

/** JSON with object keys sorted and no whitespace: formatting and key order do not change it. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** Reads a build input; a missing one is IMAGE_BUILD_FAILED with what to do, not a bare ENOENT. */
async function readInput(file: string, what: string, hint: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new BerthError('IMAGE_BUILD_FAILED', `${what} ${file} cannot be read (${errnoCode(err) ?? String(err)}).`, { hint, cause: err, details: { file } });
  }
}

function sha256(data: string | Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Every entry under `dir` (relative paths, '/'-separated, sorted by code point), depth first. */
async function walk(dir: string, rel = ''): Promise<Array<{ rel: string; kind: 'dir' | 'file' | 'link' }>> {
  const out: Array<{ rel: string; kind: 'dir' | 'file' | 'link' }> = [];
  const entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      out.push({ rel: r, kind: 'dir' });
      out.push(...(await walk(dir, r)));
    } else if (e.isSymbolicLink()) out.push({ rel: r, kind: 'link' });
    else if (e.isFile()) out.push({ rel: r, kind: 'file' });
  }
  return out;
}

/** The inputs of one base build, read once: the key and the exact bytes it was computed from. */
export interface BaseSnapshot {
  key: string;
  manifest: Manifest;
  /** The manifest file as read (stored in the image as manifest.json). */
  manifestText: string;
  agent: Buffer;
  agentSha256: string;
}

/** The inputs of one pack build: the key, the manifest it was computed from, and the pack. */
export interface PackSnapshot {
  key: string;
  manifest: Manifest;
  manifestText: string;
  pack: PackSpec;
}

export interface BaseInputPaths {
  manifestPath: string;
  guestDir: string;
  agentBundle: string;
}

/** The base key. See snapshotBaseInputs. */
export async function computeImageKey(opts: BaseInputPaths): Promise<string> {
  return (await snapshotBaseInputs(opts)).key;
}

/** The part of the manifest an image of `source` depends on: a private source's lines, or "host". */
function sourcePart(m: Manifest, source: string): unknown {
  return source === HOST_SOURCE ? HOST_SOURCE : m.sources[source];
}

/**
 * The base key: the builder, the manifest's base section with its source and the shared exclude
 * and prune lists, the agent, and every file under guestDir. The packs' sections are not part of
 * it, so adding or changing a pack does not rebuild the base. For guest files only the executable
 * bit of the mode counts: git records nothing finer, and a different umask on another checkout must
 * not change the key. The builder uses the bytes read here rather than reading the files again, so
 * an edit during a build cannot give an image whose key describes other inputs.
 */
export async function snapshotBaseInputs(opts: BaseInputPaths): Promise<BaseSnapshot> {
  const h = crypto.createHash('sha256');
  h.update(`${BUILDER_FORMAT}\nbase\n`);
  h.update(`builder ${await builderCodeHash()}\n`);
  const manifestText = await readManifestText(opts.manifestPath);
  const manifest = parseManifest(manifestText, opts.manifestPath); // a key for an invalid manifest would be useless
  const part = {
    name: manifest.name,
    arch: manifest.arch,
    base: manifest.base,
    source: sourcePart(manifest, manifest.base.source),
    kernelSource: sourcePart(manifest, manifest.base.kernel.source ?? manifest.base.source),
    exclude: manifest.exclude,
    prune: manifest.prune,
  };
  h.update(`manifest ${canonicalJson(part)}\n`);
  const agent = await readInput(opts.agentBundle, 'The guest agent bundle', 'Build berth first (`npm run build` writes dist/agent.cjs).');
  const agentSha256 = sha256(agent);
  h.update(`agent ${agentSha256}\n`);
  await readInput(path.join(opts.guestDir, 'initramfs-init'), 'The initramfs init script', 'Run berth from a complete checkout (guest/ is part of the repository).');
  const manifestRel = path.relative(path.resolve(opts.guestDir), path.resolve(opts.manifestPath)).split(path.sep).join('/');
  for (const e of await walk(opts.guestDir)) {
    if (e.rel === manifestRel) continue;
    const full = path.join(opts.guestDir, e.rel);
    if (e.kind === 'dir') h.update(`dir ${e.rel}\n`);
    else if (e.kind === 'link') h.update(`link ${e.rel} ${sha256(await fs.readlink(full))}\n`);
    else {
      const st = await fs.stat(full);
      h.update(`file ${e.rel} ${st.mode & 0o111 ? 'x' : '-'} ${sha256(await fs.readFile(full))}\n`);
    }
  }
  return { key: h.digest('hex'), manifest, manifestText, agent, agentSha256 };
}

/**
 * A pack's key: the builder, the pack's section of the manifest with its source and the shared
 * exclude and prune lists. Nothing of the base (kernel, agent, guest files) is part of it, so
 * rebuilding the base does not rebuild a pack. An unknown id is ENGINE_UNKNOWN naming the packs.
 */
export async function snapshotPackInputs(opts: { manifestPath: string }, id: string): Promise<PackSnapshot> {
  const manifestText = await readManifestText(opts.manifestPath);
  const manifest = parseManifest(manifestText, opts.manifestPath);
  const pack = findPack(manifest, id);
  if (!pack) {
    throw new BerthError('ENGINE_UNKNOWN', `There is no engine pack "${id}" (known: ${manifest.packs.map((p) => p.id).join(', ')}).`, {
      hint: 'Choose one of them: `berth engine list` shows them, `berth engine use VERSION` picks one.',
      details: { id, known: manifest.packs.map((p) => p.id) },
    });
  }
  const h = crypto.createHash('sha256');
  h.update(`${BUILDER_FORMAT}\npack\n`);
  h.update(`builder ${await builderCodeHash()}\n`);
  h.update(`pack ${canonicalJson({ arch: manifest.arch, pack, source: sourcePart(manifest, pack.source), exclude: manifest.exclude, prune: manifest.prune })}\n`);
  return { key: h.digest('hex'), manifest, manifestText, pack };
}
