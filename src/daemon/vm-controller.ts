import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import { realpathSync } from 'node:fs';
import http from 'node:http';
import { BerthError, toBerthError, type SerializedError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { step, type ProgressEvent, type ProgressListener } from '../util/progress.js';
import { readTail, writeFileAtomic } from '../util/files.js';
import type { BerthPaths } from '../settings/paths.js';
import { readSettings, type Settings } from '../settings/settings.js';
import { findQemu, type QemuInstall } from '../vm/qemu-binary.js';
import { chooseAccelerator, fallbackWarning, type Accelerator } from '../vm/accel-probe.js';
import { VerdictCache } from '../vm/accel-verdicts.js';
import { watchForAccelFailure } from '../vm/accel-watch.js';
import { watchForSilentBoot } from '../vm/boot-watch.js';
import { ensureDataDisk } from '../vm/data-disk.js';
import { QemuProcess, type QemuExit } from '../vm/qemu-process.js';
import type { VmConfig } from '../vm/qemu-args.js';
import { DockerProxy, type MountPolicy } from '../docker/index.js';
import { registerDockerContext } from './docker-context.js';
import { installCliPlugins, type PluginOutcome } from './cli-plugins.js';
import { prepareSocketPath } from '../util/unix-socket.js';
import { GuestSession, type EngineReport, type GuestInfo } from './guest-session.js';
import { guestNetwork, type GuestNetwork } from './guest-network.js';
import { PortPublisher } from '../ports/publisher.js';
import { extraForwards } from '../ports/forwards.js';
import { NetService } from '../net/net-service.js';
import { FileService, guestShareConfig, planShares } from '../fs/file-service.js';
import type { ShareSpec } from '../fs/share.js';
import { MountTracker } from '../fs/mount-tracker.js';
import { dockerJson } from '../ports/docker-api.js';
import type { ImageSource, ResolvedImage, ResolvedPack } from './image-source.js';
import { classifySwitch, downgradeError, readStamp, writeStamp, type EngineStamp } from '../engine/stamp.js';
import { createSnapshot, deleteSnapshot, listSnapshots } from '../engine/snapshot.js';
import type { NetworkReport, NetworkStatus, PhaseTiming, PortReport, PortsReport, StatusReport, VmState } from './api-types.js';
import { isWithin } from '../util/paths.js';
import { parseShareFailures, type ShareFailure } from '../control/share-mounts.js';

/** How long a container or exec start waits for pending host changes in cached shares. */
const DRAIN_TIMEOUT_MS = 5000;

/**
 * Owns the VM of one berth home: the lifecycle state machine
 *
 *   stopped ──start──▶ starting ──engine answers──▶ running ──stop──▶ stopping ──▶ stopped
 *      ▲                  │ error/timeout               │ QEMU died
 *      └──────start─── failed ◀────────────────────────┘
 *
 * and the pieces that live while the VM runs (QEMU process, guest session, Docker socket proxy).
 * Only one lifecycle operation runs at a time; a `start` issued while a start is under way joins it.
 *
 * Invariant: a start that fails leaves no QEMU behind (it is quit or killed before the error is
 * reported), and never touches the data disk beyond what QEMU itself does.
 */

interface Running {
  qemu: QemuProcess;
  session: GuestSession;
  /** The network translator (absent with QEMU's user network). */
  net: NetService | undefined;
  network: GuestNetwork;
  publisher: PortPublisher | undefined;
  /** The 9P file server (absent when no folder is shared). */
  files: FileService | undefined;
  /** Which shared folders containers mount (their host changes are replayed in the guest). */
  mounts: MountTracker | undefined;
  /** Shares the guest could not mount (bind mounts into them are refused). */
  unavailable: ShareFailure[];
  proxy: DockerProxy | undefined;
  accelerator: Accelerator;
  image: ResolvedImage;
  startedAt: Date;
}

/** A boot ticket outlives the start timeout by this much (the boot's mounts spend them first). */
const BOOT_TICKET_SLACK_MS = 60_000;
/** How long the agent gets to mount every share again (and a remount's tickets live). */
const REMOUNT_TIMEOUT_MS = 40_000;

export class VmController extends EventEmitter {
  private state: VmState = 'stopped';
  private running: Running | undefined;
  private failure: SerializedError | null = null;
  private warnings: string[] = [];
  private cliPlugins: PluginOutcome[] | null = null;
  private lastStart: { totalMs: number; phases: PhaseTiming[] } | null = null;
  private settings: Settings | undefined;
  private op: { kind: 'start' | 'stop'; promise: Promise<StatusReport>; events: EventEmitter } | undefined;
  private readonly verdicts: VerdictCache;

  constructor(
    private readonly paths: BerthPaths,
    private readonly images: ImageSource,
    private readonly log: Logger,
  ) {
    super();
    this.verdicts = new VerdictCache(paths.accelVerdicts);
  }

  get vmState(): VmState {
    return this.state;
  }

  /** Stopped with no operation under way: nothing for the daemon to own. */
  get idle(): boolean {
    return this.state === 'stopped' && this.op === undefined;
  }

  /** Re-attaches to a VM an earlier daemon left running. Called once at daemon start. */
  async adoptExisting(): Promise<void> {
    const qemu = await QemuProcess.adopt(this.paths.qemuPidFile, this.paths.qmpSocket, this.paths.home, this.log.child('qemu'));
    if (!qemu) return;
    this.log.info('found a running VM left by an earlier daemon; re-attaching', { pid: qemu.pid });
    this.state = 'starting';
    try {
      const saved = await this.readVmFile();
      this.settings = await readSettings(this.paths.settings);
      const session = new GuestSession(this.paths, this.log.child('guest'));
      session.connect();
      await session.waitSession(30_000);
      const image = saved?.image ?? (await this.images.current(this.settings['engine.version']));
      // The guest was configured for the network of its start, whatever the settings say now.
      const network = saved?.network ?? guestNetwork(this.settings, this.paths);
      // The shares of the boot the guest mounted; it mounts them again with fresh tickets.
      const files = saved?.files ? new FileService(this.paths.p9Socket, saved.files.shares, this.log.child('files')) : undefined;
      await files?.start();
      const net = network.translator ? new NetService(network.translator, this.log.child('net')) : undefined;
      net?.start();
      const running: Running = { qemu, session, net, network, publisher: undefined, files, mounts: undefined, unavailable: [], proxy: undefined, accelerator: saved?.accelerator ?? 'tcg', image: image!, startedAt: saved ? new Date(saved.startedAt) : new Date() };
      this.running = running;
      this.watch(running);
      await session.waitEngineReady(60_000);
      if (files) {
        running.unavailable = await this.remountShares(session, files);
        for (const f of running.unavailable) this.warnings.push(shareFailureWarning(f));
      }
      this.startChangeEvents(running);
      running.proxy = await this.startProxy(session, running.files?.shares ?? [], running.unavailable);
      running.publisher = this.startPublisher(running);
      this.state = 'running';
      this.failure = null;
      this.log.info('re-attached to the running VM');
    } catch (err) {
      const e = toBerthError(err);
      this.log.error('could not re-attach to the running VM; stopping it', { err: e.message });
      await this.teardown(true);
      this.state = 'stopped';
      this.warnings.push(`An earlier VM was found but did not answer (${e.message}); it was stopped. Run \`berth start\`.`);
    }
  }

  /** Starts the VM (or joins a start in progress). Progress goes to `onProgress`. */
  start(onProgress: ProgressListener, opts: { switchContext?: boolean } = {}): Promise<StatusReport> {
    if (this.op?.kind === 'start') return this.join(this.op, onProgress);
    if (this.op) return Promise.reject(new BerthError('VM_BUSY', 'The VM is stopping; wait for that to finish, then start it again.'));
    if (this.state === 'running') {
      onProgress({ type: 'note', level: 'info', message: 'berth is already running; nothing to do.', at: Date.now() });
      return this.status();
    }
    return this.runOp('start', onProgress, (emit) => this.doStart(emit, opts));
  }

  stop(onProgress: ProgressListener): Promise<StatusReport> {
    if (this.op?.kind === 'stop') return this.join(this.op, onProgress);
    if (this.op) return Promise.reject(new BerthError('VM_BUSY', 'The VM is starting; wait for the start to finish (or fail), then stop it.'));
    if (this.state === 'stopped') {
      onProgress({ type: 'note', level: 'info', message: 'berth is not running; nothing to stop.', at: Date.now() });
      return this.status();
    }
    return this.runOp('stop', onProgress, (emit) => this.doStop(emit));
  }

  async status(): Promise<StatusReport> {
    const s = this.settings ?? (await readSettings(this.paths.settings).catch(() => undefined));
    const r = this.running;
    const dockerSocket = s?.dockerSocket ?? this.paths.defaultDockerSocket;
    const engine = r?.session.engine;
    return {
      state: this.state,
      dockerHost: `unix://${dockerSocket}`,
      accelerator: r?.accelerator ?? null,
      cpus: s?.cpus ?? 0,
      memoryMiB: s?.memoryMiB ?? 0,
      diskGiB: s?.diskGiB ?? 0,
      imageVersion: r ? r.image.key.slice(0, 12) : null,
      image: r ? (r.image.versions as unknown as Record<string, unknown>) : null,
      cliPlugins: this.cliPlugins,
      enginePack: r?.image.pack ? { id: r.image.pack.id, title: r.image.pack.versions.title, dockerVersion: r.image.pack.versions.engineVersion, key: r.image.pack.key.slice(0, 12) } : null,
      engine: engine ? { state: engine.state, ...(engine.detail ? { detail: engine.detail } : {}) } : null,
      qemuPid: r?.qemu.pid ?? null,
      daemonPid: process.pid,
      startedAt: r ? r.startedAt.toISOString() : null,
      uptimeSec: r && this.state === 'running' ? Math.round((Date.now() - r.startedAt.getTime()) / 1000) : null,
      warnings: [...this.warnings],
      failure: this.failure,
      lastStart: this.lastStart,
      guestBoot: r?.session.info?.bootTimes ?? null,
      network: r ? networkStatus(r) : null,
      api: r?.proxy ? { ...r.proxy.health(), streams: { host: r.session.streamCount, guest: await guestStreams(r.session) } } : null,
      home: this.paths.home,
      logs: { daemon: this.paths.daemonLog, vm: this.paths.vmLog, agent: this.paths.agentLog, engine: this.paths.engineLog },
    };
  }

  /**
   * Refuses an engine older than the one that last wrote the data disk (unless the user forced
   * it once), snapshots the disk before an upgrade, and records the engine about to boot. Returns
   * the step's detail.
   */
  private async prepareEngineSwitch(qemuImg: string, stamp: EngineStamp | undefined, pack: ResolvedPack, emit: ProgressListener): Promise<string> {
    const sw = classifySwitch(stamp, pack.id);
    const next: EngineStamp = { pack: pack.id, engineVersion: pack.versions.engineVersion, writtenAt: new Date().toISOString() };
    if (sw.kind === 'downgrade' && !sw.forced) throw downgradeError(sw.from, pack.id);
    if (sw.kind === 'upgrade') {
      const name = `berth-before-${pack.id}-${Date.now()}`;
      emit({ type: 'note', level: 'info', message: `Upgrading the engine from ${sw.from.pack} to ${pack.id}: a snapshot of the data disk is kept for \`berth engine rollback\`.`, at: Date.now() });
      // New snapshot, then the stamp that names it, and only then the old ones go: a failure
      // anywhere leaves a stamp whose snapshot exists.
      await createSnapshot(qemuImg, this.paths.dataDisk, name);
      next.snapshot = { name, pack: sw.from.pack, engineVersion: sw.from.engineVersion, takenAt: new Date().toISOString() };
      await writeStamp(this.paths.engineStamp, next);
      await this.dropEngineSnapshots(qemuImg, name);
      return `upgrade from ${sw.from.pack} (Docker ${sw.from.engineVersion}); snapshot ${name}`;
    }
    if (sw.kind === 'downgrade') {
      // A forced downgrade drops the snapshot: it was taken before the newer engine, and rolling
      // back to it now would lose what both engines wrote since.
      const message = `Engine ${pack.id} starts on data last written by engine ${sw.from.pack}, as forced with \`berth engine use ${pack.id} --force\`.`;
      this.warnings.push(message);
      emit({ type: 'note', level: 'warn', message, at: Date.now() });
      await writeStamp(this.paths.engineStamp, next);
      await this.dropEngineSnapshots(qemuImg, undefined);
      return `older engine ${pack.id} on data of ${sw.from.pack}, forced`;
    }
    if (stamp?.snapshot) next.snapshot = stamp.snapshot;
    await writeStamp(this.paths.engineStamp, next);
    return sw.kind === 'fresh' ? `new data disk, engine ${pack.id}` : `engine ${pack.id}, as last time`;
  }

  /** Deletes berth's engine snapshots of the data disk except `keep` (best effort: a failure is logged). */
  private async dropEngineSnapshots(qemuImg: string, keep: string | undefined): Promise<void> {
    try {
      for (const name of await listSnapshots(qemuImg, this.paths.dataDisk)) {
        if (name.startsWith('berth-before-') && name !== keep) await deleteSnapshot(qemuImg, this.paths.dataDisk, name);
      }
    } catch (err) {
      this.log.warn('could not delete an old engine snapshot of the data disk', { error: String(err) });
    }
  }

  /** The running guest session, or VM_NOT_RUNNING. */
  requireSession(): GuestSession {
    if (this.state !== 'running' || !this.running) {
      throw new BerthError('VM_NOT_RUNNING', `berth is ${this.state}, not running.`, { hint: 'Start it with `berth start`.' });
    }
    return this.running.session;
  }

  private join(op: NonNullable<VmController['op']>, onProgress: ProgressListener): Promise<StatusReport> {
    op.events.on('progress', onProgress);
    return op.promise.finally(() => op.events.off('progress', onProgress));
  }

  private runOp(kind: 'start' | 'stop', onProgress: ProgressListener, body: (emit: ProgressListener) => Promise<StatusReport>): Promise<StatusReport> {
    const events = new EventEmitter();
    events.on('progress', onProgress);
    const emit: ProgressListener = (e: ProgressEvent) => events.emit('progress', e);
    const promise = body(emit).finally(() => {
      events.off('progress', onProgress);
      this.op = undefined;
    });
    this.op = { kind, promise, events };
    return promise;
  }

  private async doStart(emit: ProgressListener, opts: { switchContext?: boolean }): Promise<StatusReport> {
    const t0 = performance.now();
    const phases: PhaseTiming[] = [];
    const record: ProgressListener = (e) => {
      if (e.type === 'step-end') {
        const begin = titles.get(e.id);
        phases.push({ id: e.id, title: begin ?? e.id, ms: e.ms, ...(e.detail ? { detail: e.detail } : {}) });
      }
      if (e.type === 'step-begin') titles.set(e.id, e.title);
      emit(e);
    };
    const titles = new Map<string, string>();
    this.state = 'starting';
    this.failure = null;
    this.warnings = [];
    this.cliPlugins = null;
    let qemu: QemuProcess | undefined;
    let session: GuestSession | undefined;
    let net: NetService | undefined;
    let files: FileService | undefined;
    try {
      const settings = await step(record, 'settings', 'Read settings', async () => readSettings(this.paths.settings));
      this.settings = settings;
      await this.prepareHome();
      const dockerSocket = settings.dockerSocket ?? this.paths.defaultDockerSocket;
      // Fail on a taken Docker socket before booting anything.
      await prepareSocketPath(dockerSocket, 'Docker API socket');

      const install: QemuInstall = await step(record, 'qemu', 'Find QEMU', async (d) => {
        const q = await findQemu();
        d(`QEMU ${q.version}`);
        return q;
      });
      const image = await this.images.ensure(settings['engine.version'], record);
      const probe = await step(record, 'accelerator', 'Probe the accelerator', async (d) => {
        const r = await chooseAccelerator(install.system, settings.accelerator, {
          kernel: { vmlinux: image.vmlinux, initramfs: image.initramfs, cmdline: image.cmdline, imageKey: image.key, cpus: settings.cpus, ...(cpuOverride() ? { cpuModel: cpuOverride()! } : {}) },
          verdicts: this.verdicts,
          qemuVersion: install.version,
        });
        d(`${r.accelerator}${r.attempts.some((a) => a.cached) ? ' (known from an earlier probe)' : ''}`);
        if (r.warning) this.warn(record, r.warning);
        return r;
      });
      // Read before the disk step: a disk that step creates has no engine history.
      const stamp = await readStamp(this.paths.engineStamp, this.paths.dataDisk);
      await step(record, 'disk', 'Prepare the data disk', async (d) => {
        const disk = await ensureDataDisk(install.img, this.paths.dataDisk, settings.diskGiB);
        d(`${disk.created ? 'created, ' : ''}${disk.virtualGiB} GiB virtual, ${formatBytes(disk.allocatedBytes)} used`);
        if (disk.note) {
          this.warnings.push(disk.note);
          record({ type: 'note', level: disk.note.includes('shrink') ? 'warn' : 'info', message: disk.note, at: Date.now() });
        }
      });

      await step(record, 'engine.data', 'Check the engine against the data disk', async (d) => d(await this.prepareEngineSwitch(install.img, stamp, image.pack, record)));

      await this.rotateLogs();
      const plan = planShares(settings.shares);
      for (const w of plan.skipped) this.warn(record, w);
      if (plan.shares.length > 0 && settings['network.backend'] === 'berth') {
        const f = new FileService(this.paths.p9Socket, plan.shares, this.log.child('files'));
        files = f;
        await step(record, 'files', 'Start the file server', async (d) => {
          await f.start();
          // The boot's tickets: spent by the boot's mounts, and revoked once they are over.
          const tickets = f.issueTickets(settings.startTimeoutSec * 1000 + BOOT_TICKET_SLACK_MS);
          await writeFileAtomic(this.paths.sharesConfig, guestShareConfig(plan.shares, tickets));
          d(plan.shares.map((s) => `${s.path}${s.readOnly ? ' (read-only)' : ''}`).join(', '));
        });
      } else if (plan.shares.length > 0) {
        this.warn(record, 'Folders are not shared with network.backend "qemu-user" (the file server is reached through berth\'s translator).');
      }
      const deadline = Date.now() + settings.startTimeoutSec * 1000;
      /**
       * Launches QEMU and waits for the agent and the engine. On failure it leaves `qemu` and
       * `session` set for the cleanup below.
       */
      const network = guestNetwork(settings, this.paths, files !== undefined);
      const boot = async (accelerator: Accelerator): Promise<{ started: QemuProcess; s: GuestSession; info: GuestInfo }> => {
        const cfg: VmConfig = {
          network: network.vm,
          accelerator,
          cpus: settings.cpus,
          memoryMiB: settings.memoryMiB,
          vmlinux: image.vmlinux,
          initramfs: image.initramfs,
          rootfs: image.rootfs,
          pack: image.pack.squashfs,
          dataDisk: this.paths.dataDisk,
          cmdline: `${image.cmdline} ${network.cmdline}`,
          qmpSocket: this.paths.qmpSocket,
          controlSocket: this.paths.controlSocket,
          serialLog: this.paths.vmLog,
          pidFile: this.paths.qemuPidFile,
          instanceTag: this.paths.home,
          ...(files ? { fwCfgFiles: [{ name: 'opt/berth/shares', file: this.paths.sharesConfig }] } : {}),
          ...(cpuOverride() ? { cpuModel: cpuOverride()! } : {}),
        };
        const started = await step(record, 'vm.launch', 'Launch QEMU', async (d) => {
          const q = await QemuProcess.launch(install.system, cfg, this.paths.qemuLog, this.log.child('qemu'));
          d(`pid ${q.pid}`);
          return q;
        });
        qemu = started;
        // The translator connects to QEMU's network socket (it retries until QEMU listens).
        net?.stop().catch(() => {});
        net = network.translator ? new NetService(network.translator, this.log.child('net')) : undefined;
        net?.start();
        const exitedEarly = new Promise<never>((_, reject) => {
          started.once('exit', (e: QemuExit) => reject(this.qemuExitError(e)));
        });
        exitedEarly.catch(() => {});
        // A hardware accelerator that passed the probe can still fail later in the boot.
        const accelFailure = accelerator === 'tcg' ? undefined : watchForAccelFailure(this.paths.qemuLog, accelerator);
        // A kernel that never reaches the initramfs (seen once under TCG): boot once more.
        const silent = watchForSilentBoot(this.paths.vmLog);
        const failures = accelFailure ? [exitedEarly, accelFailure.failed] : [exitedEarly];
        const s = new GuestSession(this.paths, this.log.child('guest'));
        session = s;
        s.connect();
        try {
          const info: GuestInfo = await step(record, 'vm.boot', 'Boot the VM (kernel, init, agent)', async (d) => {
            const i = await Promise.race([s.waitSession(remaining(deadline)), silent.failed, ...failures]);
            const k = i.bootTimes?.initramfs;
            d(k !== undefined ? `kernel reached init at ${k.toFixed(2)} s guest time` : 'agent connected');
            return i;
          });
          await step(record, 'engine', 'Start the Docker engine', async (d) => {
            const e: EngineReport = await Promise.race([s.waitEngineReady(remaining(deadline)), ...failures]);
            d(e.readyAfterMs !== undefined ? `dockerd answered ${(e.readyAfterMs / 1000).toFixed(1)} s after the agent started` : 'ready');
          });
          return { started, s, info };
        } finally {
          accelFailure?.stop();
          silent.stop();
        }
      };
      /** Stops what a failed boot left (the session, QEMU) and keeps its logs as *.prev.log. */
      const discard = async () => {
        session?.close();
        if (qemu && !qemu.hasExited) await qemu.quit(3000);
        await this.rotateLogs();
      };
      let accel = probe.accelerator;
      let booted: Awaited<ReturnType<typeof boot>>;
      try {
        booted = await boot(accel);
      } catch (err) {
        const e = toBerthError(err);
        if (e.code === 'VM_SILENT_BOOT') {
          // Once: a second silent kernel fails the start with the same error.
          this.warn(record, `${e.message} Booting it again (the console log of this boot is kept as vm.prev.log).`);
          await discard();
          booted = await boot(accel);
        } else {
          if (!(e.code === 'ACCEL_FAILED_AT_RUNTIME' && settings.accelerator === 'auto')) throw err;
          // The probe passed but the accelerator failed later: remember that, and boot again on TCG.
          if (probe.verdictKey) await this.verdicts.set(probe.verdictKey, { ok: false, reason: e.message });
          this.warn(record, fallbackWarning([{ accelerator: accel, ok: false, ms: 0, reason: e.message }]));
          await discard();
          accel = 'tcg';
          booted = await boot(accel);
        }
      }
      const { started, s, info } = booted;
      const running: Running = { qemu: started, session: s, net, network, publisher: undefined, files, mounts: undefined, unavailable: [], proxy: undefined, accelerator: accel, image, startedAt: new Date() };
      if (files && files.shares.length > 0) {
        const shares = files.shares;
        const fileService = files;
        running.unavailable = await step(record, 'shares', 'Check the shared folders in the VM', async (d) => {
          const failures = await this.shareFailures(s, shares);
          fileService.revokeTickets();
          d(`${shares.length - failures.length} of ${shares.length} mounted`);
          return failures;
        });
        for (const f of running.unavailable) this.warn(record, shareFailureWarning(f));
      }
      this.startChangeEvents(running);
      await step(record, 'api', 'Serve the Docker API on the host', async (d) => {
        running.proxy = await this.startProxy(s, running.files?.shares ?? [], running.unavailable);
        const ms = await pingDockerThroughProxy(dockerSocket);
        d(`unix://${dockerSocket} (ping ${ms} ms)`);
      });
      running.publisher = this.startPublisher(running);
      this.running = running;
      this.watch(running);
      await this.writeVmFile({ startedAt: running.startedAt.toISOString(), accelerator: accel, image, bootId: info.bootId, network, ...(files ? { files: { shares: files.shares } } : {}) });
      try {
        const ctx = await registerDockerContext(`unix://${dockerSocket}`, { use: opts.switchContext ?? false });
        if (opts.switchContext) record({ type: 'note', level: 'info', message: `docker context "${ctx.name}" is now the current context.`, at: Date.now() });
      } catch (err) {
        this.warnings.push(`Could not register the docker context: ${(err as Error).message}`);
      }
      if (settings['docker.cliPlugins'] && Object.keys(image.pack.cliPlugins).length > 0) {
        await step(record, 'cli-plugins', 'Offer the engine\'s docker CLI plugins', async (d) => {
          try {
            this.cliPlugins = await installCliPlugins(image.pack.cliPlugins, { berthDir: this.paths.cliPluginsDir });
            d(this.cliPlugins.map((p) => `${p.name.replace(/^docker-/, '')}: ${p.state === 'linked' ? 'linked' : `yours kept (${p.path})`}`).join(', '));
          } catch (err) {
            this.warnings.push(`Could not link the docker CLI plugins (docker compose, docker buildx): ${(err as Error).message}`);
            d('failed (see warnings)');
          }
        });
      }
      this.state = 'running';
      this.lastStart = { totalMs: Math.round(performance.now() - t0), phases };
      this.log.info('vm running', { totalMs: this.lastStart.totalMs });
      return this.status();
    } catch (err) {
      const e = toBerthError(err, 'VM_START_FAILED');
      this.log.error('start failed', { code: e.code, err: e.message });
      // Leave nothing half-started behind.
      if (session) session.close();
      await net?.stop();
      await files?.stop();
      if (qemu && !qemu.hasExited) await qemu.quit(3000);
      await this.teardown(false);
      const consoleTail = await currentBootTail(this.paths.vmLog);
      const details = { ...(e.details ?? {}), ...(consoleTail && qemu ? { consoleTail } : {}) };
      const failure = new BerthError(e.code, e.message, {
        hint: e.hint ?? `See the console log (${this.paths.vmLog}) and \`berth logs engine\`.`,
        details,
        cause: e.cause,
      });
      this.failure = failure.toJSON();
      this.state = 'failed';
      throw failure;
    }
  }

  private async doStop(emit: ProgressListener): Promise<StatusReport> {
    const r = this.running;
    const settings = this.settings ?? (await readSettings(this.paths.settings).catch(() => undefined));
    const timeoutMs = (settings?.stopTimeoutSec ?? 30) * 1000;
    if (!r) {
      // failed state: nothing runs (the failure path already cleaned up); reset to stopped.
      this.state = 'stopped';
      this.failure = null;
      return this.status();
    }
    this.state = 'stopping';
    // Warnings of the start (e.g. the TCG fallback) are not news at stop time.
    this.warnings = [];
    let forced: string | undefined;
    await step(emit, 'stop.api', 'Stop serving the Docker API', async () => {
      await r.proxy?.close();
      r.proxy = undefined;
    });
    await step(emit, 'stop.guest', 'Stop the engine and power off the VM', async (d) => {
      try {
        const result = (await r.session.rpc('system.shutdown', { engineTimeoutMs: Math.max(1000, timeoutMs - 5000) }, timeoutMs)) as { engineForced?: boolean };
        if (result?.engineForced) d('the engine had to be killed');
        if (!(await r.qemu.waitExit(10_000))) forced = 'the VM did not power off within 10 s after the engine stopped';
      } catch (err) {
        forced = `the guest did not shut down cleanly within ${timeoutMs / 1000} s (${toBerthError(err).message})`;
      }
    });
    if (forced) {
      const reason = forced;
      emit({ type: 'note', level: 'warn', message: `Forcing the VM off: ${reason}.`, at: Date.now() });
      await step(emit, 'stop.force', 'Force the VM off (QMP quit)', async () => {
        await r.qemu.quit(5000);
      });
      this.warnings = [`Last stop was forced: ${reason}.`];
    }
    await this.teardown(false);
    this.state = 'stopped';
    this.failure = null;
    return this.status();
  }

  /** Reacts to QEMU dying or the guest session breaking while the VM is up. */
  private watch(r: Running): void {
    r.qemu.once('exit', (e: QemuExit) => {
      if (this.running !== r) return;
      if (this.state === 'stopping') return; // expected
      void (async () => {
        const err = this.qemuExitError(e);
        const consoleTail = await currentBootTail(this.paths.vmLog);
        this.failure = new BerthError(err.code, err.message, { hint: 'Run `berth start` to boot it again; your images and volumes are on the data disk.', details: { consoleTail } }).toJSON();
        this.log.error('qemu exited unexpectedly', { code: e.code, signal: e.signal });
        await this.teardown(false);
        this.state = 'failed';
      })();
    });
  }

  /** A warning for the user: shown now (progress) and kept in `status`. */
  private warn(emit: ProgressListener, message: string): void {
    this.warnings.push(message);
    emit({ type: 'note', level: 'warn', message, at: Date.now() });
  }

  private qemuExitError(e: QemuExit): BerthError {
    const how = e.signal ? `was killed by ${e.signal}` : e.code !== null ? `exited with status ${e.code}` : 'exited';
    return new BerthError('QEMU_EXITED', `The VM stopped unexpectedly: QEMU ${how}.`, {
      hint: `See the console log (${this.paths.vmLog}) and QEMU's messages (${this.paths.qemuLog}).`,
    });
  }

  /**
   * After a daemon restart the guest's 9P connections (through the old translator to the old
   * file server) are dead: the agent mounts the shares again. Containers started before keep
   * the dead mounts until they restart (their mounts are copies); said in the log.
   */
  /**
   * Mounts the shares again after a daemon restart; resolves with those that failed. If the agent
   * gives no answer, every share counts as failed: refusing a bind mount that would have worked
   * loses nothing, letting a container write into a VM folder that is not the share does.
   */
  private async remountShares(session: GuestSession, files: FileService): Promise<ShareFailure[]> {
    const shares = files.shares;
    try {
      // mount-shares gives a mount 10 s, and 2 s each to the rest after one timed out (docs/files.md "Transport").
      const tickets = files.issueTickets(REMOUNT_TIMEOUT_MS);
      const failures = parseShareFailures(await session.rpc('fs.remount', { tickets }, REMOUNT_TIMEOUT_MS).finally(() => files.revokeTickets()));
      if (failures.length) this.log.warn('some shared folders could not be mounted again after the file server restarted', { failed: failures.map((f) => f.path).join(', ') });
      else this.log.info('shared folders mounted again after the file server restarted; containers started before keep their old mounts until they restart');
      return failures;
    } catch (err) {
      this.log.warn('could not mount the shared folders again after the file server restarted; restart berth (berth stop && berth start)', { err: (err as Error).message });
      return shares.map((s) => ({ path: s.path, reason: `the VM did not finish mounting it again (${(err as Error).message})` }));
    }
  }

  /** The shares the boot could not mount; the agent answers once the boot's mounts are over. */
  private async shareFailures(session: GuestSession, shares: readonly ShareSpec[]): Promise<ShareFailure[]> {
    try {
      return parseShareFailures(await session.rpc('fs.status', { timeoutMs: 30_000 }, 35_000));
    } catch (err) {
      this.log.warn('could not ask the VM which shared folders are mounted', { err: (err as Error).message });
      // As in remountShares: unknown counts as not mounted.
      return shares.map((s) => ({ path: s.path, reason: `the VM did not say whether it is mounted (${(err as Error).message})` }));
    }
  }

  /**
   * Change events of shared folders: the file server asks the agent to replay host changes, and
   * the mount tracker pins and watches the folders containers mount.
   */
  private startChangeEvents(r: Running): void {
    const files = r.files;
    if (!files) return;
    const session = r.session;
    // A file server that crashed and came back has lost every connection: the guest mounts the
    // shares again, with fresh tickets.
    files.onRestart = () => {
      void this.remountShares(session, files).then((failed) => {
        if (this.running === r) r.unavailable = failed;
      });
    };
    files.actuate = async (req) => {
      await session.rpc('fs.act', req, 15_000);
    };
    r.mounts = new MountTracker(
      {
        shares: () => files.shares.map((s) => s.path),
        inspect: (id) => dockerJson(() => session.openDocker(), 'GET', `/containers/${encodeURIComponent(id)}/json`),
        verify: (paths) => session.rpc('fs.verify', { paths }, 30_000),
        pin: async (paths) => {
          // A cached share: the VM may have cached these folders while nobody watched them.
          const dropCaches = paths.some((p) => files.shares.some((s) => s.cache && isWithin(p, s.path)));
          await session.rpc('fs.pin', { paths, dropCaches }, 60_000);
        },
        unpin: async (paths) => {
          await session.rpc('fs.unpin', { paths }, 15_000);
        },
        watch: (paths) => files.watch(paths),
      },
      this.log.child('mounts'),
    );
  }

  /** Published ports: follows the engine and keeps the translator's host listeners in step. */
  private startPublisher(r: Running): PortPublisher | undefined {
    if (!r.net || !r.network.translator) return undefined;
    const s = this.settings!;
    const opts = { defaultAddress: s['ports.defaultAddress'], ipv6Loopback: hostHasIpv6Loopback() };
    const extra = extraForwards(s['ports.extra'], r.network.guestIp);
    const p = new PortPublisher(() => r.session.openDocker(), r.net, opts, extra, this.log.child('ports'));
    const mounts = r.mounts;
    if (mounts) p.onInspect = (id, inspect) => void mounts.update(id, inspect);
    p.start();
    return p;
  }

  /** `berth network`: the network status and the translator's counters. */
  async network(): Promise<NetworkReport> {
    const r = this.running;
    if (!r) return { network: null, stats: null };
    const stats = (await r.net?.stats()) ?? null;
    return { network: networkStatus(r), stats: stats as Record<string, unknown> | null };
  }

  /** Published ports and their state (`berth ports`). */
  ports(): PortsReport {
    const r = this.running;
    const backend = r?.network.translator ? 'berth' : r ? 'qemu-user' : 'none';
    const forwards = (r?.publisher?.list() ?? []).map((f): PortReport => ({
      proto: f.proto,
      hostIp: f.hostIp,
      hostPort: f.hostPort,
      guestIp: f.guestIp,
      guestPort: f.guestPort,
      containerId: f.containerId,
      containerName: f.containerName,
      state: f.state,
      ...(f.error ? { error: f.error } : {}),
    }));
    return { backend, forwards };
  }

  /**
   * The Docker socket; bind mounts must lie inside `shares`, the folders shared this boot, and
   * not inside one of the `unavailable` ones, which the guest could not mount.
   */
  private async startProxy(session: GuestSession, shares: readonly ShareSpec[], unavailable: readonly ShareFailure[]): Promise<DockerProxy> {
    const settings = this.settings ?? (await readSettings(this.paths.settings));
    const policy: MountPolicy = { shares: shares.map((s) => ({ path: s.path, readOnly: s.readOnly, hostRoot: realShareRoot(s.path) })), vmPaths: settings.vmPaths, unavailable };
    const cached = shares.some((s) => s.cache);
    const proxy = new DockerProxy({
      socketPath: settings.dockerSocket ?? this.paths.defaultDockerSocket,
      open: () => session.openDocker(),
      log: this.log.child('docker-proxy'),
      // The shares the VM could not mount change when the file server restarts and they are mounted again.
      policy: () => ({ ...policy, unavailable: this.running?.unavailable ?? unavailable }),
      beforeRun: async (run) => {
        if (run.kind === 'start') {
          const refusal = await this.running?.mounts?.beforeStart(run.id);
          if (refusal) {
            this.log.warn('container start refused: a bind source changed since the container was created', { id: run.id, why: refusal });
            return { refuse: refusal };
          }
        }
        // A cached share shows a host change only once it is replayed in the guest (docs/files.md
        // "Caching"): what starts now must not read what was there before the change.
        if (cached && this.running?.files && !(await this.running.files.drain(DRAIN_TIMEOUT_MS))) {
          this.log.warn('host changes were not all replayed in the VM before a container or exec started', { run: run.kind, id: run.id, waitedMs: DRAIN_TIMEOUT_MS });
        }
      },
    });
    await proxy.listen();
    return proxy;
  }

  /** Releases everything tied to the current VM. `killQemu` forces QEMU off if still alive. */
  private async teardown(killQemu: boolean): Promise<void> {
    const r = this.running;
    this.running = undefined;
    if (r) {
      r.publisher?.stop();
      r.mounts?.close();
      await r.proxy?.close().catch(() => {});
      r.session.close();
      await r.net?.stop();
      await r.files?.stop();
      if (killQemu && !r.qemu.hasExited) await r.qemu.quit(3000);
    }
    const dockerSocket = this.settings?.dockerSocket ?? this.paths.defaultDockerSocket;
    // Only our own leftovers: prepareSocketPath refuses non-sockets and live sockets.
    for (const p of [this.paths.qmpSocket, this.paths.controlSocket, this.paths.netSocket, this.paths.p9Socket, this.paths.sharesConfig, this.paths.qemuPidFile, this.paths.vmStateFile]) {
      await fs.rm(p, { force: true }).catch(() => {});
    }
    await prepareSocketPath(dockerSocket, 'Docker API socket').catch(() => {});
  }

  private async prepareHome(): Promise<void> {
    for (const d of [this.paths.home, this.paths.runDir, this.paths.logsDir, this.paths.disksDir]) {
      await fs.mkdir(d, { recursive: true, mode: 0o700 });
    }
  }

  /** Keeps the previous boot's logs as *.prev.log so a crash can be investigated after restart. */
  private async rotateLogs(): Promise<void> {
    for (const f of [this.paths.vmLog, this.paths.agentLog, this.paths.engineLog, this.paths.qemuLog]) {
      await fs.rename(f, f.replace(/\.log$/, '.prev.log')).catch(() => {});
    }
  }

  private async writeVmFile(v: VmFile): Promise<void> {
    await writeFileAtomic(this.paths.vmStateFile, JSON.stringify(v, null, 2));
  }

  private async readVmFile(): Promise<VmFile | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.paths.vmStateFile, 'utf8')) as VmFile;
    } catch {
      return undefined;
    }
  }
}

