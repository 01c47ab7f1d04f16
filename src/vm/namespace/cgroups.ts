import fs from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '../../util/errors.js';

/**
 * The namespace backend's cgroup subtree (docs/namespace.md): one folder named for the berth home
 * beneath the daemon's own cgroup in every hierarchy the host mounts, holding the guest's whole
 * process tree (its cgroup namespace is rooted there, so dockerd's cgroups land beneath it). It
 * carries the limits that the VM's size gives a VM (memory, pids, CPU) and a device allow-list, so
 * that nothing in the guest can open a host disk even if a container got through the proxy.
 */
export interface Hierarchy {
  /** Where the host mounts it: /sys/fs/cgroup/memory, /sys/fs/cgroup (v2), ... */
  mount: string;
  kind: 'v1' | 'v2';
  /** The word stage-2 init mounts it by: "cpu,cpuacct", "name=systemd", "unified" (v2 beside v1). */
  key: string;
  /** The daemon's own cgroup in it ("/user.slice/...", "/"). */
  self: string;
}

/** Mount options that are not controllers. */
const GENERIC_OPTIONS = new Set(['rw', 'ro', 'relatime', 'noatime', 'nosuid', 'nodev', 'noexec', 'clone_children', 'xattr', 'nsdelegate', 'memory_recursiveprot', 'memory_localevents']);

/**
 * The hierarchies of `/proc/self/mounts` joined with the daemon's place in each
 * (`/proc/self/cgroup`). A v1 hierarchy the daemon has no line for is left out.
 */
export function parseHierarchies(mounts: string, selfCgroup: string): Hierarchy[] {
  const places = new Map<string, string>();
  for (const line of selfCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (m) places.set(m[1] === '0' && m[2] === '' ? '' : m[2]!, m[3]!);
  }
  const out: Hierarchy[] = [];
  for (const line of mounts.split('\n')) {
    const [, mount, type, options] = line.split(' ');
    if (!mount || !options) continue;
    if (type === 'cgroup2') {
      const self = places.get('');
      if (self !== undefined) out.push({ mount: unescapeMount(mount), kind: 'v2', key: 'unified', self });
    } else if (type === 'cgroup') {
      const controllers = options.split(',').filter((o) => !GENERIC_OPTIONS.has(o));
      const key = [...places.keys()].find((k) => k !== '' && k.split(',').every((c) => controllers.includes(c)) && controllers.every((c) => k.split(',').includes(c)));
      if (key !== undefined) out.push({ mount: unescapeMount(mount), kind: 'v1', key, self: places.get(key)! });
    }
  }
  return out;
}

/** v2 when the host mounts only the unified hierarchy; v1 (hybrid or legacy) otherwise. */
export function cgroupLayout(hierarchies: readonly Hierarchy[]): 'v1' | 'v2' {
  return hierarchies.some((h) => h.kind === 'v1') ? 'v1' : 'v2';
}

/** The devices the guest may use: nothing of the host's disks or memory (docs/namespace.md). */
export const DEVICE_ALLOW = [
  'c *:* m',
  'b *:* m',
  'c 1:3 rwm', // null
  'c 1:5 rwm', // zero
  'c 1:7 rwm', // full
  'c 1:8 rwm', // random
  'c 1:9 rwm', // urandom
  'c 5:0 rwm', // tty
  'c 5:1 rwm', // console
  'c 5:2 rwm', // ptmx
  'c 136:* rwm', // pts
  'c 10:200 rwm', // net/tun
  'c 10:229 rwm', // fuse
  'c 10:237 rwm', // loop-control: the launcher mounts the images and the data store
  'b 7:* rwm', // loop devices
];

export interface SubtreeLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

export class CgroupSubtree {
  constructor(
    readonly hierarchies: readonly Hierarchy[],
    readonly name: string,
  ) {
    if (!/^[\w.-]{1,64}$/.test(name)) throw new BerthError('USAGE', `Not a cgroup name: ${JSON.stringify(name)}.`);
  }

  /** The subtree's folder in every hierarchy. */
  paths(): string[] {
    return this.hierarchies.map((h) => this.pathIn(h));
  }

  pathIn(h: Hierarchy): string {
    return path.join(h.mount, h.self, this.name);
  }

  /**
   * Creates the folders and sets the limits. A limit the host does not let us set (a v2
   * controller not delegated to the daemon's cgroup) is reported, not fatal.
   */
  async create(limits: SubtreeLimits): Promise<string[]> {
    const skipped: string[] = [];
    for (const h of this.hierarchies) {
      const dir = this.pathIn(h);
      await fs.mkdir(dir, { recursive: true });
      const set = async (file: string, value: string, what: string) => {
        try {
          await fs.writeFile(path.join(dir, file), value);
        } catch (err) {
          skipped.push(`${what} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
        }
      };
      const has = (file: string) => fs.access(path.join(dir, file)).then(() => true, () => false);
      const cpus = Math.max(1, limits.cpus);
      if (h.kind === 'v1') {
        // A cpuset cgroup takes no process until it has CPUs and memory nodes.
        if (await has('cpuset.cpus')) {
          const parent = path.dirname(dir);
          await fs.writeFile(path.join(dir, 'cpuset.cpus'), (await fs.readFile(path.join(parent, 'cpuset.cpus'), 'utf8')).trim() || '0');
          await fs.writeFile(path.join(dir, 'cpuset.mems'), (await fs.readFile(path.join(parent, 'cpuset.mems'), 'utf8')).trim() || '0');
        }
        if (await has('memory.limit_in_bytes')) await set('memory.limit_in_bytes', String(limits.memoryBytes), 'the memory limit');
        if (await has('pids.max')) await set('pids.max', String(limits.pids), 'the process limit');
        if (await has('cpu.cfs_quota_us')) {
          await set('cpu.cfs_period_us', '100000', 'the CPU period');
          await set('cpu.cfs_quota_us', String(cpus * 100000), 'the CPU limit');
        }
        if (await has('devices.deny')) {
          await fs.writeFile(path.join(dir, 'devices.deny'), 'a');
          for (const rule of DEVICE_ALLOW) await fs.writeFile(path.join(dir, 'devices.allow'), rule);
        }
      } else if (h.key === 'unified' && cgroupLayout(this.hierarchies) === 'v2') {
        if (await has('memory.max')) await set('memory.max', String(limits.memoryBytes), 'the memory limit');
        else skipped.push('the memory limit (the memory controller is not delegated to berth\'s cgroup)');
        if (await has('pids.max')) await set('pids.max', String(limits.pids), 'the process limit');
        if (await has('cpu.max')) await set('cpu.max', `${cpus * 100000} 100000`, 'the CPU limit');
      }
    }
    return skipped;
  }

  /** Writes `pid` into the subtree in every hierarchy. */
  async enter(pid: number): Promise<void> {
    for (const dir of this.paths()) await fs.writeFile(path.join(dir, 'cgroup.procs'), String(pid));
  }

  /**
   * Removes the subtree, deepest folders first (dockerd's own cgroups lie beneath). Folders that
   * still hold a process stay; their paths are returned.
   */
  async remove(): Promise<string[]> {
    const left: string[] = [];
    for (const dir of this.paths()) {
      for (const d of await foldersDeepestFirst(dir)) {
        try {
          await fs.rmdir(d);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') left.push(d);
        }
      }
    }
    return left;
  }
}

async function foldersDeepestFirst(dir: string): Promise<string[]> {
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) if (e.isDirectory()) out.push(...(await foldersDeepestFirst(path.join(dir, e.name))));
  out.push(dir);
  return out;
}

/** /proc/self/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}
