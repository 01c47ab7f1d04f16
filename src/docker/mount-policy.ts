import fs from 'node:fs';
import path from 'node:path';
import { isWithin } from '../util/paths.js';
import type { ShareFailure } from '../control/share-mounts.js';
import type { ContainerCreate, Mount, PluginConfig, PluginState, Privilege, RuntimePrivilege, ServiceSpec, VolumeCreate } from './bodies.js';
import { hostKernelMessage, hostKernelRefusal } from './host-kernel-policy.js';

/**
 * What a request may mount (docs/docker-proxy.md "What a body may name", docs/security.md). Only
 * folders inside a share exist in the VM at their host path. A path outside every share is either
 * a host folder the user has not shared (refused: it would silently be an empty folder of the VM)
 * or a path of the VM itself (refused unless the `vmPaths` setting allows it). Bind sources in a
 * share are resolved on the host beneath their share, as the VM will resolve them through the
 * file server: a symlink that stays inside the shares is replaced by the real path, one that
 * leaves them is refused. The checks rewrite the typed request in place, so what the proxy
 * forwards is what was decided on.
 */
export interface MountPolicy {
  /** Shared folders, as the guest sees them (the host paths the user named). */
  shares: readonly { path: string; readOnly: boolean; hostRoot?: string }[];
  /** VM paths a container may mount or use as a device although they are not shares. */
  vmPaths: readonly string[];
  /** Shares the guest could not mount: bind mounts into them are refused with the reason. */
  unavailable?: readonly ShareFailure[];
  /** How host paths are looked at (tests give a fake file system). */
  host?: HostLookup;
  /**
   * Set when the engine runs on the host's own kernel (the namespace backend): what would reach
   * that kernel is refused unless `allowPrivileged` (host-kernel-policy.ts).
   */
  hostKernel?: { allowPrivileged: boolean };
}

/** The `vmPaths` setting's default (settings.ts). */
export const DEFAULT_VM_PATHS = ['/var/run/docker.sock', '/run/docker.sock', '/dev/fuse', '/dev/net/tun'];

/** `fix` replaces the default advice (add the folder to the shares) where that is not the fix. */
export type Decision = { ok: true } | { ok: false; path: string; where: string; reason: string; fix?: string; message?: string };

const OK: Decision = { ok: true };

/** What the policy needs to know of a host path (no symlink is ever followed by these). */
export interface HostLookup {
  /** The type of the entry at `p`, not following a symlink there. */
  kind(p: string): 'dir' | 'file' | 'symlink' | 'other' | 'missing';
  readlink(p: string): string;
  exists(p: string): boolean;
}

export const realHost: HostLookup = {
  kind(p) {
    try {
      const st = fs.lstatSync(p);
      return st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    } catch {
      return 'missing';
    }
  },
  readlink: (p) => fs.readlinkSync(p),
  exists: (p) => fs.existsSync(p),
};

/** Paths of the VM's own system: a request for one gets advice about the VM, not about shares. */
const VM_SYSTEM = ['/var/lib/docker', '/var/lib/containerd', '/proc', '/sys', '/dev', '/run', '/var/run'];
/** Devices that are the VM's disks or its control channel. */
const VM_DISK = /^\/dev\/(vd[a-z]+\d*|sd[a-z]+\d*|nvme\d.*|loop\d+|dm-\d+|mapper\/.*|mem|kmem|port|vport\d+p\d+|virtio-ports\/.*|disk\/.*)$/;
const MAX_LINKS = 40;

const vmPathsFix = (p: string) =>
  `If a container really needs it, allow it with \`berth settings set vmPaths '["${p}"]'\` (add it to the list) and run \`berth restart\`.`;
const sharesFix = 'To share another folder, add it to the "shares" setting (berth settings set shares \'[{"path":"/your/folder"}]\') and run `berth restart`.';

function shareOf(p: string, policy: MountPolicy) {
  let best: MountPolicy['shares'][number] | undefined;
  for (const s of policy.shares) if (isWithin(p, s.path) && (!best || s.path.length > best.path.length)) best = s;
  return best;
}

function hostPathOf(guest: string, share: MountPolicy['shares'][number]): string {
  return share.hostRoot ? path.join(share.hostRoot, path.relative(share.path, guest)) : guest;
}

type Resolved = { ok: true; path: string; vmPath?: boolean } | Extract<Decision, { ok: false }>;

