import { Worker } from 'node:worker_threads';
import type { LogFields, Logger } from './log.js';

/**
 * A worker thread the daemon keeps alive (the network translator, the file server): started with a
 * heap limit, so a crash or an out-of-memory ends only the worker; restarted after it dies, with a
 * growing back-off, and after MAX_RESTARTS within RESTART_WINDOW_MS every SLOW_RETRY_MS, so a
 * worker that dies at once does not spin and one that recovers is back. `stop()` asks it to finish ({type: 'stop'}) and terminates it after 2 s.
 */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/** After MAX_RESTARTS within the window, the pause before each further try. */
const SLOW_RETRY_MS = 30_000;
const STOP_GRACE_MS = 2000;

export interface SupervisedWorkerOptions<Out> {
  /** For log lines: "network translator", "file server". */
  name: string;
  url: URL;
  workerData: unknown;
  heapMb: number;
  /** First restart delay; doubles with each restart in the window. */
  backoffMs?: number;
  onMessage: (m: Out) => void;
  /** After each (re)start: send the worker what it needs. */
  onStart?: () => void;
  /** After the worker ended unexpectedly (before any restart). */
  onExit?: () => void;
}

export class SupervisedWorker<In extends { type: string }, Out> {
  private worker: Worker | undefined;
  private stopping = false;
  private restartTimes: number[] = [];
  private restartCount = 0;
  private failure: string | undefined;

  constructor(
    private readonly o: SupervisedWorkerOptions<Out>,
    private readonly log: Logger,
  ) {}

  get running(): boolean {
    return this.worker !== undefined;
  }

  /** How often the worker was restarted after dying. */
  get restarts(): number {
    return this.restartCount;
  }

  /** Why it last died, if it did. */
  get lastFailure(): string | undefined {
    return this.failure;
  }

  start(): void {
    this.stopping = false;
    this.spawn();
  }

  send(m: In): boolean {
    if (!this.worker) return false;
    this.worker.postMessage(m);
    return true;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const w = this.worker;
    this.worker = undefined;
    if (!w) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void w.terminate().then(() => resolve()), STOP_GRACE_MS);
      w.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      w.postMessage({ type: 'stop' });
    });
  }

  private spawn(): void {
    const w = new Worker(this.o.url, { workerData: this.o.workerData, resourceLimits: { maxOldGenerationSizeMb: this.o.heapMb }, stdout: false, stderr: false });
    this.worker = w;
    let crashed = false;
    w.on('message', (m: Out) => this.o.onMessage(m));
    w.on('error', (err) => {
      crashed = true;
      this.failure = `${err.name}: ${err.message}`;
      this.log.error(`${this.o.name} crashed`, { err: err.stack ?? err.message });
    });
    w.on('exit', (code) => {
      if (this.worker !== w) return; // stopped on purpose
      this.worker = undefined;
      if (!crashed) this.failure = `exited with code ${code}`;
      this.o.onExit?.();
      if (!this.stopping) this.restartLater();
    });
    this.o.onStart?.();
  }

  private restartLater(): void {
    const now = Date.now();
    this.restartTimes = this.restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
    // A worker that keeps dying is tried again, slowly: what it serves (every share, the whole
    // network) must not stay gone until the user notices, and a slow retry cannot spin.
    const failing = this.restartTimes.length >= MAX_RESTARTS;
    if (!failing) this.restartTimes.push(now);
    const delay = failing ? SLOW_RETRY_MS : (this.o.backoffMs ?? 250) * 2 ** (this.restartTimes.length - 1);
    if (failing) this.log.error(`${this.o.name} keeps failing; trying again in ${SLOW_RETRY_MS / 1000} s`, { last: this.failure });
    else this.log.warn(`restarting the ${this.o.name}`, { delayMs: delay, why: this.failure });
    setTimeout(() => {
      if (!this.stopping && !this.worker) {
        this.restartCount++;
        this.spawn();
      }
    }, delay).unref();
  }
}

/** A log line a worker posts to the daemon; the daemon writes it with `workerLog`. */
export interface WorkerLogRecord {
  type: 'log';
  level: 'debug' | 'info' | 'warn';
  msg: string;
  fields?: Record<string, unknown>;
}

/** A worker's log record into the daemon's log (fields flattened to loggable values). */
export function workerLog(log: Logger, level: WorkerLogRecord['level'], msg: string, raw: Record<string, unknown> = {}): void {
  const fields: LogFields = {};
  for (const [k, v] of Object.entries(raw)) fields[k] = v === null || ['string', 'number', 'boolean'].includes(typeof v) ? (v as string) : JSON.stringify(v);
  if (level === 'warn') log.warn(msg, fields);
  else if (level === 'info') log.info(msg, fields);
  else log.debug(msg, fields);
}
