import fs from 'node:fs/promises';
import { BerthError, errnoCode } from '../util/errors.js';
import { writeFileAtomic } from '../util/files.js';

/**
 * The engine stamp ($BERTH_HOME/disks/engine.json): which engine version pack last wrote the data
 * disk, and the snapshot of the disk taken before the last upgrade. It is what lets berth refuse
 * to boot an older engine on data a newer one has migrated (docs/engine-packs.md).
 *
 * The file is berth's own, but a user may edit or break it: it is parsed strictly, and a broken
 * stamp is an error that says how to recover, never a silent "no stamp" (which would allow a
 * downgrade).
 */
export interface EngineStamp {
  /** The pack id ("26", "20.10") of the engine that last booted on this disk. */
  pack: string;
  /** Its engine version ("26.1.5"), for messages. */
  engineVersion: string;
  writtenAt: string;
  /** The internal qcow2 snapshot taken before the data disk was first booted with `pack`. */
  snapshot?: { name: string; pack: string; engineVersion: string; takenAt: string };
  /** One start with this older pack is allowed anyway (`berth engine use VERSION --force`). */
  allowDowngradeTo?: string;
}

/**
 * The pack that wrote a data disk made before berth had packs: Debian 12's Docker 20.10 was the
 * only engine then.
 */
export const LEGACY_STAMP: EngineStamp = { pack: '20.10', engineVersion: '20.10', writtenAt: '1970-01-01T00:00:00.000Z' };

const PACK = /^[0-9]+(\.[0-9]+)?$/;
const VERSION = /^[0-9][0-9A-Za-z.+~-]{0,63}$/;
const SNAPSHOT = /^berth-[A-Za-z0-9._-]{1,100}$/;

function isIso(v: unknown): v is string {
  return typeof v === 'string' && v.length <= 40 && !Number.isNaN(Date.parse(v));
}

/** Validates a parsed stamp; undefined if it is not one. */
export function parseStamp(v: unknown): EngineStamp | undefined {
  if (!v || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.pack !== 'string' || !PACK.test(o.pack)) return undefined;
  if (typeof o.engineVersion !== 'string' || !VERSION.test(o.engineVersion)) return undefined;
  if (!isIso(o.writtenAt)) return undefined;
  const out: EngineStamp = { pack: o.pack, engineVersion: o.engineVersion, writtenAt: o.writtenAt };
  if (o.snapshot !== undefined) {
    const s = o.snapshot as Record<string, unknown> | null;
    if (!s || typeof s !== 'object') return undefined;
    if (typeof s.name !== 'string' || !SNAPSHOT.test(s.name) || typeof s.pack !== 'string' || !PACK.test(s.pack)) return undefined;
    if (typeof s.engineVersion !== 'string' || !VERSION.test(s.engineVersion) || !isIso(s.takenAt)) return undefined;
    out.snapshot = { name: s.name, pack: s.pack, engineVersion: s.engineVersion, takenAt: s.takenAt };
  }
  if (o.allowDowngradeTo !== undefined) {
    if (typeof o.allowDowngradeTo !== 'string' || !PACK.test(o.allowDowngradeTo)) return undefined;
    out.allowDowngradeTo = o.allowDowngradeTo;
  }
  return out;
}

/**
 * The stamp of the data disk: undefined when there is no data disk yet (a fresh start), the legacy
 * stamp for a disk without one, else the file's content. A stamp that does not parse is
 * ENGINE_STAMP_INVALID.
 */
export async function readStamp(stampFile: string, dataDisk: string): Promise<EngineStamp | undefined> {
  // The stamp describes a disk; a new disk (the old one moved away) has no history, whatever the file says.
  const hasDisk = await fs.access(dataDisk).then(
    () => true,
    () => false,
  );
  if (!hasDisk) return undefined;
  let text: string;
  try {
    const st = await fs.lstat(stampFile);
    if (!st.isFile() || st.size > MAX_STAMP_BYTES) throw invalidStamp(stampFile);
    text = await fs.readFile(stampFile, 'utf8');
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
    return LEGACY_STAMP;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const stamp = parseStamp(parsed);
  if (!stamp) throw invalidStamp(stampFile);
  return stamp;
}

/** A stamp is a few hundred bytes; anything much larger is not one. */
const MAX_STAMP_BYTES = 64 * 1024;

function invalidStamp(stampFile: string): BerthError {
  return new BerthError('ENGINE_STAMP_INVALID', `The engine stamp ${stampFile} is not valid: berth cannot tell which engine last wrote the data disk.`, {
    hint: `If you know it, write {"pack":"26","engineVersion":"26.1.5","writtenAt":"${new Date(0).toISOString()}"} (with that engine) into it; deleting it makes berth assume Docker 20.10.`,
    details: { file: stampFile },
  });
}

export async function writeStamp(stampFile: string, stamp: EngineStamp): Promise<void> {
  await writeFileAtomic(stampFile, JSON.stringify(stamp, null, 2) + '\n', 0o644);
}

/** dockerd's versions.compare: dot-separated numeric parts, missing parts are 0. -1, 0 or 1. */
export function comparePacks(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? 0;
    const y = pb[i] ?? 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** What booting `target` on a disk last written by `stamp` means. */
export type EngineSwitch =
  | { kind: 'fresh' }
  | { kind: 'same' }
  | { kind: 'upgrade'; from: EngineStamp }
  | { kind: 'downgrade'; from: EngineStamp; forced: boolean };

export function classifySwitch(stamp: EngineStamp | undefined, target: string): EngineSwitch {
  if (!stamp) return { kind: 'fresh' };
  const c = comparePacks(target, stamp.pack);
  if (c === 0) return { kind: 'same' };
  if (c > 0) return { kind: 'upgrade', from: stamp };
  return { kind: 'downgrade', from: stamp, forced: stamp.allowDowngradeTo === target };
}

/** ENGINE_DOWNGRADE: why a start of `target` is refused, and the three ways back. */
export function downgradeError(from: EngineStamp, target: string): BerthError {
  const ways = [
    from.snapshot && from.snapshot.pack === target
      ? `\`berth engine rollback\` restores the data disk as it was before the upgrade to ${from.pack} (snapshot of ${from.snapshot.takenAt}; what was done since is lost)`
      : undefined,
    `\`berth engine use ${from.pack}\` goes back to the engine that wrote the data`,
    `\`berth engine use ${target} --force\` starts ${target} on this data anyway (it may fail to read what ${from.pack} wrote)`,
  ].filter(Boolean);
  return new BerthError(
    'ENGINE_DOWNGRADE',
    `Engine ${target} is older than engine ${from.pack} (Docker ${from.engineVersion}), which last wrote the data disk: an older engine may not read data a newer one has migrated, so berth does not start it.`,
    { hint: `Choose one: ${ways.join('; or ')}.`, details: { target, lastWrittenBy: from.pack } },
  );
}
