import type { Logger } from '../util/log.js';
import type { NetService } from '../net/net-service.js';
import type { ForwardState } from '../net/port-forwarder.js';
import { dockerJson, followEvents, isRunning, type StreamOpener } from '../docker/index.js';
import { forwardsOfContainer, type PublishedForward, type PublishOptions } from './forwards.js';

/**
 * Publishes containers' ports on the host (docs/network.md "Port publishing"): follows dockerd's
 * events, inspects the containers they name, and keeps the translator's listeners equal to the
 * union of every running container's forwards plus `ports.extra`. A full reconcile runs when it
 * starts and whenever the event stream had to be reopened (engine restart), so missed events
 * cannot leave stale or missing listeners for long.
 */
export interface PortInfo extends PublishedForward {
  state: 'pending' | 'listening' | 'failed';
  error?: string;
}

const RECONNECT_MS = 1000;

export class PortPublisher {
  private readonly byContainer = new Map<string, PublishedForward[]>();
  private stopped = false;
  private abortEvents: (() => void) | undefined;
  private pushed = '';
  /** Containers reported to `onInspect` as running. */
  private readonly reported = new Set<string>();
  /** Every inspect of a running container, and undefined once it stopped (the mount tracker). */
  onInspect: ((id: string, inspect: unknown) => void) | undefined;
  private readonly logged = new Map<string, string>();

  constructor(
    private readonly open: StreamOpener,
    private readonly net: NetService,
    private readonly opts: PublishOptions,
    private readonly extra: PublishedForward[],
    private readonly log: Logger,
  ) {
    net.onStates = (states) => this.logStateChanges(states);
  }

  start(): void {
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    this.abortEvents?.();
  }

  /** Every forward with its state, sorted by host port. */
  list(): PortInfo[] {
    const states = this.net.forwardStates();
    return this.all()
      .map((f): PortInfo => {
        const st = states.get(f.id);
        return { ...f, state: st?.state ?? 'pending', ...(st?.error ? { error: st.error } : {}) };
      })
      .sort((a, b) => a.hostPort - b.hostPort || a.id.localeCompare(b.id));
  }

  private all(): PublishedForward[] {
    return [...this.extra, ...[...this.byContainer.values()].flat()];
  }

  private async run(): Promise<void> {
    this.push();
    while (!this.stopped) {
      // Subscribe first, then reconcile: an event between the two is then not lost.
      const events = followEvents(this.open, { type: ['container', 'network'] }, (e) => this.onEvent(e));
      this.abortEvents = events.abort;
      try {
        await this.reconcile();
        await events.done;
      } catch (err) {
        if (!this.stopped) this.log.debug('docker event stream interrupted; reconnecting', { err: (err as Error).message });
      }
      events.abort();
      if (!this.stopped) await new Promise((r) => setTimeout(r, RECONNECT_MS));
    }
  }

  private async reconcile(): Promise<void> {
    const list = await dockerJson(this.open, 'GET', '/containers/json');
    const ids = Array.isArray(list) ? list.flatMap((c) => (c && typeof c === 'object' && typeof (c as { Id?: unknown }).Id === 'string' ? [(c as { Id: string }).Id] : [])) : [];
    const seen = new Set<string>();
    for (const id of ids.slice(0, 10_000)) {
      seen.add(id);
      await this.refresh(id);
    }
    for (const id of [...this.byContainer.keys()]) if (!seen.has(id)) this.byContainer.delete(id);
    for (const id of [...this.reported]) if (!seen.has(id)) this.gone(id);
    this.push();
  }

  private onEvent(e: unknown): void {
    if (!e || typeof e !== 'object') return;
    const ev = e as { Type?: unknown; Action?: unknown; Actor?: { ID?: unknown; Attributes?: Record<string, unknown> } };
    let id: unknown;
    if (ev.Type === 'container') id = ev.Actor?.ID;
    else if (ev.Type === 'network' && (ev.Action === 'connect' || ev.Action === 'disconnect')) id = ev.Actor?.Attributes?.container;
    if (typeof id !== 'string' || !/^[0-9a-f]{12,64}$/.test(id)) return;
    const action = typeof ev.Action === 'string' ? ev.Action : '';
    // (not 'kill': a signal that does not end the container must not unpublish it; 'die' follows)
    if (action === 'die' || action === 'destroy' || action === 'stop') {
      if (this.byContainer.delete(id)) this.push();
      this.gone(id);
      return;
    }
    if (['start', 'unpause', 'restart', 'connect', 'disconnect', 'rename', 'update'].includes(action)) {
      void this.refresh(id).then(() => this.push());
    }
  }

  private async refresh(id: string): Promise<void> {
    try {
      const inspect = await dockerJson(this.open, 'GET', `/containers/${id}/json`);
      const fwd = forwardsOfContainer(inspect, this.opts);
      if (fwd.length > 0) this.byContainer.set(id, fwd);
      else this.byContainer.delete(id);
      if (isRunning(inspect)) {
        this.reported.add(id);
        this.onInspect?.(id, inspect);
      } else this.gone(id);
    } catch (err) {
      // Gone between the event and the inspect: nothing to publish.
      this.byContainer.delete(id);
      this.gone(id);
      this.log.debug('container inspect failed', { id: id.slice(0, 12), err: (err as Error).message });
    }
  }

  private gone(id: string): void {
    if (this.reported.delete(id)) this.onInspect?.(id, undefined);
  }

  /** Sends the full set to the translator when it changed. */
  private push(): void {
    const all = this.all();
    const key = JSON.stringify(all.map((f) => [f.id, f.guestIp, f.guestPort, f.alsoIpv6Loopback ?? false]));
    if (key === this.pushed) return;
    this.pushed = key;
    this.net.setForwards(all.map(({ containerId: _c, containerName: _n, ...spec }) => spec));
  }

  private logStateChanges(states: ForwardState[]): void {
    for (const s of states) {
      const f = this.all().find((x) => x.id === s.id);
      const key = `${s.state} ${s.error ?? ''}`;
      if (!f || this.logged.get(s.id) === key) continue;
      this.logged.set(s.id, key);
      if (s.state === 'listening') this.log.info('port published', { forward: s.id, container: f.containerName, to: `${f.guestIp}:${f.guestPort}` });
      else this.log.warn('port not published', { forward: s.id, container: f.containerName, error: s.error });
    }
  }
}
