import { Worker } from 'node:worker_threads';
import type { LogFields, Logger } from '../util/log.js';
import type { ForwardSpec, ForwardState } from './port-forwarder.js';
import type { FromWorker, NetWorkerConfig, ToWorker } from './worker-protocol.js';

/**
 * The daemon's handle on the network translator (docs/network.md "Process model and failure"):
 * runs it in a worker thread with a heap limit, feeds it the published ports, and restarts it when
 * it dies (a crash or an out-of-memory end only the worker). Restarts back off and give up after
 * MAX_RESTARTS within RESTART_WINDOW_MS, leaving the VM without network but everything else up.
 */

const HEAP_LIMIT_MB = 384;
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

export type StatsReply = Extract<FromWorker, { type: 'stats' }>['stats'];

export class NetService {
  private worker: Worker | undefined;
  private stopping = false;
  private forwards: ForwardSpec[] = [];
  private states = new Map<string, ForwardState>();
  private restartTimes: number[] = [];
  private linkUp = false;
  private lastExit: string | undefined;
  private statsId = 0;
  private readonly pending = new Map<number, (s: StatsReply | undefined) => void>();
  /** Called whenever forward states change (the publisher mirrors them into `berth ports`). */
  onStates: ((states: ForwardState[]) => void) | undefined;

  private restartCount = 0;

  private readonly workerUrl: URL;
  private readonly backoffMs: number;

  constructor(
    private readonly cfg: NetWorkerConfig,
    private readonly log: Logger,
    /** Tests substitute a worker that misbehaves, and a shorter back-off. */
    opts: { workerUrl?: URL; backoffMs?: number } = {},
  ) {
    this.workerUrl = opts.workerUrl ?? new URL('./net-worker.js', import.meta.url);
    this.backoffMs = opts.backoffMs ?? 250;
  }

  /** How often the translator was restarted after dying. */
  get restarts(): number {
    return this.restartCount;
  }

  start(): void {
    this.stopping = false;
    this.spawn();
  }

  get isLinkUp(): boolean {
    return this.linkUp;
  }

  /** Why the last worker ended unexpectedly, if it did. */
  get lastFailure(): string | undefined {
    return this.lastExit;
  }

  setForwards(forwards: ForwardSpec[]): void {
    this.forwards = forwards;
    const ids = new Set(forwards.map((f) => f.id));
    for (const id of [...this.states.keys()]) if (!ids.has(id)) this.states.delete(id);
    this.send({ type: 'forwards', forwards });
  }

  forwardStates(): Map<string, ForwardState> {
    return new Map(this.states);
  }

  /** The translator's counters, or undefined if it does not answer within a second. */
  stats(): Promise<StatsReply | undefined> {
    const id = ++this.statsId;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve(undefined);
      }, 1000);
      this.pending.set(id, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      if (!this.send({ type: 'stats', id })) {
        this.pending.delete(id);
        clearTimeout(timer);
        resolve(undefined);
      }
    });
  }

  /** Stops the worker: flows are reset, listeners closed. */
  async stop(): Promise<void> {
    this.stopping = true;
    const w = this.worker;
    this.worker = undefined;
    this.linkUp = false;
    if (!w) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void w.terminate().then(() => resolve()), 2000);
      w.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      w.postMessage({ type: 'stop' } satisfies ToWorker);
    });
  }

  private send(m: ToWorker): boolean {
    if (!this.worker) return false;
    this.worker.postMessage(m);
    return true;
  }

  private spawn(): void {
    const w = new Worker(this.workerUrl, {
      workerData: this.cfg,
      resourceLimits: { maxOldGenerationSizeMb: HEAP_LIMIT_MB },
      stdout: false,
      stderr: false,
    });
    this.worker = w;
    let crashed = false;
    w.on('message', (m: FromWorker) => this.onMessage(m));
    w.on('error', (err) => {
      crashed = true;
      this.lastExit = `${err.name}: ${err.message}`;
      this.log.error('network translator crashed', { err: err.stack ?? err.message });
    });
    w.on('exit', (code) => {
      if (this.worker !== w) return; // stopped on purpose
      this.worker = undefined;
      this.linkUp = false;
      // Its listeners died with it: nothing is listening until the next worker says so.
      this.states.clear();
      this.onStates?.([]);
      if (!crashed) this.lastExit = `exited with code ${code}`;
      for (const [, r] of this.pending) r(undefined);
      this.pending.clear();
      if (this.stopping) return;
      this.restartLater();
    });
    if (this.forwards.length > 0) this.send({ type: 'forwards', forwards: this.forwards });
  }

  private restartLater(): void {
    const now = Date.now();
    this.restartTimes = this.restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
    if (this.restartTimes.length >= MAX_RESTARTS) {
      this.log.error('network translator keeps failing; not restarting it (run `berth restart`)', { last: this.lastExit });
      return;
    }
    this.restartTimes.push(now);
    const delay = this.backoffMs * 2 ** (this.restartTimes.length - 1);
    this.log.warn('restarting the network translator', { delayMs: delay, why: this.lastExit });
    setTimeout(() => {
      if (!this.stopping && !this.worker) {
        this.restartCount++;
        this.spawn();
      }
    }, delay);
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'link':
        this.linkUp = m.up;
        break;
      case 'forward-states':
        this.states = new Map(m.states.map((s) => [s.id, s]));
        this.onStates?.(m.states);
        break;
      case 'stats': {
        const r = this.pending.get(m.id);
        this.pending.delete(m.id);
        r?.(m.stats);
        break;
      }
      case 'log': {
        const fields: LogFields = {};
        for (const [k, v] of Object.entries(m.fields ?? {})) fields[k] = v === null || ['string', 'number', 'boolean'].includes(typeof v) ? (v as string) : JSON.stringify(v);
        if (m.level === 'warn') this.log.warn(m.msg, fields);
        else if (m.level === 'info') this.log.info(m.msg, fields);
        else this.log.debug(m.msg, fields);
        break;
      }
      case 'stopped':
        break;
    }
  }
}
