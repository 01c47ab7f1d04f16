import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { BerthError, toBerthError } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { readTail, writeFileAtomic } from '../../util/files.js';
import { step, type ProgressListener } from '../../util/progress.js';
import { packageRoot, type BerthPaths } from '../../settings/paths.js';
import type { Settings } from '../../settings/settings.js';
import type { ResolvedImage } from '../../daemon/image-source.js';
import type { MuxLink } from '../../control/mux.js';
import { GUEST_MAC } from '../../daemon/guest-network.js';
import { findQemu, which } from '../qemu-binary.js';
import { pidAlive } from '../qemu-process.js';
import { uuidFromTag } from '../qemu-args.js';
import type { Attachment, Booted, BootRequest, DataStore, LaunchedGuest, PreparedHost, VmDriver } from '../driver.js';
import { CgroupSubtree, cgroupLayout, parseHierarchies } from './cgroups.js';
import { ControlServer } from './control-server.js';
import { dataStoreFor } from '../stores.js';
import { emittedWithin } from '../../util/events.js';

/** How long the launcher gets to create the namespace's tap (normally well under a second). */
const TAP_WAIT_MS = 30_000;

interface Prepared {
  qemu: string;
}

/** Where this backend keeps its files in the berth home. */
interface NsPaths {
  /** Bound into the namespace at /run/berth-host: the control socket and the boot's settings. */
  hostDir: string;
  controlSocket: string;
  /** An empty folder the launcher mounts its private tmpfs on (only visible in the namespace). */
  work: string;
  shares: string;
  state: string;
}

/** What the daemon records of a running namespace, for a daemon that adopts it. */
interface NsState {
  launcher: number;
  pid1: number;
}

/**
 * The namespace backend (docs/namespace.md): the guest's base image and engine pack run in their
 * own namespaces on the host's kernel, launched by libexec/namespace-launch as root. Its network
 * reaches berth's translator through a tap relay (QEMU with no machine, in the namespace's network
 * and pid namespaces), its control channel through a socket the daemon listens on, its shared
 * folders are bind mounts, its data store a sparse ext4 file.
 */
export class NamespaceDriver implements VmDriver {
  readonly kind = 'namespace';
  readonly sharesBy = 'bind' as const;
  readonly hostKernel = true;
  readonly dataStore: DataStore;
  private readonly ns: NsPaths;

  constructor(
    private readonly paths: BerthPaths,
    private readonly log: Logger,
  ) {
    this.dataStore = dataStoreFor(paths, 'namespace');
    this.ns = {
      hostDir: path.join(paths.runDir, 'ns'),
      controlSocket: path.join(paths.runDir, 'ns', 'control.sock'),
      work: path.join(paths.runDir, 'ns-root'),
      shares: path.join(paths.runDir, 'ns-shares'),
      state: path.join(paths.runDir, 'namespace.json'),
    };
  }

  async prepare(settings: Settings, imageOf: () => Promise<ResolvedImage>, emit: ProgressListener): Promise<PreparedHost> {
    const qemu = await step(emit, 'host', 'Check the host for the namespace backend', async (d) => {
      const missing = hostProblems();
      if (settings['network.backend'] !== 'berth') missing.push('network.backend "berth" (the namespace reaches the network through berth\'s translator)');
      if (missing.length > 0) {
        throw new BerthError('NAMESPACE_UNAVAILABLE', `The namespace backend cannot run on this host: it needs ${missing.join('; ')}.`, {
          hint: 'Use the VM: `berth start --backend vm` (or `berth settings set backend vm`).',
        });
      }
      const q = await findQemu();
      d('root, namespaces, squashfs, overlay, loop, tun');
      return q.system;
    });
    await imageOf();
    const detail: Prepared = { qemu };
    return { accelerator: 'native', detail };
  }