/** What a restarted daemon needs to know about the VM it adopts. */
interface VmFile {
  startedAt: string;
  accelerator: Accelerator;
  image: ResolvedImage;
  bootId: string;
  network: GuestNetwork;
  /** The shares of this boot (the guest mounted them). */
  files?: { shares: ShareSpec[] };
}

function networkStatus(r: Running): NetworkStatus {
  const t = r.network.translator;
  return {
    backend: t ? 'berth' : 'qemu-user',
    subnet: t?.subnet ?? null,
    vmAddress: r.network.guestIp,
    hostAlias: r.network.hostAlias,
    mtu: t?.mtu ?? null,
    linkUp: r.net ? r.net.isLinkUp : null,
    translatorRestarts: r.net?.restarts ?? 0,
    lastFailure: r.net?.lastFailure ?? null,
  };
}

/** True when the host has an IPv6 loopback address (published ports then also listen on ::1). */
function hostHasIpv6Loopback(): boolean {
  return Object.values(os.networkInterfaces()).some((list) => list?.some((a) => a.family === 'IPv6' && a.address === '::1'));
}

/** BERTH_QEMU_CPU: a CPU model override for experiments and benchmarks. */
function cpuOverride(): string | undefined {
  return process.env.BERTH_QEMU_CPU || undefined;
}

