import path from 'node:path';
import { isWithin } from '../util/paths.js';
import type { ShareFailure } from '../control/share-mounts.js';

/**
 * Which host paths a container may bind-mount (docs/files.md "Mount checks"). Only folders inside
 * a share exist in the VM at their host path; anything else would silently become an empty folder
 * of the VM, so it is refused before the request reaches the engine, with a message naming the
 * path and the setting to change.
 *
 * Every way the Engine API can name a host path gets the same decision (CVE-2026-6406: a proxy
 * that inspected HostConfig.Binds only was bypassed through HostConfig.Mounts): HostConfig.Binds,
 * HostConfig.Mounts of type bind, Mounts of type volume with the local driver's bind options, and
 * POST /volumes/create with those options. A mount type this code does not know is refused too.
 */
export interface MountPolicy {
  /** Shared folders, as the guest sees them (the host paths). */
  shares: readonly { path: string; readOnly: boolean }[];
  /** VM paths that may be mounted although they are not shares (the engine's own socket). */
  vmPaths: readonly string[];
  /**
   * Shares the guest could not mount: an empty read-only folder stands in their place in the VM
   * (docs/files.md "Transport"), so bind mounts into them are refused with the reason.
   */
  unavailable?: readonly ShareFailure[];
}

export const DEFAULT_VM_PATHS = ['/var/run/docker.sock', '/run/docker.sock'];

/** `fix` replaces the default advice (add the folder to the shares) where that is not the fix. */
export type Decision = { ok: true } | { ok: false; path: string; where: string; reason: string; fix?: string };

const OK: Decision = { ok: true };
/** Mount types that never name a host path. */
const NO_HOST_PATH_TYPES = new Set(['tmpfs', 'npipe', 'cluster', 'image']);

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Checks one host path; `where` says which field named it. */
export function checkHostPath(p: string, where: string, policy: MountPolicy): Decision {
  if (!path.isAbsolute(p)) return { ok: false, path: p, where, reason: 'a bind mount source must be an absolute host path' };
  const norm = path.posix.normalize(p).replace(/(.)\/+$/, '$1');
  if (policy.vmPaths.includes(norm)) return OK;
  for (const s of policy.shares) {
    if (!isWithin(norm, path.posix.normalize(s.path))) continue;
    const down = policy.unavailable?.find((u) => u.path === s.path);
    if (!down) return OK;
    return {
      ok: false,
      path: norm,
      where,
      reason: `its shared folder ${s.path} is not mounted in the VM (${down.reason})`,
      fix: 'Run `berth restart` to mount it again; if it fails again, `berth logs vm` shows the mount errors of the boot.',
    };
  }
  return { ok: false, path: norm, where, reason: 'it is not inside a shared folder' };
}

/** The local volume driver's bind options ({type: none, o: bind, device: /path}), if that is what they are. */
function localBindDevice(driver: unknown, opts: unknown): string | undefined | null {
  if (driver !== undefined && driver !== null && driver !== '' && driver !== 'local') return undefined; // another driver: not a host path here
  if (!isObj(opts)) return undefined;
  const o = typeof opts.o === 'string' ? opts.o : '';
  const isBind = o.split(',').some((x) => x.trim() === 'bind' || x.trim() === 'rbind');
  if (!isBind) return undefined;
  // A bind without a device string is malformed: refused (null), never passed through unread.
  return typeof opts.device === 'string' ? opts.device : null;
}

function checkVolumeOptions(driver: unknown, opts: unknown, where: string, policy: MountPolicy): Decision {
  const device = localBindDevice(driver, opts);
  if (device === undefined) return OK;
  if (device === null) return { ok: false, path: '', where, reason: 'bind options without a device path' };
  return checkHostPath(device, where, policy);
}