/**
 * Resolves a bind source as the VM would, component by component: inside a share each entry is
 * looked at on the host and symlinks are followed (at most 40); outside the shares the path is the
 * VM's. A walk that a symlink or ".." takes out of the shares is refused.
 */
export function resolveSource(p: string, where: string, policy: MountPolicy): Resolved {
  if (!path.posix.isAbsolute(p)) return { ok: false, path: p, where, reason: 'a mount source must be an absolute path' };
  const norm = path.posix.normalize(p).replace(/(.)\/+$/, '$1');
  if (policy.vmPaths.includes(norm)) return { ok: true, path: norm, vmPath: true };
  const start = enterShare(components(norm), policy);
  if (!start) return outside(norm, where, policy);
  const host = policy.host ?? realHost;
  let cur = start.share.path;
  const pending = start.rest;
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '.') continue;
    const share = shareOf(cur, policy)!;
    if (name === '..') {
      if (cur === share.path) return { ok: false, path: norm, where, reason: `a symbolic link in it leads out of the shared folder ${share.path} (through "..")` };
      cur = path.posix.dirname(cur);
      continue;
    }
    const next = path.posix.join(cur, name);
    const hp = hostPathOf(next, shareOf(next, policy)!);
    const kind = host.kind(hp);
    if (kind === 'symlink') {
      if (++links > MAX_LINKS) return { ok: false, path: norm, where, reason: 'too many levels of symbolic links' };
      const target = host.readlink(hp);
      if (target.startsWith('/')) {
        const e = enterShare(components(target), policy);
        if (!e) return { ok: false, path: norm, where, reason: `${next} is a symbolic link to ${target}, outside the shared folders, and the VM would mount what is at ${target} in the VM` };
        cur = e.share.path;
        pending.unshift(...e.rest);
      } else pending.unshift(...components(target));
      continue;
    }
    cur = next;
    if (kind === 'missing') {
      // The rest does not exist yet (dockerd makes a missing bind source, through the share).
      const rest = path.posix.join(cur, ...pending);
      if (!isWithin(rest, share.path) && !shareOf(rest, policy)) return { ok: false, path: norm, where, reason: `it leads out of the shared folder ${share.path}` };
      return inShare(rest, where, policy);
    }
    if (kind !== 'dir' && pending.length > 0) return { ok: false, path: norm, where, reason: `${next} is not a folder` };
  }
  return inShare(cur, where, policy);
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '');
}

/**
 * The share an absolute path starts in, by its leading components (the VM's folders above a
 * share's mount point are plain folders), and the components after the share's path.
 */
function enterShare(comps: readonly string[], policy: MountPolicy): { share: MountPolicy['shares'][number]; rest: string[] } | undefined {
  let best: { share: MountPolicy['shares'][number]; rest: string[] } | undefined;
  for (const s of policy.shares) {
    const sc = components(s.path);
    if (sc.length > comps.length || !sc.every((c, i) => comps[i] === c)) continue;
    if (!best || s.path.length > best.share.path.length) best = { share: s, rest: comps.slice(sc.length) };
  }
  return best;
}

function inShare(p: string, where: string, policy: MountPolicy): Resolved {
  const s = shareOf(p, policy)!;
  const down = policy.unavailable?.find((u) => u.path === s.path);
  if (!down) return { ok: true, path: p };
  return {
    ok: false,
    path: p,
    where,
    reason: `its shared folder ${s.path} is not mounted in the VM (${down.reason})`,
    fix: 'Run `berth restart` to mount it again; if it fails again, `berth logs vm` shows the mount errors of the boot.',
  };
}

/** A path outside every share: a host folder not shared, or a path of the VM itself. */
function outside(p: string, where: string, policy: MountPolicy): Extract<Decision, { ok: false }> {
  if (VM_DISK.test(p)) {
    return {
      ok: false,
      path: p,
      where,
      reason: "it is a disk or the control port of berth's VM, which holds every image, container and volume (or berth's own channel)",
      fix: 'berth does not let containers use it. A container that must manage the VM itself can run with --privileged.',
    };
  }
  if (VM_SYSTEM.some((v) => isWithin(p, v))) {
    return { ok: false, path: p, where, reason: "it is a path of berth's VM (the engine's own system), not a folder of your host", fix: vmPathsFix(p) };
  }
  const exists = (policy.host ?? realHost).exists(p);
  return { ok: false, path: p, where, reason: exists ? 'it is not inside a shared folder' : 'it does not exist on your host and is not inside a shared folder', fix: sharesFix };
}

