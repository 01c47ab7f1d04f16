import fs from 'node:fs';
import type { Logger } from '../util/log.js';
import { SupervisedWorker, workerLog } from '../util/supervised-worker.js';
import type { ShareSetting } from '../settings/settings.js';
import type { FsWorkerConfig, FsWorkerMessage, ToFsWorker } from './fs-worker.js';
import type { ActRequest } from '../control/actuator.js';
import type { ShareSpec } from './share.js';
import { newTicket, type Ticket } from './tickets.js';
import { randomActuatorUid } from '../control/actuator.js';

/**
 * The daemon's side of file sharing (docs/files.md): decides which configured folders are shared
 * this boot, runs the 9P server in a supervised worker thread on a Unix socket (the translator
 * hands it the guest's connections to gateway:564), issues the single-use tickets that open it
 * (tickets.ts), and writes what the guest's init needs to mount the shares: the share list with a
 * ticket each, passed to QEMU as a fw_cfg file.
 */
const HEAP_LIMIT_MB = 256;
/** The largest 9P message: the Linux client's TCP transport maximum is 1 MiB (MAX_SOCK_BUF). */
export const MAX_MSIZE = 1024 * 1024;

export interface SharePlan {
  shares: ShareSpec[];
  /** Folders of the setting that are not shared this boot, and why (shown as warnings). */
  skipped: string[];
}

/** The folders to share: those of the setting that exist on the host as directories. */
export function planShares(settings: readonly ShareSetting[]): SharePlan {
  const shares: ShareSpec[] = [];
  const skipped: string[] = [];
  for (const s of settings) {
    let ok = false;
    try {
      ok = fs.statSync(s.path).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) {
      skipped.push(`Shared folder ${s.path} does not exist on this host (or is not a folder); it is not shared. Change the "shares" setting to remove it.`);
      continue;
    }
    shares.push({ id: `s${shares.length}`, path: s.path, readOnly: s.readOnly ?? false, cache: s.cache ?? false });
  }
  return { shares, skipped };
}

/**
 * The fw_cfg file the guest's init reads (guest/rootfs/usr/lib/berth/mount-shares): one share per
 * line, "id<TAB>ro|rw<TAB>mmap|loose<TAB>ticket<TAB>path" (the third field is the v9fs cache
 * mode: mmap, which caches no file data but allows writable shared mappings, or loose for a share
 * with `cache: true`; docs/files.md "Transport"). Settings validation keeps tabs and newlines out
 * of paths.
 */
export function guestShareConfig(shares: readonly ShareSpec[], tickets: Readonly<Record<string, string>>): string {
  return shares.map((s) => `${s.id}\t${s.readOnly ? 'ro' : 'rw'}\t${s.cache ? 'loose' : 'mmap'}\t${tickets[s.id] ?? '-'}\t${s.path}`).join('\n') + '\n';
}

export class FileService {
  private readonly worker: SupervisedWorker<ToFsWorker, FsWorkerMessage>;
  private ready: (() => void) | undefined;
  private roots: string[] = [];
  /** Tickets not spent yet, sent again to a restarted worker. */
  private tickets: Ticket[] = [];
  /** This file server's change-event actuator uid (docs/security.md rule 13). */
  readonly actuatorUid = randomActuatorUid();
  /** After the worker restarted: its connections, and so the guest's mounts, are gone. */
  onRestart: (() => void) | undefined;
  /** Replays a host change in the guest (the agent's fs.act); set once the guest session is up. */
  actuate: ((req: ActRequest) => Promise<void>) | undefined;
  private nextDrain = 1;
  private readonly draining = new Map<number, () => void>();

  constructor(
    readonly socketPath: string,
    readonly shares: ShareSpec[],
    log: Logger,
  ) {
    const cfg: FsWorkerConfig = { socketPath, shares, maxMsize: MAX_MSIZE, actuatorUid: this.actuatorUid };
    this.worker = new SupervisedWorker(
      {
        name: 'file server',
        url: new URL('./fs-worker.js', import.meta.url),
        workerData: cfg,
        heapMb: HEAP_LIMIT_MB,
        onMessage: (m) => {
          if (m.type === 'ready') this.ready?.();
          else if (m.type === 'act') this.onAct(m.id, m.req);
          else if (m.type === 'drained' || m.type === 'rooted') this.draining.get(m.id)?.();
          else workerLog(log, m.level, m.msg, m.fields);
        },
        onStart: () => {
          if (this.roots.length) this.worker.send({ type: 'roots', paths: this.roots });
          this.tickets = this.tickets.filter((t) => t.expiresAt > Date.now());
          if (this.tickets.length) this.worker.send({ type: 'tickets', tickets: this.tickets });
          if (this.worker.restarts > 0) this.onRestart?.();
        },
      },
      log,
    );
  }

  get restarts(): number {
    return this.worker.restarts;
  }

  get lastFailure(): string | undefined {
    return this.worker.lastFailure;
  }

  /** Starts the server and waits until it listens. */
  start(timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the file server did not start within ${timeoutMs} ms: ${this.worker.lastFailure ?? 'no reason given'}`)), timeoutMs);
      this.ready = () => {
        clearTimeout(timer);
        this.ready = undefined;
        resolve();
      };
      this.worker.start();
    });
  }

  async stop(): Promise<void> {
    await this.worker.stop();
    fs.rmSync(this.socketPath, { force: true });
  }

  /** A fresh single-use ticket per share, valid for `ttlMs`: share id → ticket. */
  issueTickets(ttlMs: number): Record<string, string> {
    const out: Record<string, string> = {};
    const fresh = this.shares.map((s): Ticket => ({ ticket: newTicket(), share: s.id, expiresAt: Date.now() + ttlMs }));
    for (const t of fresh) out[t.share] = t.ticket;
    this.tickets = [...this.tickets.filter((t) => t.expiresAt > Date.now()), ...fresh];
    this.worker.send({ type: 'tickets', tickets: fresh });
    return out;
  }

  /** Spends every ticket not used yet (the mounts they were for are over). */
  revokeTickets(): void {
    this.tickets = [];
    this.worker.send({ type: 'revoke-tickets' });
  }

  /**
   * The folders whose host changes are replayed in the guest (bind-mount sources in shares).
   * Resolves once the file server watches them (its snapshot taken, its watches placed), so a
   * container that starts after it misses no change made after its start; or after `timeoutMs`,
   * or at once when the file server is not running.
   */
  watch(guestPaths: string[], timeoutMs = 10_000): Promise<void> {
    this.roots = guestPaths;
    return new Promise((resolve) => {
      const id = this.nextDrain++;
      const done = () => {
        clearTimeout(timer);
        this.draining.delete(id);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.draining.set(id, done);
      if (!this.worker.send({ type: 'roots', paths: guestPaths, id })) done();
    });
  }

  /**
   * Resolves true once every host change made so far in a watched folder has been replayed in the
   * guest (ChangeEvents.drain), or false after `timeoutMs` or when the file server is not running:
   * a slow replay delays what waits for it, it never fails it.
   */
  drain(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const id = this.nextDrain++;
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.draining.delete(id);
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.draining.set(id, () => done(true));
      if (!this.worker.send({ type: 'drain', id })) done(false);
    });
  }

  private onAct(id: number, req: ActRequest): void {
    const act = this.actuate;
    if (!act) {
      this.worker.send({ type: 'acted', id, error: 'the guest is not connected' });
      return;
    }
    act(req).then(
      () => this.worker.send({ type: 'acted', id }),
      (err: Error) => this.worker.send({ type: 'acted', id, error: err.message }),
    );
  }
}