function remaining(deadline: number): number {
  return Math.max(1, deadline - Date.now());
}

function formatBytes(n: number): string {
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** GET /_ping through the host socket: proves the whole path (proxy, mux, agent, dockerd). */
async function pingDockerThroughProxy(socketPath: string): Promise<number> {
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const req = http.get({ socketPath, path: '/_ping', timeout: 30_000 }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new BerthError('ENGINE_FAILED', `The Docker engine answered /_ping with HTTP ${res.statusCode}.`));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => reject(new BerthError('ENGINE_FAILED', `The Docker API does not answer through ${socketPath}.`, { cause: err })));
  });
  return Math.round(performance.now() - t0);
}

/** The warning `berth start` and `berth status` show for a share the guest could not mount. */
export function shareFailureWarning(f: ShareFailure): string {
  return `The shared folder ${f.path} is not mounted in the VM: ${f.reason}. Containers cannot bind-mount it (berth refuses them) until it is. Run \`berth restart\`; if it fails again, \`berth logs vm\` shows the boot's mount errors and \`berth logs daemon\` the file server's.`;
}

/** The host folder a share's path names (the share may be given through a symlink). */
function realShareRoot(p: string): string {
  try {
    return realpathSync.native(p);
  } catch {
    return p;
  }
}

/** The guest side's open streams, if the agent answers at once. */
async function guestStreams(session: GuestSession): Promise<number | null> {
  try {
    const info = (await session.rpc('system.info', {}, 1000)) as { streams?: unknown };
    return typeof info.streams === 'number' ? info.streams : null;
  } catch {
    return null;
  }
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