/** A device a container asks for (HostConfig.Devices, plugin devices). */
export function checkDevice(p: string, where: string, policy: MountPolicy): Decision {
  if (!path.posix.isAbsolute(p)) return { ok: false, path: p, where, reason: 'a device must be an absolute path' };
  const norm = path.posix.normalize(p);
  if (policy.vmPaths.includes(norm)) return OK;
  if (VM_DISK.test(norm)) return outside(norm, where, policy);
  return { ok: false, path: norm, where, reason: "devices are the VM's, and this one is not in the vmPaths setting", fix: vmPathsFix(norm) };
}

/** Checks a bind source and returns the path to send (symlinks inside the shares resolved). */
function bindSource(p: string, where: string, policy: MountPolicy): { ok: true; path: string } | Extract<Decision, { ok: false }> {
  const r = resolveSource(p, where, policy);
  if (!r.ok) return r;
  if (r.path.includes(':') && !r.vmPath) return { ok: false, path: r.path, where, reason: 'a shared path with ":" cannot be written in a bind' };
  return { ok: true, path: r.path };
}

/** The local driver's options: a bind names `device`; overlay names lowerdir, upperdir, workdir. */
function checkLocalOptions(opts: Map<string, string | undefined> | undefined, where: string, policy: MountPolicy): Decision {
  if (!opts) return OK;
  const type = opts.get('type') ?? '';
  const o = opts.get('o') ?? '';
  const device = opts.get('device');
  const flags = o.split(',').map((x) => x.trim());
  if (flags.includes('bind') || flags.includes('rbind')) {
    if (device === undefined || device === '') return { ok: false, path: '', where, reason: 'bind options without a device path' };
    const r = bindSource(device, `${where}.device`, policy);
    if (!r.ok) return r;
    opts.set('device', r.path);
    return OK;
  }
  if (type === 'overlay') {
    const out: string[] = [];
    for (const flag of flags) {
      const m = /^(lowerdir|upperdir|workdir)=(.*)$/.exec(flag);
      if (!m) {
        out.push(flag);
        continue;
      }
      const dirs: string[] = [];
      for (const d of m[1] === 'lowerdir' ? m[2]!.split(':') : [m[2]!]) {
        const r = bindSource(d, `${where}.o ${m[1]}`, policy);
        if (!r.ok) return r;
        dirs.push(r.path);
      }
      out.push(`${m[1]}=${dirs.join(':')}`);
    }
    opts.set('o', out.join(','));
    return OK;
  }
  if (device !== undefined && device.startsWith('/')) {
    if (/^(nfs|nfs4|cifs|smb3)$/.test(type)) return OK; // a remote export, reached over the network
    return checkDevice(device, `${where}.device`, policy);
  }
  return OK;
}

/** A volume's driver and options (volume create, a Mounts entry of type volume). */
function checkVolumeDriver(driver: string | undefined, opts: Map<string, string | undefined> | undefined, where: string, policy: MountPolicy): Decision {
  // Another driver is a plugin whose options mean what it says; plugins were checked at install.
  if (driver !== undefined && driver !== '' && driver !== 'local') return OK;
  return checkLocalOptions(opts, where, policy);
}

/** One `docker run -v` string: "src:dst[:mode]" (moby linuxSplitRawSpec); an absolute src is a bind. */
function checkBind(b: string | undefined, where: string, policy: MountPolicy, set: (v: string) => void): Decision {
  if (b === undefined) return { ok: false, path: '', where, reason: 'a bind that is null' };
  const parts = b.split(':');
  if (parts.length > 3 || parts[0] === '') return OK; // dockerd refuses it as an invalid spec
  if (parts.length === 1 || !parts[0]!.startsWith('/')) return OK; // an anonymous or named volume
  const r = bindSource(parts[0]!, where, policy);
  if (!r.ok) return r;
  set([r.path, ...parts.slice(1)].join(':'));
  return OK;
}

const MOUNT_TYPES = new Set(['bind', 'volume', 'tmpfs', 'npipe', 'cluster']);

/**
 * `swarm`: a service's mount, whose type swarm's converter upper-cases (Go's strings.ToUpper:
 * "bınd" is BIND) and defaults to bind (moby daemon/cluster/convert/container.go); the proxy
 * sends the type it understood, in dockerd's own spelling.
 */
