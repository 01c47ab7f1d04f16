import type { Logger } from '../util/log.js';
import { SupervisedWorker, workerLog } from '../util/supervised-worker.js';
import type { ForwardSpec, ForwardState } from './port-forwarder.js';
import type { FromWorker, NetWorkerConfig, ToWorker } from './worker-protocol.js';

/**
 * The daemon's handle on the network translator (docs/network.md "Process model and failure"):
 * runs it in a supervised worker thread (restarted when it dies), feeds it the published ports
 * again after every start, and mirrors its state.
 */
const HEAP_LIMIT_MB = 384;

export type StatsReply = Extract<FromWorker, { type: 'stats' }>['stats'];

export class NetService {
  private readonly worker: SupervisedWorker<ToWorker, FromWorker>;
  private forwards: ForwardSpec[] = [];
  private states = new Map<string, ForwardState>();
  private linkUp = false;
  private statsId = 0;
  private readonly pending = new Map<number, (s: StatsReply | undefined) => void>();
  /** Called whenever forward states change (the publisher mirrors them into `berth ports`). */
  onStates: ((states: ForwardState[]) => void) | undefined;

  constructor(
    cfg: NetWorkerConfig,
    private readonly log: Logger,
    /** Tests substitute a worker that misbehaves, and a shorter back-off. */
    opts: { workerUrl?: URL; backoffMs?: number } = {},
  ) {
    this.worker = new SupervisedWorker(
      {
        name: 'network translator',
        url: opts.workerUrl ?? new URL('./net-worker.js', import.meta.url),
        workerData: cfg,
        heapMb: HEAP_LIMIT_MB,
        ...(opts.backoffMs !== undefined ? { backoffMs: opts.backoffMs } : {}),
        onMessage: (m) => this.onMessage(m),
        onStart: () => {
          if (this.forwards.length > 0) this.worker.send({ type: 'forwards', forwards: this.forwards });
        },
        onExit: () => {
          this.linkUp = false;
          // Its listeners died with it: nothing is listening until the next worker says so.
          this.states.clear();
          this.onStates?.([]);
          for (const [, r] of this.pending) r(undefined);
          this.pending.clear();
        },
      },
      log,
    );
  }

  start(): void {
    this.worker.start();
  }

  get isLinkUp(): boolean {
    return this.linkUp;
  }

  /** How often the translator was restarted after dying. */
  get restarts(): number {
    return this.worker.restarts;
  }

  /** Why the last worker ended unexpectedly, if it did. */
  get lastFailure(): string | undefined {
    return this.worker.lastFailure;
  }

  setForwards(forwards: ForwardSpec[]): void {
    this.forwards = forwards;
    const ids = new Set(forwards.map((f) => f.id));
    for (const id of [...this.states.keys()]) if (!ids.has(id)) this.states.delete(id);
    this.worker.send({ type: 'forwards', forwards });
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
      if (!this.worker.send({ type: 'stats', id })) {
        this.pending.delete(id);
        clearTimeout(timer);
        resolve(undefined);
      }
    });
  }

  /** Stops the worker: flows are reset, listeners closed. */
  async stop(): Promise<void> {
    this.linkUp = false;
    await this.worker.stop();
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
      case 'log':
        workerLog(this.log, m.level, m.msg, m.fields);
        break;
      case 'stopped':
        break;
    }
  }
}