  async boot<T>(req: BootRequest, attach: (guest: LaunchedGuest) => Attachment<T>, emit: ProgressListener): Promise<Booted<T>> {
    const { qemu } = req.host.detail as Prepared;
    const hierarchies = parseHierarchies(await fsp.readFile('/proc/self/mounts', 'utf8'), await fsp.readFile('/proc/self/cgroup', 'utf8'));
    const cgroups = this.subtree(hierarchies);
    let guest: NamespaceGuest | undefined;
    try {
      guest = await step(emit, 'vm.launch', 'Launch the namespaces', async (d) => {
        await this.writeBootFiles(req, hierarchies);
        // A subtree left by a guest that was killed with its daemon is emptied first.
        await cgroups.remove();
        const skipped = await cgroups.create({ memoryBytes: req.memoryMiB * 1024 * 1024, cpus: req.cpus, pids: 32768 });
        for (const s of skipped) emit({ type: 'note', level: 'warn', message: `The namespace runs without ${s}.`, at: Date.now() });
        const control = await ControlServer.listen(this.ns.controlSocket);
        const g = await this.launch(req, cgroups, control).catch((err: unknown) => {
          control.close();
          throw err;
        });
        d(`pid ${g.pid}`);
        return g;
      });
      const launched = guest;
      await step(emit, 'vm.network', 'Connect the namespace to the translator', async (d) => {
        await launched.waitForTap(TAP_WAIT_MS);
        launched.startRelay(qemu, this.paths.netSocket, this.paths.qemuLog);
        d('tap eth0 ↔ run/net.sock');
      });
    } catch (err) {
      if (guest && !guest.hasExited) await guest.forceOff(3000);
      throw err;
    }
    const launched = guest;
    const exited = new Promise<never>((_, reject) => launched.once('exit', reject));
    exited.catch(() => {});
    const attachment = attach(launched);
    try {
      const attached = await Promise.race([attachment.ready, exited]);
      return { guest: launched, attached, accelerator: 'native' };
    } catch (err) {
      await attachment.close();
      if (!launched.hasExited) await launched.forceOff(3000);
      throw err;
    }
  }

  async adopt(): Promise<LaunchedGuest | undefined> {
    const pid1 = await runningNamespacePid(this.paths);
    if (pid1 === undefined) return undefined;
    const control = await ControlServer.listen(this.ns.controlSocket);
    return new NamespaceGuest(pid1, undefined, control, this.paths.vmLog, this.log);
  }

  async consoleTail(): Promise<string> {
    return (await readTail(this.paths.vmLog, 25)).trimEnd();
  }

  async cleanup(): Promise<void> {
    try {
      const hierarchies = parseHierarchies(await fsp.readFile('/proc/self/mounts', 'utf8'), await fsp.readFile('/proc/self/cgroup', 'utf8'));
      const left = await this.subtree(hierarchies).remove();
      if (left.length > 0) this.log.warn('cgroup folders of the namespace could not be removed (a process is still in them)', { left: left.join(', ') });
    } catch (err) {
      this.log.warn('could not remove the namespace\'s cgroups', { err: toBerthError(err).message });
    }
    for (const p of [this.ns.hostDir, this.ns.work, this.ns.shares, this.ns.state, this.paths.netSocket]) {
      await fsp.rm(p, { recursive: true, force: true }).catch(() => {});
    }
  }

  /** One subtree per berth home: its name is derived from the home, as QEMU's instance UUID is. */
  private subtree(hierarchies: ReturnType<typeof parseHierarchies>): CgroupSubtree {
    return new CgroupSubtree(hierarchies, `berth-${uuidFromTag(this.paths.home).slice(0, 8)}`);
  }

  /** The files the guest reads at boot: written fresh, in a folder only this boot's guest sees. */
  private async writeBootFiles(req: BootRequest, hierarchies: ReturnType<typeof parseHierarchies>): Promise<void> {
    await fsp.rm(this.ns.hostDir, { recursive: true, force: true });
    await fsp.mkdir(this.ns.hostDir, { mode: 0o700 });
    await fsp.rm(this.ns.work, { recursive: true, force: true });
    await fsp.mkdir(this.ns.work, { mode: 0o700 });
    const uptime = (await fsp.readFile('/proc/uptime', 'utf8')).split(' ')[0] ?? '0';
    await fsp.writeFile(path.join(this.ns.hostDir, 'launch-uptime'), `${uptime}\n`);
    await fsp.writeFile(path.join(this.ns.hostDir, 'cmdline'), `${req.network.cmdline}\n`);
    await fsp.writeFile(path.join(this.ns.hostDir, 'cgroup-layout'), `${cgroupLayout(hierarchies)}\n`);
    await fsp.writeFile(path.join(this.ns.hostDir, 'cgroup-hierarchies'), hierarchies.filter((h) => h.kind === 'v1' || cgroupLayout(hierarchies) === 'v2').map((h) => h.key).join('\n') + '\n');
    const shares = req.shares ?? [];
    for (const s of shares) {
      if (/[\n\0]/.test(s.path) || !path.isAbsolute(s.path)) throw new BerthError('SETTINGS_INVALID', `The shared folder ${JSON.stringify(s.path)} cannot be bound into the namespace (a newline in its path).`);
    }
    await writeFileAtomic(this.ns.shares, shares.map((s) => `${s.readOnly ? 'ro' : 'rw'} ${s.path}\n`).join(''));
  }