/** A `docker run -v` string: "source:target[:options]"; only an absolute source is a host path. */
function checkBindString(b: unknown, where: string, policy: MountPolicy): Decision {
  if (typeof b !== 'string') return { ok: false, path: '', where, reason: 'a bind that is not a string' };
  const source = b.split(':')[0] ?? '';
  if (!source.startsWith('/')) return OK; // a named volume
  return checkHostPath(source, where, policy);
}

function checkMounts(mounts: unknown, where: string, policy: MountPolicy): Decision {
  if (mounts === undefined || mounts === null) return OK;
  if (!Array.isArray(mounts)) return { ok: false, path: '', where, reason: 'Mounts is not a list' };
  for (const [i, m] of mounts.entries()) {
    const at = `${where}[${i}]`;
    if (!isObj(m)) return { ok: false, path: '', where: at, reason: 'a mount that is not an object' };
    const type = typeof m.Type === 'string' ? m.Type.toLowerCase() : '';
    let d: Decision = OK;
    if (type === 'bind') d = typeof m.Source === 'string' ? checkHostPath(m.Source, `${at}.Source`, policy) : { ok: false, path: '', where: at, reason: 'a bind mount without a Source' };
    else if (type === 'volume') {
      const dc = isObj(m.VolumeOptions) && isObj(m.VolumeOptions.DriverConfig) ? m.VolumeOptions.DriverConfig : undefined;
      d = dc ? checkVolumeOptions(dc.Name, dc.Options, `${at}.VolumeOptions.DriverConfig`, policy) : OK;
    } else if (!NO_HOST_PATH_TYPES.has(type)) d = { ok: false, path: '', where: at, reason: `mount type "${String(m.Type)}" is not supported by berth` };
    if (!d.ok) return d;
  }
  return OK;
}

/** POST /containers/create. */
export function checkContainerCreate(body: unknown, policy: MountPolicy): Decision {
  if (!isObj(body)) return OK; // the engine rejects a malformed body itself
  const hc = body.HostConfig;
  if (hc === undefined || hc === null) return OK;
  if (!isObj(hc)) return { ok: false, path: '', where: 'HostConfig', reason: 'HostConfig is not an object' };
  if (hc.Binds !== undefined && hc.Binds !== null) {
    if (!Array.isArray(hc.Binds)) return { ok: false, path: '', where: 'HostConfig.Binds', reason: 'Binds is not a list' };
    for (const [i, b] of hc.Binds.entries()) {
      const d = checkBindString(b, `HostConfig.Binds[${i}]`, policy);
      if (!d.ok) return d;
    }
  }
  return checkMounts(hc.Mounts, 'HostConfig.Mounts', policy);
}

/** POST /volumes/create. */
export function checkVolumeCreate(body: unknown, policy: MountPolicy): Decision {
  if (!isObj(body)) return OK;
  return checkVolumeOptions(body.Driver, body.DriverOpts, 'DriverOpts', policy);
}

/** POST /services/create and /services/{id}/update (swarm mode inside the VM). */
export function checkServiceSpec(body: unknown, policy: MountPolicy): Decision {
  if (!isObj(body)) return OK;
  const tt = isObj(body.TaskTemplate) ? body.TaskTemplate : undefined;
  const cs = tt && isObj(tt.ContainerSpec) ? tt.ContainerSpec : undefined;
  return cs ? checkMounts(cs.Mounts, 'TaskTemplate.ContainerSpec.Mounts', policy) : OK;
}

/** The message the docker CLI prints ("Error response from daemon: ..."). */
export function refusalMessage(d: Extract<Decision, { ok: false }>, policy: MountPolicy): string {
  const shared = policy.shares.map((s) => s.path).join(', ') || 'none';
  const what = d.path ? `The host path ${d.path} (${d.where})` : `The mount in ${d.where}`;
  const fix = d.fix ?? `To share another folder, add it to the "shares" setting (berth settings set shares '[{"path":"/your/folder"}]') and run \`berth restart\`.`;
  return `berth: ${what} cannot be mounted: ${d.reason}. Shared folders: ${shared}. ${fix}`;
}
