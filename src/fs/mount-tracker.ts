import path from 'node:path';
import type { Logger } from '../util/log.js';
import { isRunning } from '../docker/index.js';
import { isWithin } from '../util/paths.js';
import type { FsVerifyResult } from '../control/agent-api.js';

/**
 * Which shared folders containers have bind-mounted, so their host changes are followed and
 * replayed (docs/files.md "Change events"). For each running container: the sources of its bind
 * mounts that lie inside a share. Folders are pinned in the guest (the agent holds their
 * directories open) before a container that mounts them starts, when the start goes through
 * berth's Docker socket (`prepare`); containers the engine restarts by itself are picked up from
 * its events, a little later.
 */
export interface MountTrackerDeps {
  /** The shared folders, as the guest sees them. */
  shares: () => readonly string[];
  /** `docker inspect` of a container (guest data, validated here). */
  inspect: (id: string) => Promise<unknown>;
  pin: (paths: string[]) => Promise<void>;
  /** What the VM resolves each path to now (agent fs.verify, checked by its table entry). */
  verify: (paths: string[]) => Promise<FsVerifyResult>;
  unpin: (paths: string[]) => Promise<void>;
  /** The folders whose changes the file server should follow now; resolves once it does. */
  watch: (paths: string[]) => void | Promise<void>;
}

/** A prepared container not seen running by then is checked again (its start may have failed). */
const CONFIRM_MS = 30_000;

export class MountTracker {
  private readonly byContainer = new Map<string, string[]>();
  /** Prepared containers not yet seen running, with their re-check timers. */
  private readonly unconfirmed = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly d: MountTrackerDeps,
    private readonly log: Logger,
    private readonly confirmMs = CONFIRM_MS,
  ) {}

  /** Before a container starts: pin and watch the shared folders it mounts. Never throws. */
  async prepare(id: string, inspect?: unknown): Promise<void> {
    try {
      await this.apply(id, inspect ?? (await this.d.inspect(id)));
    } catch (err) {
      this.log.debug('could not prepare change events for a container', { id: id.slice(0, 12), err: (err as Error).message });
      return;
    }
    if (!this.byContainer.has(id)) return;
    clearTimeout(this.unconfirmed.get(id));
    const timer = setTimeout(() => void this.recheck(id), this.confirmMs);
    timer.unref();
    this.unconfirmed.set(id, timer);
  }

  /**
   * Before a container starts: its bind sources inside the shares must still be what they were
   * when it was created, in the VM: each must resolve to itself, with no symbolic link on the
   * way (docs/docker-proxy.md "Symbolic links in bind sources"). Returns the refusal message, or
   * undefined to go on. An unknown container goes on (dockerd answers it).
   */
  async verifyStart(id: string, known?: unknown): Promise<string | undefined> {
    let inspect = known;
    try {
      inspect ??= await this.d.inspect(id);
    } catch {
      return undefined;
    }
    const sources = this.sources(inspect);
    if (sources.length === 0) return undefined;
    let answer: FsVerifyResult;
    try {
      answer = await this.d.verify(sources);
    } catch (err) {
      return `berth: could not check this container's bind mounts in the VM (${(err as Error).message}); it is not started. Try again, or run \`berth restart\`.`;
    }
    for (const src of sources) {
      const r = answer.results.find((x) => x.path === src);
      if (!r) return `berth: the VM did not say what the bind mount source ${src} is; the container is not started.`;
      if (r.resolved === src && (r.kind === 'dir' || r.kind === 'file')) continue;
      const link = r.kind === 'symlink' || (r.resolved !== null && r.resolved !== src);
      const now = link ? `a symbolic link to ${String(r.resolved)}` : r.kind === 'missing' ? 'gone' : 'not a folder or file';
      return `berth: the bind mount source ${src} is now ${now} in the VM; when the container was created it was a folder inside a shared folder. berth does not start it, because the VM would mount what is there now. Put the folder back, or create the container again.`;
    }
    return undefined;
  }

  /**
   * Before a container starts, with one inspect of it: verifyStart, then prepare. Returns the
   * refusal message, or undefined once its folders are pinned and watched.
   */
  async beforeStart(id: string): Promise<string | undefined> {
    let inspect: unknown;
    try {
      inspect = await this.d.inspect(id);
    } catch {
      return undefined; // dockerd answers for a container it does not know
    }
    const refusal = await this.verifyStart(id, inspect);
    if (refusal === undefined) await this.prepare(id, inspect);
    return refusal;
  }

  /** A container's inspect data changed (running, or undefined: gone). Never throws. */
  async update(id: string, inspect: unknown): Promise<void> {
    clearTimeout(this.unconfirmed.get(id));
    this.unconfirmed.delete(id);
    await this.apply(id, inspect);
  }

  close(): void {
    for (const t of this.unconfirmed.values()) clearTimeout(t);
    this.unconfirmed.clear();
  }

  /** A prepared container whose start was never seen: keep its folders only if it runs. */
  private async recheck(id: string): Promise<void> {
    if (!this.unconfirmed.delete(id)) return;
    let inspect: unknown;
    try {
      inspect = await this.d.inspect(id);
    } catch {
      inspect = undefined; // removed
    }
    await this.apply(id, isRunning(inspect) ? inspect : undefined);
  }

  private async apply(id: string, inspect: unknown): Promise<void> {
    const next = inspect === undefined ? [] : this.sources(inspect);
    const prev = this.byContainer.get(id) ?? [];
    if (same(prev, next)) return;
    const before = this.all();
    if (next.length) this.byContainer.set(id, next);
    else this.byContainer.delete(id);
    const after = this.all();
    const added = after.filter((p) => !before.includes(p));
    const removed = before.filter((p) => !after.includes(p));
    // Separately: a failed pin must not keep folders no longer mounted held open.
    try {
      if (added.length) await this.d.pin(added);
    } catch (err) {
      this.log.warn('pinning shared folders in the VM failed; containers may miss change events', { err: (err as Error).message });
    }
    try {
      if (removed.length) await this.d.unpin(removed);
    } catch (err) {
      this.log.debug('unpinning shared folders in the VM failed', { err: (err as Error).message });
    }
    await this.d.watch(after);
  }

  /** Every followed folder. */
  all(): string[] {
    return [...new Set([...this.byContainer.values()].flat())].sort();
  }

  /** Bind-mount sources inside a share (Mounts[] of `docker inspect`, Type "bind"). */
  private sources(inspect: unknown): string[] {
    if (!inspect || typeof inspect !== 'object') return [];
    const mounts = (inspect as { Mounts?: unknown }).Mounts;
    if (!Array.isArray(mounts)) return [];
    const shares = this.d.shares();
    const out = new Set<string>();
    for (const m of mounts.slice(0, 256)) {
      if (!m || typeof m !== 'object') continue;
      const { Type, Source } = m as { Type?: unknown; Source?: unknown };
      if (Type !== 'bind' || typeof Source !== 'string' || !path.isAbsolute(Source)) continue;
      const src = path.posix.normalize(Source);
      if (shares.some((s) => isWithin(src, s))) out.add(src);
    }
    return [...out].sort();
  }
}

function same(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
