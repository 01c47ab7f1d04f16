import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { BerthError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { readTail } from '../util/files.js';
import { QmpClient } from './qmp.js';
import { buildQemuArgs, uuidFromTag, type VmConfig } from './qemu-args.js';
import { emittedWithin } from '../util/events.js';

export interface QemuExit {
  code: number | null;
  signal: string | null;
  /** True when this daemon did not launch the process (it was adopted after a daemon restart). */
  adopted: boolean;
}

const QMP_WAIT_MS = 15_000;

/**
 * One running QEMU. QEMU is started detached (own session, stdio to a log file) so it outlives the
 * daemon: a daemon killed with -9 can be restarted and `adopt()` the VM it left behind.
 *
 * Contract: emits 'exit' exactly once, when the process is gone (child exit for a launched process;
 * QMP close followed by the pid disappearing for an adopted one).
 */
export class QemuProcess extends EventEmitter {
  private exited = false;

  private constructor(
    readonly pid: number,
    readonly qmp: QmpClient,
    readonly adopted: boolean,
    private readonly log: Logger,
  ) {
    super();
  }

  static async launch(qemuBinary: string, cfg: VmConfig, qemuLog: string, log: Logger): Promise<QemuProcess> {
    const args = buildQemuArgs(cfg);
    const sockets = [cfg.qmpSocket, cfg.controlSocket, ...(cfg.network.kind === 'stream' ? [cfg.network.socket] : [])];
    for (const p of [...sockets, cfg.pidFile]) await fsp.rm(p, { force: true });
    const out = fs.openSync(qemuLog, 'w');
    log.info('launching qemu', { cmd: [qemuBinary, ...args].join(' ') });
    const child = spawn(qemuBinary, args, { detached: true, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    let early: QemuExit | undefined;
    let spawnError: Error | undefined;
    child.on('error', (err) => {
      spawnError = err;
    });
    child.on('exit', (code, signal) => {
      early = { code, signal, adopted: false };
    });
    child.unref();

    const started = Date.now();
    while (!fs.existsSync(cfg.qmpSocket)) {
      if (spawnError || early) break;
      if (Date.now() - started > QMP_WAIT_MS) break;
      await sleep(20);
    }
    if (spawnError || early || !fs.existsSync(cfg.qmpSocket) || child.pid === undefined) {
      if (child.pid !== undefined && !early) safeKill(child.pid, 'SIGKILL');
      const tail = await readTail(qemuLog, 20);
      throw new BerthError('QEMU_FAILED', `QEMU failed to start${early ? ` (exit ${early.code ?? early.signal})` : ''}: ${lastLine(tail) ?? spawnError?.message ?? 'no QMP socket appeared'}.`, {
        hint: `See ${qemuLog} for QEMU's own messages.`,
        details: { qemuLogTail: tail },
        cause: spawnError,
      });
    }
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(cfg.qmpSocket);
    } catch (err) {
      // QEMU creates the QMP socket before it sets up the vCPUs; a QEMU that aborts there (an
      // unsupported CPU model under KVM, say) closes QMP first. Its own message says more.
      await sleep(200);
      if (!early) safeKill(child.pid, 'SIGKILL');
      const tail = await readTail(qemuLog, 20);
      const exited = early as QemuExit | undefined;
      if (!exited || !tail.trim()) throw err;
      throw new BerthError('QEMU_FAILED', `QEMU failed to start (exit ${exited.code ?? exited.signal}): ${lastLine(tail)}.`, {
        hint: `See ${qemuLog} for QEMU's own messages.`,
        details: { qemuLogTail: tail },
        cause: err,
      });
    }
    const proc = new QemuProcess(child.pid, qmp, false, log);
    if (early) {
      proc.markExited(early);
    } else {
      child.on('exit', (code, signal) => proc.markExited({ code, signal, adopted: false }));
      // The child's own exit event names the signal; polling the pid at once would win the race
      // against it (a dead child is a zombie until Node reaps it) and lose the signal. The poll
      // is only a fallback here.
      qmp.on('close', () => setTimeout(() => proc.watchPidGone(), 2000).unref());
    }
    return proc;
  }

  /**
   * Re-attaches to a QEMU left running by an earlier daemon. Returns undefined if there is none, or
   * if the pid file points at a process that is not this home's QEMU (pid reuse).
   */
  static async adopt(pidFile: string, qmpSocket: string, instanceTag: string, log: Logger): Promise<QemuProcess | undefined> {
    const pid = await runningQemuPid(pidFile, instanceTag);
    if (pid === undefined) return undefined;
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(qmpSocket, 5_000);
    } catch (err) {
      log.warn('found our qemu but its QMP socket does not answer; killing it', { pid, err: String(err) });
      safeKill(pid, 'SIGKILL');
      return undefined;
    }
    const proc = new QemuProcess(pid, qmp, true, log);
    qmp.on('close', () => proc.watchPidGone());
    return proc;
  }

  get hasExited(): boolean {
    return this.exited;
  }

  /** Asks QEMU to quit (the guest gets no chance to shut down), then kills it if it lingers. */
  async quit(timeoutMs = 5_000): Promise<void> {
    if (this.exited) return;
    try {
      await this.qmp.execute('quit', undefined, timeoutMs);
    } catch {
      // QMP may close before answering; the exit wait below decides.
    }
    if (!(await this.waitExit(timeoutMs))) {
      this.log.warn('qemu ignored quit; sending SIGKILL', { pid: this.pid });
      this.kill();
      await this.waitExit(timeoutMs);
    }
  }

  kill(): void {
    safeKill(this.pid, 'SIGKILL');
  }

  /** Resolves true when the process has exited, false on timeout. */
  waitExit(timeoutMs: number): Promise<boolean> {
    return this.exited ? Promise.resolve(true) : emittedWithin(this, 'exit', timeoutMs);
  }

  private watchPidGone(): void {
    const poll = () => {
      if (this.exited) return;
      if (!pidAlive(this.pid)) this.markExited({ code: null, signal: null, adopted: this.adopted });
      else setTimeout(poll, 100);
    };
    poll();
  }

  private markExited(e: QemuExit): void {
    if (this.exited) return;
    this.exited = true;
    if (!this.qmp.isClosed) this.qmp.close();
    this.emit('exit', e);
  }
}

async function readPid(file: string): Promise<number | undefined> {
  try {
    const n = Number.parseInt((await fsp.readFile(file, 'utf8')).trim(), 10);
    return Number.isInteger(n) && n > 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** True if `pid` is alive and not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true; // no /proc (not Linux): kill(0) said it exists
  }
}

/**
 * The pid of this home's QEMU if one runs: the pid file names a live process whose command line
 * carries the home's UUID (so a reused pid is not mistaken for it); else undefined. Only reads.
 */
export async function runningQemuPid(pidFile: string, instanceTag: string): Promise<number | undefined> {
  const pid = await readPid(pidFile);
  return pid !== undefined && isOurQemu(pid, instanceTag) ? pid : undefined;
}

/** Checks /proc/<pid>/cmdline for the UUID this berth home gives its QEMU. */
function isOurQemu(pid: number, instanceTag: string): boolean {
  if (!pidAlive(pid)) return false;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-uuid');
    return i >= 0 && argv[i + 1] === uuidFromTag(instanceTag);
  } catch {
    return false;
  }
}

function safeKill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function lastLine(text: string): string | undefined {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .at(-1);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