function checkMounts(mounts: (Mount | undefined)[] | undefined, where: string, policy: MountPolicy, swarm = false): Decision {
  for (const [i, m] of (mounts ?? []).entries()) {
    const at = `${where}[${i}]`;
    if (!m) return { ok: false, path: '', where: at, reason: 'a mount that is null' };
    if (swarm) {
      const t = goToUpper(m.Type ?? '');
      m.Type = t === '' ? 'bind' : MOUNT_TYPES.has(t.toLowerCase()) ? t.toLowerCase() : m.Type;
    }
    const type = m.Type ?? '';
    if (!MOUNT_TYPES.has(type) || type === 'npipe') return { ok: false, path: '', where: `${at}.Type`, reason: `mount type ${JSON.stringify(type)} is not supported by berth` };
    let d: Decision = OK;
    if (type === 'bind') {
      if (m.Source === undefined) d = { ok: false, path: '', where: at, reason: 'a bind mount without a Source' };
      else {
        const r = bindSource(m.Source, `${at}.Source`, policy);
        if (r.ok) m.Source = r.path;
        else d = r;
      }
    } else if (type === 'volume') {
      const dc = m.VolumeOptions?.DriverConfig;
      d = checkVolumeDriver(dc?.Name, dc?.Options, `${at}.VolumeOptions.DriverConfig.Options`, policy);
    }
    if (!d.ok) return d;
  }
  return OK;
}

/** Go's strings.ToUpper: simple (one-to-one) case mapping, so ß stays ß where JavaScript gives SS. */
function goToUpper(s: string): string {
  let out = '';
  for (const c of s) {
    const u = c.toUpperCase();
    out += [...u].length === 1 ? u : c;
  }
  return out;
}

/** POST /containers/create. */
export function checkContainerCreate(body: ContainerCreate, policy: MountPolicy): Decision {
  const hc = body.HostConfig;
  if (!hc) return OK;
  if (policy.hostKernel && !policy.hostKernel.allowPrivileged) {
    const r = hostKernelRefusal(hc);
    if (r) return { ok: false, path: '', where: r.field, reason: r.what, message: hostKernelMessage(r) };
  }
  for (const [i, b] of (hc.Binds ?? []).entries()) {
    const d = checkBind(b, `HostConfig.Binds[${i}]`, policy, (v) => (hc.Binds![i] = v));
    if (!d.ok) return d;
  }
  const d = checkMounts(hc.Mounts, 'HostConfig.Mounts', policy);
  if (!d.ok) return d;
  for (const [i, dev] of (hc.Devices ?? []).entries()) {
    if (!dev || dev.PathOnHost === undefined) continue; // dockerd refuses a device without a path
    const dd = checkDevice(dev.PathOnHost, `HostConfig.Devices[${i}].PathOnHost`, policy);
    if (!dd.ok) return dd;
  }
  return OK;
}

/** POST /volumes/create. */
export function checkVolumeCreate(body: VolumeCreate, policy: MountPolicy): Decision {
  return checkVolumeDriver(body.Driver, body.DriverOpts, 'DriverOpts', policy);
}

/** Plugin privileges (pull, upgrade, a service's PluginSpec): mounts and devices are paths. */
function checkPrivilege(name: string, values: readonly (string | undefined)[], where: string, policy: MountPolicy): Decision {
  if (name === 'allow-all-devices') return { ok: false, path: '', where, reason: "the plugin asks for every device of the VM (allow-all-devices), which includes the VM's disks", fix: 'berth does not install such plugins.' };
  for (const [i, v] of values.entries()) {
    if (v === undefined) continue;
    const at = `${where}.Value[${i}]`;
    const d = name === 'mount' ? mountPrivilege(v, at, policy) : name === 'device' ? checkDevice(v, at, policy) : OK;
    if (!d.ok) return d;
  }
  return OK;
}

/** A plugin's mount is a VM path the plugin container binds; it is judged as a bind source, but not rewritten. */
function mountPrivilege(p: string, where: string, policy: MountPolicy): Decision {
  const r = resolveSource(p, where, policy);
  if (!r.ok) return r;
  if (r.path !== path.posix.normalize(p).replace(/(.)\/+$/, '$1')) return { ok: false, path: p, where, reason: `it is a symbolic link (to ${r.path})`, fix: 'Give the plugin the real folder instead.' };
  return OK;
}