  private async launch(req: BootRequest, cgroups: CgroupSubtree, control: ControlServer): Promise<NamespaceGuest> {
    const cgroupPaths = cgroups.paths();
    if (cgroupPaths.some((p) => /\s/.test(p))) throw new BerthError('NAMESPACE_UNAVAILABLE', `The daemon's cgroup has a space in its path (${cgroupPaths.join(', ')}); the namespace launcher cannot use it.`, { hint: 'Start berth from another cgroup, or use the VM: `berth start --backend vm`.' });
    const translator = req.network.translator;
    const env: NodeJS.ProcessEnv = {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
      BERTH_NS_CGROUPS: cgroupPaths.join(' '),
      BERTH_NS_WORK: this.ns.work,
      BERTH_NS_BASE: req.image.rootfs,
      BERTH_NS_PACK: req.image.pack.squashfs,
      BERTH_NS_DATA: this.dataStore.path,
      BERTH_NS_UPPER_MIB: String(Math.min(4096, Math.max(256, Math.floor(req.memoryMiB / 2)))),
      BERTH_NS_HOSTDIR: this.ns.hostDir,
      BERTH_NS_SHARES: this.ns.shares,
      BERTH_NS_MAC: GUEST_MAC,
      BERTH_NS_MTU: String(translator?.mtu ?? 65520),
      BERTH_INSTANCE: uuidFromTag(this.paths.home),
    };
    const out = fs.openSync(this.paths.vmLog, 'a');
    const child = spawn('/bin/sh', [path.join(packageRoot(), 'libexec', 'namespace-launch')], { detached: true, stdio: ['ignore', out, out], env });
    fs.closeSync(out);
    child.unref();
    const pid1 = await waitForChild(child, 10_000);
    await writeFileAtomic(this.ns.state, JSON.stringify({ launcher: child.pid ?? 0, pid1 } satisfies NsState));
    return new NamespaceGuest(pid1, child, control, this.paths.vmLog, this.log);
  }
}

/**
 * The guest's PID 1 as a LaunchedGuest. A launched one exits with its launcher (`unshare`
 * returns when PID 1 is gone); an adopted one is polled.
 */
class NamespaceGuest extends EventEmitter implements LaunchedGuest {
  private exited = false;
  private relay: ChildProcess | undefined;

  constructor(
    readonly pid: number,
    launcher: ChildProcess | undefined,
    private readonly control: ControlServer,
    private readonly vmLog: string,
    private readonly log: Logger,
  ) {
    super();
    if (launcher && launcher.exitCode === null) launcher.once('exit', (code, signal) => this.markExited(code, signal));
    this.poll();
  }

  get hasExited(): boolean {
    return this.exited;
  }

  async openControl(): Promise<MuxLink> {
    return this.control;
  }

  waitExit(timeoutMs: number): Promise<boolean> {
    return this.exited ? Promise.resolve(true) : emittedWithin(this, 'exit', timeoutMs);
  }

  /** SIGKILL to PID 1 ends every process of the namespace (the relay included). */
  async forceOff(timeoutMs: number): Promise<void> {
    if (this.exited) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await this.waitExit(timeoutMs);
  }

