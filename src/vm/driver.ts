import type { BerthError } from '../util/errors.js';
import type { MuxLink } from '../control/mux.js';
import type { ProgressListener } from '../util/progress.js';
import type { Settings } from '../settings/settings.js';
import type { ResolvedImage } from '../daemon/image-source.js';
import type { GuestNetwork } from '../daemon/guest-network.js';
import type { ShareSpec } from '../fs/share.js';

/**
 * The seam between berth's lifecycle and the thing the guest runs in (docs/backends.md). A driver
 * knows how to check the host, keep the engine's data store, launch the guest, reach its control
 * socket, find a guest an earlier daemon left, and force it off. It knows nothing about the
 * engine, the Docker API, shared folders or published ports: those are the same for every backend.
 */
export interface VmDriver {
  /** A short name for logs and `status` ("qemu"). */
  readonly kind: string;
  /** The engine's data store of this berth home. */
  readonly dataStore: DataStore;
  /**
   * How shared folders reach the guest: "9p" (berth's file server through the translator; the
   * state machine starts it and the guest mounts what `BootRequest.sharesConfig` lists) or "bind"
   * (the driver binds `BootRequest.shares` at their own paths before the guest starts).
   */
  readonly sharesBy: '9p' | 'bind';
  /**
   * True when the guest runs on the host's own kernel (no VM boundary): the Docker API proxy then
   * refuses what would reach that kernel (docs/namespace.md "The boundary").
   */
  readonly hostKernel: boolean;

  /**
   * Checks that the host can run this backend with these settings and says how (the accelerator,
   * the VMM's version). `image` builds or finds the guest image (base + pack): a driver calls it
   * once, after its own cheap checks, so a host that cannot run the backend fails before a first
   * start spends minutes on a build. May report progress steps. MUST NOT leave anything running. A
   * host that cannot run the backend rejects with a BerthError whose hint says what to do instead.
   */
  prepare(settings: Settings, image: () => Promise<ResolvedImage>, emit: ProgressListener): Promise<PreparedHost>;

  /**
   * Launches the guest and calls `attach` once per launch attempt, racing the attachment's `ready`
   * against the driver's own failure watches (the process exiting, the accelerator failing, a
   * kernel that stays silent). A retry the driver decides on closes the attachment and forces the
   * guest off first, and says so through `emit`. Resolves with the guest and the attachment's value
   * once `ready` resolved. On failure it MUST leave no process of its own behind, MUST have closed
   * every attachment it made, and rejects with the last attempt's error.
   */
  boot<T>(request: BootRequest, attach: (guest: LaunchedGuest) => Attachment<T>, emit: ProgressListener): Promise<Booted<T>>;

  /**
   * Finds a guest an earlier daemon of this berth home left running, or undefined. MUST only
   * return a process proven to be this home's (not a reused pid).
   */
  adopt(): Promise<LaunchedGuest | undefined>;

  /** The last lines the guest printed on its console in its current boot (for a failure's details). */
  consoleTail(): Promise<string>;

  /** Removes what a guest left on the host (sockets, pid files) once it is gone. Idempotent. */
  cleanup(): Promise<void>;
}

/** What `prepare` learned about the host. */
export interface PreparedHost {
  /** How the guest's CPU runs ("kvm", "tcg", "native"). */
  accelerator: string;
  /** Set when the backend had to settle for less than asked (shown to the user). */
  warning?: string;
  /** Opaque to the state machine: handed back to `boot`. */
  detail: unknown;
}

/** Everything one boot needs, backend-neutral except `host.detail`. */
export interface BootRequest {
  host: PreparedHost;
  image: ResolvedImage;
  cpus: number;
  memoryMiB: number;
  /**
   * The network attachment: with berth's translator (`network.translator`), the driver MUST plug
   * the guest's NIC into a stream server on `network.translator.socketPath` (frames with a 4-byte
   * big-endian length, as QEMU's stream netdev) before `attach` runs; the translator connects to it.
   * The guest's address, gateway and host alias come from `network` too.
   */
  network: GuestNetwork;
  /** A host file the guest reads its share configuration from, if folders are shared over 9P. */
  sharesConfig?: string;
  /** The shared folders, for a driver that binds them itself. */
  shares?: ShareSpec[];
  /** Epoch ms by which the guest's agent and engine must be ready. */
  deadline: number;
}

export interface Attachment<T> {
  /** Resolves when the guest is usable (agent connected, engine ready). */
  ready: Promise<T>;
  /** Releases what the attachment made; safe to call at any point, and more than once. */
  close(): Promise<void>;
}

export interface Booted<T> {
  guest: LaunchedGuest;
  attached: T;
  /** The accelerator the successful attempt ran on (after a fallback it differs from prepare's). */
  accelerator: string;
}

/**
 * One running guest process. Emits `exit` exactly once, with a BerthError saying how it ended,
 * when the process is gone (also for an adopted one).
 */
export interface LaunchedGuest {
  readonly pid: number;
  readonly hasExited: boolean;
  /**
   * Opens the host end of the agent's control channel (the mux runs over it), retrying while the
   * guest's side is being set up. The link's `close` means the guest is gone. MUST NOT make the
   * daemon open or connect to a path the guest can choose (a guest-made symlink, say).
   */
  openControl(): Promise<MuxLink>;
  on(event: 'exit', listener: (err: BerthError) => void): this;
  once(event: 'exit', listener: (err: BerthError) => void): this;
  off(event: 'exit', listener: (err: BerthError) => void): this;
  /** Resolves true once the process has exited (the agent powered it off), false after `timeoutMs`. */
  waitExit(timeoutMs: number): Promise<boolean>;
  /** Forces the guest off without a shutdown; resolves once the process is gone. */
  forceOff(timeoutMs: number): Promise<void>;
}

/** The engine's data, kept across boots, engines and (later) backends. */
export interface DataStore {
  readonly path: string;
  /** Where the record of the engine that last wrote this store is kept (docs/engine-packs.md). */
  readonly engineStamp: string;
  /**
   * Creates the store or grows it to `sizeGiB`; never shrinks (a note says so). MUST only be called
   * while no guest has it open.
   */
  ensure(sizeGiB: number): Promise<DataStoreState>;
  /** Point-in-time copies for the engine switch (docs/engine-packs.md); only while no guest runs. */
  createSnapshot(name: string): Promise<void>;
  applySnapshot(name: string): Promise<void>;
  deleteSnapshot(name: string): Promise<void>;
  listSnapshots(): Promise<string[]>;
}

export interface DataStoreState {
  virtualGiB: number;
  /** Bytes the store occupies on the host. */
  allocatedBytes: number;
  created: boolean;
  /** Set when the store was grown or a requested shrink was refused. */
  note?: string;
}