export function checkPrivileges(privileges: readonly (Privilege | undefined)[], policy: MountPolicy): Decision {
  return checkPrivilegeList(privileges.map((p) => p && ([p.Name, p.Value] as const)), '', policy);
}

/** Privileges as (name, values): the API's and swarm's runtime spelling alike. */
function checkPrivilegeList(list: readonly (readonly [string | undefined, readonly (string | undefined)[] | undefined] | undefined)[], where: string, policy: MountPolicy): Decision {
  for (const [i, p] of list.entries()) {
    if (!p) continue;
    const d = checkPrivilege(p[0] ?? '', p[1] ?? [], `${where}[${i}]`, policy);
    if (!d.ok) return d;
  }
  return OK;
}

/** POST /services/create and /services/{id}/update (swarm mode inside the VM). */
export function checkServiceSpec(body: ServiceSpec, policy: MountPolicy): Decision {
  const tt = body.TaskTemplate;
  const d = checkMounts(tt?.ContainerSpec?.Mounts, 'TaskTemplate.ContainerSpec.Mounts', policy, true);
  if (!d.ok) return d;
  const runtime = (tt?.PluginSpec?.privileges ?? []).map((p: RuntimePrivilege | undefined) => p && ([p.name, p.value] as const));
  return checkPrivilegeList(runtime, 'TaskTemplate.PluginSpec.privileges', policy);
}

/** The config.json of a plugin archive (POST /plugins/create). */
export function checkPluginConfig(c: PluginConfig, policy: MountPolicy): Decision {
  for (const [i, m] of (c.Mounts ?? []).entries()) {
    if (!m || m.Source === undefined || m.Source === '') continue;
    const d = mountPrivilege(m.Source, `config.json Mounts[${i}].Source`, policy);
    if (!d.ok) return d;
  }
  if (c.Linux?.AllowAllDevices) return checkPrivilege('allow-all-devices', [], 'config.json Linux.AllowAllDevices', policy);
  for (const [i, dev] of (c.Linux?.Devices ?? []).entries()) {
    if (!dev || dev.Path === undefined || dev.Path === '') continue;
    const d = checkDevice(dev.Path, `config.json Linux.Devices[${i}].Path`, policy);
    if (!d.ok) return d;
  }
  return OK;
}

/** A plugin about to be enabled: the mounts and devices it will really get. */
export function checkPluginSettings(p: PluginState, policy: MountPolicy): Decision {
  if (p.allowAllDevices) return checkPrivilege('allow-all-devices', [], 'Config.Linux.AllowAllDevices', policy);
  for (const [i, src] of p.mountSources.entries()) {
    const d = mountPrivilege(src, `Settings.Mounts[${i}].Source`, policy);
    if (!d.ok) return d;
  }
  for (const [i, dev] of p.devicePaths.entries()) {
    const d = checkDevice(dev, `Settings.Devices[${i}].Path`, policy);
    if (!d.ok) return d;
  }
  return OK;
}

/**
 * POST /plugins/{name}/set: "name[.field]=value". A name without a field sets the plugin's only
 * settable field (moby plugin/v2/settable.go), so which values are paths is known only from the
 * plugin's config: `mounts` and `devices` are its mount and device names.
 */
export function checkPluginSet(args: readonly (string | undefined)[], plugin: Pick<PluginState, 'mounts' | 'devices'>, policy: MountPolicy): Decision {
  for (const [i, a] of args.entries()) {
    if (a === undefined) continue;
    const eq = a.indexOf('=');
    if (eq <= 0) continue;
    let name = a.slice(0, eq);
    const dot = name.lastIndexOf('.');
    if (dot > 0) name = name.slice(0, dot);
    const value = a.slice(eq + 1);
    const where = `[${i}]`;
    const d = plugin.mounts.includes(name) ? mountPrivilege(value, where, policy) : plugin.devices.includes(name) ? checkDevice(value, where, policy) : OK;
    if (!d.ok) return d;
  }
  return OK;
}

/** The message the docker CLI prints ("Error response from daemon: ..."). */
export function refusalMessage(d: Extract<Decision, { ok: false }>, policy: MountPolicy): string {
  if (d.message) return d.message;
  const shared = policy.shares.map((s) => s.path).join(', ') || 'none';
  const what = d.path ? `The path ${d.path} (${d.where})` : `The mount in ${d.where}`;
  return `berth: ${what} cannot be used: ${d.reason}. Shared folders: ${shared}. ${d.fix ?? sharesFix}`;
}
