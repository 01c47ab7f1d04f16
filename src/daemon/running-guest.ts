import os from 'node:os';
import { realpathSync } from 'node:fs';
import http from 'node:http';
import { BerthError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { step, type ProgressListener } from '../util/progress.js';
import type { BerthPaths } from '../settings/paths.js';
import type { Settings } from '../settings/settings.js';
import { DockerProxy, dockerJson, type MountPolicy } from '../docker/index.js';
import { GuestSession, type EngineReport, type GuestInfo } from './guest-session.js';
import type { GuestNetwork } from './guest-network.js';
import type { ResolvedImage } from './image-source.js';
import { PortPublisher } from '../ports/publisher.js';
import { extraForwards } from '../ports/forwards.js';
import { NetService } from '../net/net-service.js';
import type { FileService } from '../fs/file-service.js';
import type { ShareSpec } from '../fs/share.js';
import { MountTracker } from '../fs/mount-tracker.js';
import { isWithin } from '../util/paths.js';
import type { ShareFailure } from '../control/share-mounts.js';
import type { Attachment, LaunchedGuest } from '../vm/driver.js';
import type { NetworkStatus, PortReport } from './api-types.js';

/** How long a container or exec start waits for pending host changes in cached shares. */
const DRAIN_TIMEOUT_MS = 5000;
/** How long the agent gets to mount every share again (and a remount's tickets live). */
const REMOUNT_TIMEOUT_MS = 40_000;

/** What reaches a launched guest: the control session and the network translator. */
export interface Connection {
  session: GuestSession;
  net: NetService | undefined;
  info: GuestInfo;
}

export interface RunningGuestDeps {
  paths: BerthPaths;
  settings: Settings;
  log: Logger;
  /** The guest runs on the host's own kernel (VmDriver.hostKernel). */
  hostKernel: boolean;
}

/**
 * Everything that lives while a guest runs, built the same way for a start and for an adopt
 * (docs/backends.md): the session and translator (`connect`), then the shared folders' state and
 * change events, the Docker API proxy and the port publisher (`serve`). `close` tears them down in
 * the reverse order; it does not stop the guest itself (the driver's LaunchedGuest does that).
 */
export class RunningGuest {
  /** Shares the guest could not mount (bind mounts into them are refused). */
  unavailable: ShareFailure[] = [];
  private mounts: MountTracker | undefined;
  private proxy: DockerProxy | undefined;
  private publisher: PortPublisher | undefined;
  private closed = false;

  constructor(
    private readonly deps: RunningGuestDeps,
    readonly guest: LaunchedGuest,
    private readonly connection: Connection,
    readonly network: GuestNetwork,
    /** The folders shared this boot: bind mounts must lie inside one (the proxy's mount policy). */
    readonly shares: readonly ShareSpec[],
    /** The 9P file server (absent when no folder is shared, or the driver binds them itself). */
    readonly files: FileService | undefined,
    readonly accelerator: string,
    readonly image: ResolvedImage,
    readonly startedAt: Date,
  ) {}

  /**
   * Reaches a launched guest: starts the translator (it connects to the guest's network socket,
   * retrying until it exists) and the control session, and waits for the agent and then the
   * engine, as progress steps (an adopt passes a listener that drops them).
   */
  static connect(deps: RunningGuestDeps, guest: LaunchedGuest, network: GuestNetwork, deadline: number, steps: ProgressListener): Attachment<Connection> {
    const net = network.translator ? new NetService(network.translator, deps.log.child('net')) : undefined;
    net?.start();
    const session = new GuestSession(() => guest.openControl(), deps.paths, deps.log.child('guest'));
    session.connect();
    const ready = (async (): Promise<Connection> => {
      const waitSession = () => session.waitSession(remaining(deadline));
      const waitEngine = () => session.waitEngineReady(remaining(deadline));
      const info = await step(steps, 'vm.boot', 'Boot the VM (kernel, init, agent)', async (d) => {
        const i = await waitSession();
        const k = i.bootTimes?.initramfs;
        d(k !== undefined ? `kernel reached init at ${k.toFixed(2)} s guest time` : 'agent connected');
        return i;
      });
      await step(steps, 'engine', 'Start the Docker engine', async (d) => {
        const e: EngineReport = await waitEngine();
        d(e.readyAfterMs !== undefined ? `dockerd answered ${(e.readyAfterMs / 1000).toFixed(1)} s after the agent started` : 'ready');
      });
      return { session, net, info };
    })();
    ready.catch(() => {});
    return {
      ready,
      close: async () => {
        session.close();
        await net?.stop();
      },
    };
  }

  get session(): GuestSession {
    return this.connection.session;
  }

  get net(): NetService | undefined {
    return this.connection.net;
  }

  get info(): GuestInfo {
    return this.connection.info;
  }

  /** After a boot: the shares the guest could not mount; the boot's tickets are revoked. */
  async checkBootShares(emit: ProgressListener): Promise<void> {
    const files = this.files;
    if (!files || files.shares.length === 0) return;
    const shares = files.shares;
    this.unavailable = await step(emit, 'shares', 'Check the shared folders in the VM', async (d) => {
      const failures = await this.shareFailures(shares);
      files.revokeTickets();
      d(`${shares.length - failures.length} of ${shares.length} mounted`);
      return failures;
    });
  }

  /**
   * After a daemon restart the guest's 9P connections (through the old translator to the old file
   * server) are dead: the agent mounts the shares again. Containers started before keep the dead
   * mounts until they restart (their mounts are copies); said in the log.
   */
  async remountAfterAdopt(): Promise<void> {
    if (this.files) this.unavailable = await this.remountShares(this.files);
  }

  /** Change events, the Docker API on the host socket (proven by a ping through it), published ports. */
  async serve(emit: ProgressListener): Promise<void> {
    this.startChangeEvents();
    const socketPath = this.deps.settings.dockerSocket ?? this.deps.paths.defaultDockerSocket;
    await step(emit, 'api', 'Serve the Docker API on the host', async (d) => {
      this.proxy = await this.startProxy(socketPath);
      const ms = await pingDockerThroughProxy(socketPath);
      d(`unix://${socketPath} (ping ${ms} ms)`);
    });
    this.publisher = this.startPublisher();
  }

  /**
   * The first step of a stop: no new request reaches a stopping engine, and nothing of ours keeps
   * a connection to it open (the publisher's event stream would make dockerd wait 5 s for its
   * HTTP server at shutdown).
   */
  async stopServing(): Promise<void> {
    this.publisher?.stop();
    this.publisher = undefined;
    this.mounts?.close();
    this.mounts = undefined;
    const p = this.proxy;
    this.proxy = undefined;
    await p?.close().catch(() => {});
  }

  /** Tears down what this object built, in reverse order. Idempotent; leaves the guest alone. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stopServing();
    this.session.close();
    await this.net?.stop();
    await this.files?.stop();
  }

  /** The proxy's counters, for `status`. */
  apiHealth(): ReturnType<DockerProxy['health']> | undefined {
    return this.proxy?.health();
  }

  networkStatus(): NetworkStatus {
    const t = this.network.translator;
    return {
      backend: t ? 'berth' : 'qemu-user',
      subnet: t?.subnet ?? null,
      vmAddress: this.network.guestIp,
      hostAlias: this.network.hostAlias,
      mtu: t?.mtu ?? null,
      linkUp: this.net ? this.net.isLinkUp : null,
      translatorRestarts: this.net?.restarts ?? 0,
      lastFailure: this.net?.lastFailure ?? null,
    };
  }

  ports(): PortReport[] {
    return (this.publisher?.list() ?? []).map((f): PortReport => ({
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
  }

  /**
   * Mounts the shares again after a restart of the file server or the daemon; resolves with those
   * that failed. If the agent gives no answer, every share counts as failed: refusing a bind mount
   * that would have worked loses nothing, letting a container write into a VM folder that is not
   * the share does.
   */
  private async remountShares(files: FileService): Promise<ShareFailure[]> {
    const log = this.deps.log;
    try {
      // mount-shares gives a mount 10 s, and 2 s each to the rest after one timed out (docs/files.md "Transport").
      const tickets = files.issueTickets(REMOUNT_TIMEOUT_MS);
      const { failures } = await this.session.rpc('fs.remount', { tickets }, REMOUNT_TIMEOUT_MS).finally(() => files.revokeTickets());
      if (failures.length) log.warn('some shared folders could not be mounted again after the file server restarted', { failed: failures.map((f) => f.path).join(', ') });
      else log.info('shared folders mounted again after the file server restarted; containers started before keep their old mounts until they restart');
      return failures;
    } catch (err) {
      log.warn('could not mount the shared folders again after the file server restarted; restart berth (berth stop && berth start)', { err: (err as Error).message });
      return files.shares.map((s) => ({ path: s.path, reason: `the VM did not finish mounting it again (${(err as Error).message})` }));
    }
  }

  /** The shares the boot could not mount; the agent answers once the boot's mounts are over. */
  private async shareFailures(shares: readonly ShareSpec[]): Promise<ShareFailure[]> {
    try {
      return (await this.session.rpc('fs.status', { timeoutMs: 30_000 }, 35_000)).failures;
    } catch (err) {
      this.deps.log.warn('could not ask the VM which shared folders are mounted', { err: (err as Error).message });
      // As in remountShares: unknown counts as not mounted.
      return shares.map((s) => ({ path: s.path, reason: `the VM did not say whether it is mounted (${(err as Error).message})` }));
    }
  }

  /**
   * Change events of shared folders: the file server asks the agent to replay host changes, and
   * the mount tracker pins and watches the folders containers mount.
   */
  private startChangeEvents(): void {
    const files = this.files;
    const session = this.session;
    const inspect = (id: string) => dockerJson(() => session.openDocker(), 'GET', `/containers/${encodeURIComponent(id)}/json`);
    const verify = (paths: string[]) => session.rpc('fs.verify', { paths }, 30_000);
    if (!files) {
      // Shares the driver bound itself (namespaces): the kernel's own change events, nothing to
      // pin or replay; a bind source is still checked at each start, as the guest resolves it
      // (a symlink put there could name the engine's socket inside the guest).
      if (this.shares.length === 0) return;
      const none = async () => {};
      this.mounts = new MountTracker({ shares: () => this.shares.map((s) => s.path), inspect, verify, pin: none, unpin: none, watch: none }, this.deps.log.child('mounts'));
      return;
    }
    // A file server that crashed and came back has lost every connection: the guest mounts the
    // shares again, with fresh tickets.
    files.onRestart = () => {
      void this.remountShares(files).then((failed) => {
        if (!this.closed) this.unavailable = failed;
      });
    };
    files.actuate = async (req) => {
      await session.rpc('fs.act', req, 15_000);
    };
    this.mounts = new MountTracker(
      {
        shares: () => files.shares.map((s) => s.path),
        inspect,
        verify,
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
      this.deps.log.child('mounts'),
    );
  }

  /** Published ports: follows the engine and keeps the translator's host listeners in step. */
  private startPublisher(): PortPublisher | undefined {
    if (!this.net || !this.network.translator) return undefined;
    const s = this.deps.settings;
    const opts = { defaultAddress: s['ports.defaultAddress'], ipv6Loopback: hostHasIpv6Loopback() };
    const extra = extraForwards(s['ports.extra'], this.network.guestIp);
    const p = new PortPublisher(() => this.session.openDocker(), this.net, opts, extra, this.deps.log.child('ports'));
    const mounts = this.mounts;
    if (mounts) p.onInspect = (id, inspect) => void mounts.update(id, inspect);
    p.start();
    return p;
  }

  /**
   * The Docker socket; bind mounts must lie inside the folders shared this boot, and not inside
   * one of the `unavailable` ones, which the guest could not mount.
   */
  private async startProxy(socketPath: string): Promise<DockerProxy> {
    const shares = this.shares;
    const log = this.deps.log;
    const settings = this.deps.settings;
    const policy: MountPolicy = {
      shares: shares.map((s) => ({ path: s.path, readOnly: s.readOnly, hostRoot: realShareRoot(s.path) })),
      vmPaths: settings.vmPaths,
      unavailable: [],
      ...(this.deps.hostKernel ? { hostKernel: { allowPrivileged: settings['namespace.allowPrivileged'] } } : {}),
    };
    const cached = shares.some((s) => s.cache);
    const proxy = new DockerProxy({
      socketPath,
      open: () => this.session.openDocker(),
      log: log.child('docker-proxy'),
      // The shares the VM could not mount change when the file server restarts and they are mounted again.
      policy: () => ({ ...policy, unavailable: this.unavailable }),
      beforeRun: async (run) => {
        if (run.kind === 'start') {
          const refusal = await this.mounts?.beforeStart(run.id);
          if (refusal) {
            log.warn('container start refused: a bind source changed since the container was created', { id: run.id, why: refusal });
            return { refuse: refusal };
          }
        }
        // A cached share shows a host change only once it is replayed in the guest (docs/files.md
        // "Caching"): what starts now must not read what was there before the change.
        if (cached && this.files && !(await this.files.drain(DRAIN_TIMEOUT_MS))) {
          log.warn('host changes were not all replayed in the VM before a container or exec started', { run: run.kind, id: run.id, waitedMs: DRAIN_TIMEOUT_MS });
        }
      },
    });
    await proxy.listen();
    return proxy;
  }
}

/** The warning `berth start` and `berth status` show for a share the guest could not mount. */
export function shareFailureWarning(f: ShareFailure): string {
  return `The shared folder ${f.path} is not mounted in the VM: ${f.reason}. Containers cannot bind-mount it (berth refuses them) until it is. Run \`berth restart\`; if it fails again, \`berth logs vm\` shows the boot's mount errors and \`berth logs daemon\` the file server's.`;
}

function remaining(deadline: number): number {
  return Math.max(1, deadline - Date.now());
}

/** True when the host has an IPv6 loopback address (published ports then also listen on ::1). */
function hostHasIpv6Loopback(): boolean {
  return Object.values(os.networkInterfaces()).some((list) => list?.some((a) => a.family === 'IPv6' && a.address === '::1'));
}

/** The host folder a share's path names (the share may be given through a symlink). */
function realShareRoot(p: string): string {
  try {
    return realpathSync.native(p);
  } catch {
    return p;
  }
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
