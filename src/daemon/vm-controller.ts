import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import { BerthError, toBerthError, type SerializedError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { step, type ProgressEvent, type ProgressListener } from '../util/progress.js';
import { writeFileAtomic } from '../util/files.js';
import type { BerthPaths } from '../settings/paths.js';
import { readSettings, type Settings } from '../settings/settings.js';
import type { LaunchedGuest, VmDriver } from '../vm/driver.js';
import { registerDockerContext } from './docker-context.js';
import { installCliPlugins, type PluginOutcome } from './cli-plugins.js';
import { prepareSocketPath } from '../util/unix-socket.js';
import type { GuestSession } from './guest-session.js';
import { guestNetwork, type GuestNetwork } from './guest-network.js';
import { FileService, guestShareConfig, planShares } from '../fs/file-service.js';
import type { ShareSpec } from '../fs/share.js';
import type { ImageSource, ResolvedImage, ResolvedPack } from './image-source.js';
import { classifySwitch, downgradeError, readStamp, writeStamp, type EngineStamp } from '../engine/stamp.js';
import type { NetworkReport, PhaseTiming, PortsReport, StatusReport, VmState } from './api-types.js';
import { RunningGuest, shareFailureWarning, type RunningGuestDeps } from './running-guest.js';

export { shareFailureWarning };

/**
 * The lifecycle state machine of one berth home's guest (docs/backends.md):
 *
 *   stopped ──start──▶ starting ──engine answers──▶ running ──stop──▶ stopping ──▶ stopped
 *      ▲                  │ error/timeout               │ the guest died
 *      └──────start─── failed ◀────────────────────────┘
 *
 * Only one lifecycle operation runs at a time; a `start` issued while a start is under way joins
 * it, and a `stop` joins a stop. What the guest runs in is the driver's business; what lives while
 * it runs is RunningGuest's.
 *
 * Invariant: a start that fails leaves no guest process behind (the driver's contract, and a
 * forced stop of a guest that booted but failed later), and never touches the data store beyond
 * what the guest itself does.
 */

/** A boot ticket outlives the start timeout by this much (the boot's mounts spend them first). */
const BOOT_TICKET_SLACK_MS = 60_000;

type Backend = Settings['backend'];

export interface StartOptions {
  /** Make the `berth` docker context the current one. */
  switchContext?: boolean;
  /** This start's backend, instead of the `backend` setting. */
  backend?: Backend;
}
/** Powering off after the engine stopped takes well under a second, also on TCG. */
const POWER_OFF_MS = 10_000;

export class VmController extends EventEmitter {
  private state: VmState = 'stopped';
  private running: RunningGuest | undefined;
  private failure: SerializedError | null = null;
  private warnings: string[] = [];
  private cliPlugins: PluginOutcome[] | null = null;
  private lastStart: { totalMs: number; phases: PhaseTiming[] } | null = null;
  private settings: Settings | undefined;
  private op: { kind: 'start' | 'stop'; promise: Promise<StatusReport>; events: EventEmitter } | undefined;
  /** The driver of the running guest, or of the last start. */
  private driver: VmDriver;
  private backend: Backend = 'vm';

  constructor(
    private readonly paths: BerthPaths,
    private readonly images: ImageSource,
    /** A driver per backend (docs/backends.md); `vm` at least. */
    private readonly drivers: { vm: VmDriver } & Partial<Record<Backend, VmDriver>>,
    private readonly log: Logger,
    /** How long a guest gets to power off after the agent answered the shutdown request. */
    private readonly powerOffMs = POWER_OFF_MS,
  ) {
    super();
    this.driver = drivers.vm;
  }

  get vmState(): VmState {
    return this.state;
  }

  /** The backend of the running guest, if one runs. */
  get runningBackend(): Backend | undefined {
    return this.running ? this.backend : undefined;
  }

  /** Stopped with no operation under way: nothing for the daemon to own. */
  get idle(): boolean {
    return this.state === 'stopped' && this.op === undefined;
  }

  /** Re-attaches to a guest an earlier daemon left running. Called once at daemon start. */
  async adoptExisting(): Promise<void> {
    let guest: LaunchedGuest | undefined;
    for (const [backend, driver] of Object.entries(this.drivers) as Array<[Backend, VmDriver]>) {
      guest = await driver.adopt();
      if (guest) {
        this.driver = driver;
        this.backend = backend;
        break;
      }
    }
    if (!guest) return;
    this.log.info('found a running VM left by an earlier daemon; re-attaching', { pid: guest.pid });
    this.state = 'starting';
    let files: FileService | undefined;
    let running: RunningGuest | undefined;
    try {
      const saved = await this.readVmFile();
      const settings = await readSettings(this.paths.settings);
      this.settings = settings;
      const image = saved?.image ?? (await this.images.current(settings['engine.version']));
      if (!image) throw new BerthError('IMAGE_MISSING', 'The running VM\'s image is not in the cache and the daemon did not record it.');
      // The guest was configured for the network of its start, whatever the settings say now.
      const network = saved?.network ?? guestNetwork(settings, this.paths);
      // The shares of the boot the guest mounted; it mounts them again with fresh tickets.
      files = saved?.files && this.driver.sharesBy === '9p' ? new FileService(this.paths.p9Socket, saved.files.shares, this.log.child('files')) : undefined;
      await files?.start();
      const deps = this.runningDeps(settings);
      // The agent answers at once if it is alive; the engine may still be restarting.
      const attachment = RunningGuest.connect(deps, guest, network, Date.now() + 60_000, () => {});
      const exited = new Promise<never>((_, reject) => guest.once('exit', reject));
      exited.catch(() => {});
      const connection = await Promise.race([attachment.ready, exited]).catch(async (err: unknown) => {
        await attachment.close();
        throw err;
      });
      running = new RunningGuest(deps, guest, connection, network, saved?.files?.shares ?? [], files, saved?.accelerator ?? 'tcg', image, saved ? new Date(saved.startedAt) : new Date());
      this.running = running;
      this.watch(running);
      await running.remountAfterAdopt();
      for (const f of running.unavailable) this.warnings.push(shareFailureWarning(f));
      await running.serve(() => {});
      this.state = 'running';
      this.failure = null;
      this.log.info('re-attached to the running VM');
    } catch (err) {
      const e = toBerthError(err);
      this.log.error('could not re-attach to the running VM; stopping it', { err: e.message });
      this.running = undefined;
      await running?.close();
      await files?.stop();
      if (!guest.hasExited) await guest.forceOff(3000);
      await this.cleanupHost();
      this.state = 'stopped';
      this.warnings.push(`An earlier VM was found but did not answer (${e.message}); it was stopped. Run \`berth start\`.`);
    }
  }

  /** Starts the guest (or joins a start in progress). Progress goes to `onProgress`. */
  start(onProgress: ProgressListener, opts: StartOptions = {}): Promise<StatusReport> {
    if (this.op?.kind === 'start') return this.join(this.op, onProgress);
    if (this.op) return Promise.reject(new BerthError('VM_BUSY', 'The VM is stopping; wait for that to finish, then start it again.'));
    if (this.state === 'running') return this.alreadyRunning(onProgress, opts);
    return this.runOp('start', onProgress, (emit) => this.doStart(emit, opts));
  }

  /** A start while running: nothing to do, but a different backend asked for is said to wait for a restart. */
  private async alreadyRunning(onProgress: ProgressListener, opts: StartOptions): Promise<StatusReport> {
    const wanted = opts.backend ?? (await readSettings(this.paths.settings).catch(() => undefined))?.backend;
    const message =
      wanted && wanted !== this.backend
        ? `berth is already running on the ${this.backend} backend; the ${wanted} backend takes effect at the next start (\`berth restart\`).`
        : 'berth is already running; nothing to do.';
    onProgress({ type: 'note', level: 'info', message, at: Date.now() });
    return this.status();
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
    const health = r?.apiHealth();
    return {
      state: this.state,
      dockerHost: `unix://${dockerSocket}`,
      backend: r ? this.backend : null,
      accelerator: r?.accelerator ?? null,
      cpus: s?.cpus ?? 0,
      memoryMiB: s?.memoryMiB ?? 0,
      diskGiB: s?.diskGiB ?? 0,
      imageVersion: r ? r.image.key.slice(0, 12) : null,
      image: r ? { ...r.image.versions } : null,
      cliPlugins: this.cliPlugins,
      enginePack: r?.image.pack ? { id: r.image.pack.id, title: r.image.pack.versions.title, dockerVersion: r.image.pack.versions.engineVersion, key: r.image.pack.key.slice(0, 12) } : null,
      engine: engine ? { state: engine.state, ...(engine.detail ? { detail: engine.detail } : {}) } : null,
      qemuPid: r?.guest.pid ?? null,
      daemonPid: process.pid,
      startedAt: r ? r.startedAt.toISOString() : null,
      uptimeSec: r && this.state === 'running' ? Math.round((Date.now() - r.startedAt.getTime()) / 1000) : null,
      warnings: [...this.warnings],
      failure: this.failure,
      lastStart: this.lastStart,
      guestBoot: r?.session.info?.bootTimes ?? null,
      network: r ? r.networkStatus() : null,
      api: r && health ? { ...health, streams: { host: r.session.streamCount, guest: await guestStreams(r.session) } } : null,
      home: this.paths.home,
      logs: { daemon: this.paths.daemonLog, vm: this.paths.vmLog, agent: this.paths.agentLog, engine: this.paths.engineLog },
    };
  }

  /** The running guest session, or VM_NOT_RUNNING. */
  requireSession(): GuestSession {
    if (this.state !== 'running' || !this.running) {
      throw new BerthError('VM_NOT_RUNNING', `berth is ${this.state}, not running.`, { hint: 'Start it with `berth start`.' });
    }
    return this.running.session;
  }

  /** `berth network`: the network status and the translator's counters. */
  async network(): Promise<NetworkReport> {
    const r = this.running;
    if (!r) return { network: null, stats: null };
    const stats = (await r.net?.stats()) ?? null;
    return { network: r.networkStatus(), stats: stats as Record<string, unknown> | null };
  }

  /** Published ports and their state (`berth ports`). */
  ports(): PortsReport {
    const r = this.running;
    const backend = r?.network.translator ? 'berth' : r ? 'qemu-user' : 'none';
    return { backend, forwards: r?.ports() ?? [] };
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

  private async doStart(emit: ProgressListener, opts: StartOptions): Promise<StatusReport> {
    const t0 = performance.now();
    const phases: PhaseTiming[] = [];
    const titles = new Map<string, string>();
    // Every step is timed for `status`; every warning said during the start is kept for `status`.
    const record: ProgressListener = (e) => {
      if (e.type === 'step-begin') titles.set(e.id, e.title);
      if (e.type === 'step-end') phases.push({ id: e.id, title: titles.get(e.id) ?? e.id, ms: e.ms, ...(e.detail ? { detail: e.detail } : {}) });
      if (e.type === 'note' && e.level === 'warn') this.warnings.push(e.message);
      emit(e);
    };
    const warn = (message: string) => record({ type: 'note', level: 'warn', message, at: Date.now() });
    this.state = 'starting';
    this.failure = null;
    this.warnings = [];
    this.cliPlugins = null;
    let files: FileService | undefined;
    let guest: LaunchedGuest | undefined;
    let running: RunningGuest | undefined;
    try {
      const settings = await step(record, 'settings', 'Read settings', async () => readSettings(this.paths.settings));
      this.settings = settings;
      this.backend = opts.backend ?? settings.backend;
      const driver = this.drivers[this.backend];
      if (!driver) throw new BerthError('NAMESPACE_UNAVAILABLE', `The ${this.backend} backend is not available in this build of berth.`, { hint: 'Use `berth start --backend vm`.' });
      this.driver = driver;
      await this.prepareHome();
      const dockerSocket = settings.dockerSocket ?? this.paths.defaultDockerSocket;
      // Fail on a taken Docker socket before booting anything.
      await prepareSocketPath(dockerSocket, 'Docker API socket');

      let image: ResolvedImage | undefined;
      const host = await this.driver.prepare(settings, async () => (image = await this.images.ensure(settings['engine.version'], record)), record);
      image ??= await this.images.ensure(settings['engine.version'], record);
      if (host.warning) warn(host.warning);
      // Read before the disk step: a store that step creates has no engine history.
      const stamp = await readStamp(this.driver.dataStore.engineStamp, this.driver.dataStore.path);
      await step(record, 'disk', 'Prepare the data disk', async (d) => {
        const disk = await this.driver.dataStore.ensure(settings.diskGiB);
        d(`${disk.created ? 'created, ' : ''}${disk.virtualGiB} GiB virtual, ${formatBytes(disk.allocatedBytes)} used`);
        if (disk.note) {
          if (disk.note.includes('shrink')) warn(disk.note);
          else {
            this.warnings.push(disk.note);
            record({ type: 'note', level: 'info', message: disk.note, at: Date.now() });
          }
        }
      });
      const pack = image.pack;
      await step(record, 'engine.data', 'Check the engine against the data disk', async (d) => d(await this.prepareEngineSwitch(stamp, pack, record)));

      await this.rotateLogs();
      const plan = planShares(settings.shares);
      for (const w of plan.skipped) warn(w);
      const bindShares = driver.sharesBy === 'bind';
      if (plan.shares.length > 0 && settings['network.backend'] === 'berth' && !bindShares) {
        const f = new FileService(this.paths.p9Socket, plan.shares, this.log.child('files'));
        files = f;
        await step(record, 'files', 'Start the file server', async (d) => {
          await f.start();
          // The boot's tickets: spent by the boot's mounts, and revoked once they are over.
          const tickets = f.issueTickets(settings.startTimeoutSec * 1000 + BOOT_TICKET_SLACK_MS);
          await writeFileAtomic(this.paths.sharesConfig, guestShareConfig(plan.shares, tickets));
          d(plan.shares.map((s) => `${s.path}${s.readOnly ? ' (read-only)' : ''}`).join(', '));
        });
      } else if (plan.shares.length > 0 && !bindShares) {
        warn('Folders are not shared with network.backend "qemu-user" (the file server is reached through berth\'s translator).');
      }
      const deadline = Date.now() + settings.startTimeoutSec * 1000;
      const network = guestNetwork(settings, this.paths, files !== undefined);
      const deps = this.runningDeps(settings);
      const booted = await this.driver.boot(
        { host, image, cpus: settings.cpus, memoryMiB: settings.memoryMiB, network, deadline, ...(files ? { sharesConfig: this.paths.sharesConfig } : {}), ...(bindShares ? { shares: plan.shares } : {}) },
        (g) => {
          guest = g;
          return RunningGuest.connect(deps, g, network, deadline, record);
        },
        record,
      );
      guest = booted.guest;
      const shares = bindShares ? plan.shares : (files?.shares ?? []);
      running = new RunningGuest(deps, booted.guest, booted.attached, network, shares, files, booted.accelerator, image, new Date());
      await running.checkBootShares(record);
      for (const f of running.unavailable) warn(shareFailureWarning(f));
      await running.serve(record);
      this.running = running;
      this.watch(running);
      await this.writeVmFile({ startedAt: running.startedAt.toISOString(), backend: this.backend, accelerator: booted.accelerator, image, bootId: running.info.bootId, network, ...(shares.length > 0 ? { files: { shares: [...shares] } } : {}) });
      try {
        const ctx = await registerDockerContext(`unix://${dockerSocket}`, { use: opts.switchContext ?? false });
        if (opts.switchContext) record({ type: 'note', level: 'info', message: `docker context "${ctx.name}" is now the current context.`, at: Date.now() });
      } catch (err) {
        this.warnings.push(`Could not register the docker context: ${(err as Error).message}`);
      }
      if (settings['docker.cliPlugins'] && Object.keys(pack.cliPlugins).length > 0) {
        await step(record, 'cli-plugins', 'Offer the engine\'s docker CLI plugins', async (d) => {
          try {
            this.cliPlugins = await installCliPlugins(pack.cliPlugins, { berthDir: this.paths.cliPluginsDir });
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
      this.running = undefined;
      await running?.close();
      await files?.stop();
      const launched: LaunchedGuest | undefined = guest;
      if (launched && !launched.hasExited) await launched.forceOff(3000);
      await this.cleanupHost();
      const consoleTail = launched ? await this.driver.consoleTail() : '';
      const details = { ...(e.details ?? {}), ...(consoleTail ? { consoleTail } : {}) };
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
      await r.stopServing();
    });
    await step(emit, 'stop.guest', 'Stop the engine and power off the VM', async (d) => {
      try {
        const result = await r.session.rpc('system.shutdown', { engineTimeoutMs: Math.max(1000, timeoutMs - 5000) }, timeoutMs);
        if (result.engineForced) d('the engine had to be killed');
        if (!(await r.guest.waitExit(this.powerOffMs))) forced = `the VM did not power off within ${this.powerOffMs / 1000} s after the engine stopped`;
      } catch (err) {
        forced = `the guest did not shut down cleanly within ${timeoutMs / 1000} s (${toBerthError(err).message})`;
      }
    });
    if (forced) {
      const reason = forced;
      emit({ type: 'note', level: 'warn', message: `Forcing the VM off: ${reason}.`, at: Date.now() });
      await step(emit, 'stop.force', 'Force the VM off', async () => {
        await r.guest.forceOff(5000);
      });
      this.warnings = [`Last stop was forced: ${reason}.`];
    }
    this.running = undefined;
    await r.close();
    await this.cleanupHost();
    this.state = 'stopped';
    this.failure = null;
    return this.status();
  }

  /** Reacts to the guest dying while it is up. */
  private watch(r: RunningGuest): void {
    r.guest.once('exit', (err: BerthError) => {
      if (this.running !== r) return;
      if (this.state === 'stopping') return; // expected
      this.running = undefined;
      void (async () => {
        const consoleTail = await this.driver.consoleTail();
        this.failure = new BerthError(err.code, err.message, { hint: 'Run `berth start` to boot it again; your images and volumes are on the data disk.', details: { consoleTail } }).toJSON();
        this.log.error('the guest exited unexpectedly', { err: err.message });
        await r.close();
        await this.cleanupHost();
        this.state = 'failed';
      })();
    });
  }

  /**
   * Refuses an engine older than the one that last wrote the data store (unless the user forced
   * it once), snapshots the store before an upgrade, and records the engine about to boot. Returns
   * the step's detail.
   */
  private async prepareEngineSwitch(stamp: EngineStamp | undefined, pack: ResolvedPack, emit: ProgressListener): Promise<string> {
    const store = this.driver.dataStore;
    const sw = classifySwitch(stamp, pack.id);
    const next: EngineStamp = { pack: pack.id, engineVersion: pack.versions.engineVersion, writtenAt: new Date().toISOString() };
    if (sw.kind === 'downgrade' && !sw.forced) throw downgradeError(sw.from, pack.id);
    if (sw.kind === 'upgrade') {
      const name = `berth-before-${pack.id}-${Date.now()}`;
      emit({ type: 'note', level: 'info', message: `Upgrading the engine from ${sw.from.pack} to ${pack.id}: a snapshot of the data disk is kept for \`berth engine rollback\`.`, at: Date.now() });
      // New snapshot, then the stamp that names it, and only then the old ones go: a failure
      // anywhere leaves a stamp whose snapshot exists.
      await store.createSnapshot(name);
      next.snapshot = { name, pack: sw.from.pack, engineVersion: sw.from.engineVersion, takenAt: new Date().toISOString() };
      await writeStamp(this.driver.dataStore.engineStamp, next);
      await this.dropEngineSnapshots(name);
      return `upgrade from ${sw.from.pack} (Docker ${sw.from.engineVersion}); snapshot ${name}`;
    }
    if (sw.kind === 'downgrade') {
      // A forced downgrade drops the snapshot: it was taken before the newer engine, and rolling
      // back to it now would lose what both engines wrote since.
      emit({ type: 'note', level: 'warn', message: `Engine ${pack.id} starts on data last written by engine ${sw.from.pack}, as forced with \`berth engine use ${pack.id} --force\`.`, at: Date.now() });
      await writeStamp(this.driver.dataStore.engineStamp, next);
      await this.dropEngineSnapshots(undefined);
      return `older engine ${pack.id} on data of ${sw.from.pack}, forced`;
    }
    if (stamp?.snapshot) next.snapshot = stamp.snapshot;
    await writeStamp(this.driver.dataStore.engineStamp, next);
    return sw.kind === 'fresh' ? `new data disk, engine ${pack.id}` : `engine ${pack.id}, as last time`;
  }

  /** Deletes berth's engine snapshots of the data store except `keep` (best effort: a failure is logged). */
  private async dropEngineSnapshots(keep: string | undefined): Promise<void> {
    const store = this.driver.dataStore;
    try {
      for (const name of await store.listSnapshots()) {
        if (name.startsWith('berth-before-') && name !== keep) await store.deleteSnapshot(name);
      }
    } catch (err) {
      this.log.warn('could not delete an old engine snapshot of the data disk', { error: String(err) });
    }
  }

  private runningDeps(settings: Settings): RunningGuestDeps {
    return { paths: this.paths, settings, log: this.log, hostKernel: this.driver.hostKernel };
  }

  /** Removes what a guest left on the host: the driver's files, the file server's, the Docker socket. */
  private async cleanupHost(): Promise<void> {
    await this.driver.cleanup();
    for (const p of [this.paths.p9Socket, this.paths.sharesConfig, this.paths.vmStateFile]) {
      await fs.rm(p, { force: true }).catch(() => {});
    }
    const dockerSocket = this.settings?.dockerSocket ?? this.paths.defaultDockerSocket;
    // Only our own leftovers: prepareSocketPath refuses non-sockets and live sockets.
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

/** What a restarted daemon needs to know about the guest it adopts. */
interface VmFile {
  startedAt: string;
  backend?: Backend;
  accelerator: string;
  image: ResolvedImage;
  bootId: string;
  network: GuestNetwork;
  /** The shares of this boot (the guest mounted them). */
  files?: { shares: ShareSpec[] };
}

function formatBytes(n: number): string {
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** The guest side's open streams, if the agent answers at once. */
async function guestStreams(session: GuestSession): Promise<number | null> {
  try {
    return (await session.rpc('system.info', {}, 1000)).streams;
  } catch {
    return null;
  }
}
