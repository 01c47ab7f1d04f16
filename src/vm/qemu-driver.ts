import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import { BerthError, toBerthError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { readTail } from '../util/files.js';
import { step, type ProgressListener } from '../util/progress.js';
import type { BerthPaths } from '../settings/paths.js';
import type { Settings } from '../settings/settings.js';
import type { ResolvedImage } from '../daemon/image-source.js';
import { findQemu, type QemuInstall } from './qemu-binary.js';
import { chooseAccelerator, fallbackWarning, type Accelerator, type ProbeResult } from './accel-probe.js';
import { VerdictCache } from './accel-verdicts.js';
import { watchForAccelFailure } from './accel-watch.js';
import { watchForSilentBoot } from './boot-watch.js';
import { QemuProcess, type QemuExit } from './qemu-process.js';
import type { VmConfig } from './qemu-args.js';
import type { MuxLink } from '../control/mux.js';
import { dialUnixSocket, socketLink } from '../control/socket-link.js';
import type { Attachment, Booted, BootRequest, DataStore, LaunchedGuest, PreparedHost, VmDriver } from './driver.js';
import { dataStoreFor } from './stores.js';

/** What `prepare` hands back to `boot` (PreparedHost.detail). */
interface QemuPrepared {
  install: QemuInstall;
  probe: ProbeResult;
  /** The accelerator setting: only `auto` may fall back to TCG after a runtime failure. */
  requested: Settings['accelerator'];
}

/**
 * The VM backend: one QEMU per berth home (docs/vm.md). Holds everything that is about QEMU: the
 * binary, the accelerator probe and its cached verdicts, the argv, the console and stderr watches,
 * the one extra boot after a silent kernel, the fall back to TCG when a hardware accelerator fails
 * after the probe passed, and the qcow2 data disk with its internal snapshots.
 */
export class QemuDriver implements VmDriver {
  readonly kind = 'qemu';
  readonly sharesBy = '9p' as const;
  readonly hostKernel = false;
  readonly dataStore: DataStore;
  private readonly verdicts: VerdictCache;

  constructor(
    private readonly paths: BerthPaths,
    private readonly log: Logger,
  ) {
    this.verdicts = new VerdictCache(paths.accelVerdicts);
    this.dataStore = dataStoreFor(paths, 'vm');
  }

  async prepare(settings: Settings, imageOf: () => Promise<ResolvedImage>, emit: ProgressListener): Promise<PreparedHost> {
    const install = await step(emit, 'qemu', 'Find QEMU', async (d) => {
      const q = await findQemu();
      d(`QEMU ${q.version}`);
      return q;
    });
    // The probe boots the image's kernel; QEMU is looked for first, so a host without it fails
    // before a first start spends minutes building the image.
    const image = await imageOf();
    const probe = await step(emit, 'accelerator', 'Probe the accelerator', async (d) => {
      const r = await chooseAccelerator(install.system, settings.accelerator, {
        kernel: { vmlinux: image.vmlinux, initramfs: image.initramfs, cmdline: image.cmdline, imageKey: image.key, cpus: settings.cpus, ...(cpuOverride() ? { cpuModel: cpuOverride()! } : {}) },
        verdicts: this.verdicts,
        qemuVersion: install.version,
      });
      d(`${r.accelerator}${r.attempts.some((a) => a.cached) ? ' (known from an earlier probe)' : ''}`);
      return r;
    });
    const detail: QemuPrepared = { install, probe, requested: settings.accelerator };
    return { accelerator: probe.accelerator, ...(probe.warning ? { warning: probe.warning } : {}), detail };
  }

  async boot<T>(req: BootRequest, attach: (guest: LaunchedGuest) => Attachment<T>, emit: ProgressListener): Promise<Booted<T>> {
    const { install, probe, requested } = req.host.detail as QemuPrepared;
    const warn = (message: string) => emit({ type: 'note', level: 'warn', message, at: Date.now() });
    let accel = probe.accelerator;
    try {
      return await this.attempt(install, accel, req, attach, emit);
    } catch (err) {
      const e = toBerthError(err);
      if (e.code === 'VM_SILENT_BOOT') {
        // Once: a second silent kernel fails the start with the same error.
        warn(`${e.message} Booting it again (the console log of this boot is kept as vm.prev.log).`);
        await this.keepLogs();
        return await this.attempt(install, accel, req, attach, emit);
      }
      if (!(e.code === 'ACCEL_FAILED_AT_RUNTIME' && requested === 'auto')) throw err;
      // The probe passed but the accelerator failed later: remember that, and boot again on TCG.
      if (probe.verdictKey) await this.verdicts.set(probe.verdictKey, { ok: false, reason: e.message });
      warn(fallbackWarning([{ accelerator: accel, ok: false, ms: 0, reason: e.message }]));
      await this.keepLogs();
      accel = 'tcg';
      return await this.attempt(install, accel, req, attach, emit);
    }
  }

  /** One launch: QEMU, then the attachment raced against QEMU exiting, KVM failing and a silent kernel. */
  private async attempt<T>(install: QemuInstall, accelerator: Accelerator, req: BootRequest, attach: (guest: LaunchedGuest) => Attachment<T>, emit: ProgressListener): Promise<Booted<T>> {
    const cfg: VmConfig = {
      network: req.network.vm,
      accelerator,
      cpus: req.cpus,
      memoryMiB: req.memoryMiB,
      vmlinux: req.image.vmlinux,
      initramfs: req.image.initramfs,
      rootfs: req.image.rootfs,
      pack: req.image.pack.squashfs,
      dataDisk: this.paths.dataDisk,
      cmdline: `${req.image.cmdline} ${req.network.cmdline}`,
      qmpSocket: this.paths.qmpSocket,
      controlSocket: this.paths.controlSocket,
      serialLog: this.paths.vmLog,
      pidFile: this.paths.qemuPidFile,
      instanceTag: this.paths.home,
      ...(req.sharesConfig ? { fwCfgFiles: [{ name: 'opt/berth/shares', file: req.sharesConfig }] } : {}),
      ...(cpuOverride() ? { cpuModel: cpuOverride()! } : {}),
    };
    const proc = await step(emit, 'vm.launch', 'Launch QEMU', async (d) => {
      const q = await QemuProcess.launch(install.system, cfg, this.paths.qemuLog, this.log.child('qemu'));
      d(`pid ${q.pid}`);
      return q;
    });
    const guest = new QemuGuest(proc, this.paths);
    const exited = new Promise<never>((_, reject) => guest.once('exit', reject));
    exited.catch(() => {});
    // A hardware accelerator that passed the probe can still fail later in the boot.
    const accelFailure = accelerator === 'tcg' ? undefined : watchForAccelFailure(this.paths.qemuLog, accelerator);
    // A kernel that never reaches the initramfs (seen once under TCG): boot once more.
    const silent = watchForSilentBoot(this.paths.vmLog);
    const attachment = attach(guest);
    try {
      const attached = await Promise.race([attachment.ready, exited, silent.failed, ...(accelFailure ? [accelFailure.failed] : [])]);
      return { guest, attached, accelerator };
    } catch (err) {
      await attachment.close();
      if (!guest.hasExited) await guest.forceOff(3000);
      throw err;
    } finally {
      accelFailure?.stop();
      silent.stop();
    }
  }

  async adopt(): Promise<LaunchedGuest | undefined> {
    const proc = await QemuProcess.adopt(this.paths.qemuPidFile, this.paths.qmpSocket, this.paths.home, this.log.child('qemu'));
    return proc ? new QemuGuest(proc, this.paths) : undefined;
  }

  async consoleTail(): Promise<string> {
    return currentBootTail(this.paths.vmLog);
  }

  async cleanup(): Promise<void> {
    for (const p of [this.paths.qmpSocket, this.paths.controlSocket, this.paths.netSocket, this.paths.qemuPidFile]) {
      await fs.rm(p, { force: true }).catch(() => {});
    }
  }

  /** Keeps a failed attempt's console and QEMU logs as *.prev.log for the next attempt. */
  private async keepLogs(): Promise<void> {
    for (const f of [this.paths.vmLog, this.paths.qemuLog]) {
      await fs.rename(f, f.replace(/\.log$/, '.prev.log')).catch(() => {});
    }
  }
}

/** A QEMU process as a LaunchedGuest: its exit turns into a BerthError that names the logs. */
class QemuGuest extends EventEmitter implements LaunchedGuest {
  constructor(
    private readonly proc: QemuProcess,
    private readonly paths: BerthPaths,
  ) {
    super();
    proc.once('exit', (e: QemuExit) => this.emit('exit', this.exitError(e)));
  }

  /** QEMU's chardev socket for the virtio-serial control port (the guest cannot touch the path). */
  async openControl(): Promise<MuxLink> {
    return socketLink(await dialUnixSocket(this.paths.controlSocket));
  }

  get pid(): number {
    return this.proc.pid;
  }

  get hasExited(): boolean {
    return this.proc.hasExited;
  }

  waitExit(timeoutMs: number): Promise<boolean> {
    return this.proc.waitExit(timeoutMs);
  }

  forceOff(timeoutMs: number): Promise<void> {
    return this.proc.quit(timeoutMs);
  }

  private exitError(e: QemuExit): BerthError {
    const how = e.signal ? `was killed by ${e.signal}` : e.code !== null ? `exited with status ${e.code}` : 'exited';
    return new BerthError('QEMU_EXITED', `The VM stopped unexpectedly: QEMU ${how}.`, {
      hint: `See the console log (${this.paths.vmLog}) and QEMU's messages (${this.paths.qemuLog}).`,
    });
  }
}

/** BERTH_QEMU_CPU: a CPU model override for experiments and benchmarks. */
function cpuOverride(): string | undefined {
  return process.env.BERTH_QEMU_CPU || undefined;
}

/**
 * The last 25 console lines of the VM's current boot: a guest that rebooted inside the same QEMU
 * (panic=-1 reboots on a kernel panic) has earlier boots in the same log, cut at the last
 * kernel banner.
 */
async function currentBootTail(vmLog: string): Promise<string> {
  const lines = (await readTail(vmLog, 400)).split('\n');
  const banner = lines.map((l) => /Linux version \d/.test(l)).lastIndexOf(true);
  return lines.slice(Math.max(banner, 0)).slice(-25).join('\n');
}