  async waitForTap(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (this.exited) throw new BerthError('NAMESPACE_FAILED', 'The namespace stopped before its network device existed.', { hint: `See ${this.vmLog} for the launcher's messages.` });
      try {
        if (/^\s*eth0:/m.test(fs.readFileSync(`/proc/${this.pid}/net/dev`, 'utf8'))) return;
      } catch {
        // not there yet
      }
      if (Date.now() > until) throw new BerthError('NAMESPACE_FAILED', `The namespace's network device did not appear within ${timeoutMs / 1000} s.`, { hint: `See ${this.vmLog} for the launcher's messages.` });
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * The tap relay: QEMU with no machine, in the namespace's network and pid namespaces (so it
   * dies with PID 1) and the host's mount namespace (its stream socket is in the berth home).
   */
  startRelay(qemu: string, netSocket: string, logFile: string): void {
    fs.rmSync(netSocket, { force: true });
    const out = fs.openSync(logFile, 'w');
    const args = ['-t', String(this.pid), '-n', '-p', qemu, '-nodefaults', '-nographic', '-machine', 'none', '-display', 'none', '-netdev', 'tap,id=t0,ifname=eth0,script=no,downscript=no', '-netdev', `stream,id=s0,server=on,addr.type=unix,addr.path=${netSocket.replace(/,/g, ',,')}`, '-netdev', 'hubport,id=h0,hubid=0,netdev=t0', '-netdev', 'hubport,id=h1,hubid=0,netdev=s0'];
    this.relay = spawn('nsenter', args, { detached: true, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.relay.on('error', (err) => this.log.error('the namespace\'s network relay failed to start', { err: err.message }));
    this.relay.unref();
  }

  private poll(): void {
    const tick = () => {
      if (this.exited) return;
      if (!pidAlive(this.pid)) this.markExited(null, null);
      else setTimeout(tick, 250).unref();
    };
    setTimeout(tick, 250).unref();
  }

  private markExited(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exited) return;
    this.exited = true;
    this.control.close();
    // `unshare` does not pass on how its child (PID 1) ended: a PID 1 killed by a signal shows as
    // status 1. The console log says whether init reached a fatal error first.
    const how = signal ? `its launcher was killed by ${signal}` : `its PID 1 (pid ${this.pid}) ended: killed, or powered off after a fatal error (the launcher reported ${code !== null ? `status ${code}` : 'no status'})`;
    this.emit('exit', new BerthError('NAMESPACE_EXITED', `The namespace stopped unexpectedly: ${how}.`, { hint: `See ${this.vmLog} for the guest's boot messages.` }));
  }
}

/** What is missing on this host for the namespace backend (empty: nothing). */
function hostProblems(): string[] {
  const out: string[] = [];
  if (process.platform !== 'linux') return ['Linux'];
  if (process.getuid?.() !== 0) out.push('root (it mounts images, creates namespaces, a network device and cgroups; run the daemon as root)');
  for (const ns of ['mnt', 'net', 'pid', 'uts', 'ipc', 'cgroup']) if (!fs.existsSync(`/proc/self/ns/${ns}`)) out.push(`${ns} namespaces`);
  let filesystems = '';
  try {
    filesystems = fs.readFileSync('/proc/filesystems', 'utf8');
  } catch {
    // reported below
  }
  for (const f of ['squashfs', 'overlay', 'ext4']) if (!new RegExp(`\\s${f}$`, 'm').test(filesystems)) out.push(`the ${f} filesystem in the kernel`);
  if (!fs.existsSync('/dev/loop-control')) out.push('loop devices (/dev/loop-control)');
  if (!fs.existsSync('/dev/net/tun')) out.push('/dev/net/tun');
  for (const tool of ['unshare', 'nsenter', 'mkfs.ext4', 'pivot_root']) if (!which(tool, { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` })) out.push(`the ${tool} command`);
  return out;
}

/** The pid of `unshare`'s forked child (the namespace's PID 1), once it exists. */
async function waitForChild(child: ChildProcess, timeoutMs: number): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
      throw new BerthError('NAMESPACE_FAILED', `The namespace launcher ended at once (status ${child.exitCode ?? child.signalCode}).`, { hint: 'See `berth logs vm` for its messages.' });
    }
    try {
      const comm = fs.readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim();
      const kids = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      if (comm === 'unshare' && kids.length === 1 && Number.isInteger(kids[0])) return kids[0]!;
    } catch {
      // not yet
    }
    if (Date.now() > until) throw new BerthError('NAMESPACE_FAILED', 'The namespace launcher did not create the namespaces within 10 s.', { hint: 'See `berth logs vm` for its messages.' });
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The namespace's PID 1 a daemon of this berth home left running, or undefined. Only a live
 * process whose environment carries this home's instance id counts (not a reused pid).
 */
export async function runningNamespacePid(paths: BerthPaths): Promise<number | undefined> {
  let state: NsState;
  try {
    state = parseState(await fsp.readFile(path.join(paths.runDir, 'namespace.json'), 'utf8'));
  } catch {
    return undefined;
  }
  if (!pidAlive(state.pid1)) return undefined;
  try {
    const env = fs.readFileSync(`/proc/${state.pid1}/environ`, 'utf8').split('\0');
    return env.includes(`BERTH_INSTANCE=${uuidFromTag(paths.home)}`) ? state.pid1 : undefined;
  } catch {
    return undefined;
  }
}

function parseState(text: string): NsState {
  const o = JSON.parse(text) as Record<string, unknown>;
  const ok = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 1;
  if (!ok(o.launcher) || !ok(o.pid1)) throw new Error('bad namespace state');
  return { launcher: o.launcher, pid1: o.pid1 };
}
