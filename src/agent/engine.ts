import { execFile } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type { Logger } from '../util/log.js';

/**
 * Supervises the container engine (containerd + dockerd) inside the guest.
 *
 * Stage-2 init starts the engine before the agent exists (see guest/rootfs/usr/lib/berth/init for
 * why); the agent adopts those processes through their pid files and from then on owns them:
 * reports readiness (dockerd answers GET /_ping on its Unix socket), notices crashes and restarts the
 * engine with a backoff, and stops it cleanly on request.
 */
export type EngineState = 'starting' | 'ready' | 'failed' | 'stopping' | 'stopped';

export interface EngineStatus {
  state: EngineState;
  detail?: string;
  since: number;
  restarts: number;
  /** Milliseconds from agent start until the engine first answered. */
  readyAfterMs?: number;
}

export interface EnginePaths {
  dockerSocket: string;
  dockerdPid: string;
  containerdPid: string;
  engineUp: string;
  engineLog: string;
}

export const GUEST_ENGINE_PATHS: EnginePaths = {
  dockerSocket: '/run/docker.sock',
  dockerdPid: '/run/berth/dockerd.pid',
  containerdPid: '/run/berth/containerd.pid',
  engineUp: '/usr/lib/berth/engine-up',
  engineLog: '/run/berth/logs/engine.log',
};

const READY_TIMEOUT_MS = 300_000;
/** How long the agent waits for init's engine launch before launching it itself. */
const ADOPT_GRACE_MS = 20_000;
const MAX_RESTARTS_PER_10_MIN = 5;

export class Engine extends EventEmitter {
  private status: EngineStatus = { state: 'starting', since: Date.now(), restarts: 0 };
  private readonly startedAt = Date.now();
  private monitor: NodeJS.Timeout | undefined;
  private restartTimes: number[] = [];
  private generation = 0;

  constructor(
    private readonly paths: EnginePaths,
    private readonly log: Logger,
  ) {
    super();
  }

  get current(): EngineStatus {
    return { ...this.status };
  }

  /**
   * At agent start: the engine was launched by init (or is running since before an agent
   * restart). Waits for it; if no dockerd shows up within ADOPT_GRACE_MS, launches it.
   */
  adopt(): void {
    this.generation++;
    const gen = this.generation;
    this.setState('starting');
    void this.waitReady(gen, true);
  }

  /** Starts the engine (after a stop) and waits for readiness in the background. */
  start(): void {
    this.generation++;
    const gen = this.generation;
    this.setState('starting');
    this.runEngineUp()
      .then(() => this.waitReady(gen, false))
      .catch((err: Error) => this.setState('failed', `engine start failed: ${err.message}`));
  }

  /** Stops dockerd then containerd: SIGTERM, then SIGKILL after `timeoutMs`. */
  async stop(timeoutMs: number): Promise<{ forced: boolean }> {
    this.generation++;
    this.stopMonitor();
    this.setState('stopping');
    let forced = false;
    for (const pidFile of [this.paths.dockerdPid, this.paths.containerdPid]) {
      const pid = readPid(pidFile);
      if (pid === undefined) continue;
      if (!(await terminate(pid, timeoutMs))) forced = true;
    }
    this.setState('stopped', forced ? 'forced after timeout' : undefined);
    return { forced };
  }

  async restart(timeoutMs: number): Promise<void> {
    await this.stop(timeoutMs);
    this.start();
  }

  private async waitReady(gen: number, adopting: boolean): Promise<void> {
    const t0 = Date.now();
    const deadline = t0 + READY_TIMEOUT_MS;
    let launched = !adopting;
    while (gen === this.generation) {
      if (!launched && readPid(this.paths.dockerdPid) === undefined && Date.now() - t0 > ADOPT_GRACE_MS) {
        launched = true;
        this.log.warn('no engine was launched at boot; starting it');
        await this.runEngineUp().catch((err: Error) => this.setState('failed', `engine start failed: ${err.message}`));
      }
      if (await ping(this.paths.dockerSocket)) {
        if (this.status.readyAfterMs === undefined) this.status.readyAfterMs = Date.now() - this.startedAt;
        this.setState('ready');
        this.startMonitor(gen);
        return;
      }
      const dockerd = readPid(this.paths.dockerdPid);
      if (dockerd !== undefined && !alive(dockerd)) {
        this.setState('failed', `dockerd exited during startup; see the engine log:\n${tail(this.paths.engineLog, 15)}`);
        this.scheduleRestart(gen);
        return;
      }
      if (Date.now() > deadline) {
        this.setState('failed', `dockerd did not answer within ${READY_TIMEOUT_MS / 1000} s:\n${tail(this.paths.engineLog, 15)}`);
        return;
      }
      await sleep(100);
    }
  }

  private startMonitor(gen: number): void {
    this.stopMonitor();
    this.monitor = setInterval(() => {
      if (gen !== this.generation) return this.stopMonitor();
      const dead = [this.paths.dockerdPid, this.paths.containerdPid].filter((f) => {
        const pid = readPid(f);
        return pid === undefined || !alive(pid);
      });
      if (dead.length > 0) {
        this.stopMonitor();
        this.setState('failed', `${dead.map((f) => f.replace(/.*\//, '').replace('.pid', '')).join(' and ')} exited:\n${tail(this.paths.engineLog, 15)}`);
        this.scheduleRestart(gen);
      }
    }, 1000);
  }

  private stopMonitor(): void {
    if (this.monitor) clearInterval(this.monitor);
    this.monitor = undefined;
  }

  private scheduleRestart(gen: number): void {
    const now = Date.now();
    this.restartTimes = this.restartTimes.filter((t) => now - t < 600_000);
    if (this.restartTimes.length >= MAX_RESTARTS_PER_10_MIN) {
      this.log.error('engine keeps failing; not restarting it again automatically');
      this.setState('failed', `${this.status.detail ?? ''}\n(restarted ${this.restartTimes.length} times in 10 minutes; giving up — run \`berth restart\` after fixing the cause)`);
      return;
    }
    this.restartTimes.push(now);
    const delay = 1000 * 2 ** (this.restartTimes.length - 1);
    this.log.warn('restarting the engine', { delayMs: delay });
    setTimeout(() => {
      if (gen !== this.generation) return;
      this.status.restarts++;
      void this.stop(10_000).then(() => this.start());
    }, delay);
  }

  private runEngineUp(): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(this.paths.engineUp, { timeout: 30_000 }, (err, _stdout, stderr) => {
        if (err) reject(new Error(`${this.paths.engineUp}: ${stderr.trim() || err.message}`));
        else resolve();
      });
    });
  }

  private setState(state: EngineState, detail?: string): void {
    this.status = { ...this.status, state, since: Date.now(), ...(detail !== undefined ? { detail } : {}) };
    if (detail === undefined) delete this.status.detail;
    this.log.info('engine state', { state, detail: detail?.split('\n')[0] });
    this.emit('state', this.current);
    if (state === 'ready') this.emit('ready');
  }
}

/** GET /_ping on a Docker Unix socket; true on a 200 within 2 s. */
export function ping(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/_ping', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function readPid(file: string): number | undefined {
  try {
    const n = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
    return Number.isInteger(n) && n > 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z';
  } catch {
    return false;
  }
}

async function terminate(pid: number, timeoutMs: number): Promise<boolean> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return true;
  }
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return true;
    await sleep(100);
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
  return false;
}

export function tail(file: string, lines: number): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 64 * 1024);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return buf.toString('utf8').split('\n').filter(Boolean).slice(-lines).join('\n');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '(no log)';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
