import fs from 'node:fs';
import type { BerthPaths } from '../settings/paths.js';
import { BerthError } from '../util/errors.js';
import { readTail } from '../util/files.js';
import type { Out } from './render.js';

/**
 * `berth logs [vm|agent|engine|daemon] [-f] [-n N]`. Reads the host-side log files directly, so it
 * works when the daemon or the VM is down (the moment logs matter most):
 *   vm      the serial console (kernel and init messages)
 *   agent   the guest agent, shipped to the host by the daemon
 *   engine  containerd and dockerd, shipped likewise
 *   daemon  the host daemon
 */
export const LOG_NAMES = ['vm', 'agent', 'engine', 'daemon'] as const;
export type LogName = (typeof LOG_NAMES)[number];

export interface LogsOptions {
  log: LogName;
  /** How many of the last lines to print first (Number.MAX_SAFE_INTEGER for all). */
  lines: number;
  follow: boolean;
}

export function logFile(paths: BerthPaths, name: LogName): string {
  return { vm: paths.vmLog, agent: paths.agentLog, engine: paths.engineLog, daemon: paths.daemonLog }[name];
}

export async function showLogs(paths: BerthPaths, options: LogsOptions, out: Out): Promise<number> {
  const { log: name, lines: n, follow } = options;
  const file = logFile(paths, name);
  if (!fs.existsSync(file) && !follow) {
    throw new BerthError('USAGE', `There is no ${name} log yet (${file}).`, { hint: 'It appears once berth has started.' });
  }
  const initial = n === 0 ? '' : await readTail(file, n);
  if (initial) out.write(initial + '\n');
  if (!follow) return 0;
  await followFile(file, out);
  return 0;
}

/** Prints what is appended to `file` until the process is interrupted; copes with rotation. */
function followFile(file: string, out: Out): Promise<void> {
  return new Promise(() => {
    let pos = safeSize(file);
    let ino = safeIno(file);
    const tick = () => {
      const size = safeSize(file);
      const nowIno = safeIno(file);
      if (nowIno !== ino || size < pos) {
        // Rotated or truncated (a new boot): start from the beginning of the new file.
        ino = nowIno;
        pos = 0;
      }
      if (size > pos) {
        const fd = fs.openSync(file, 'r');
        const buf = Buffer.alloc(Math.min(size - pos, 1024 * 1024));
        const n = fs.readSync(fd, buf, 0, buf.length, pos);
        fs.closeSync(fd);
        pos += n;
        out.write(buf.subarray(0, n).toString('utf8'));
      }
      setTimeout(tick, 250);
    };
    tick();
  });
}

function safeSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function safeIno(file: string): number {
  try {
    return fs.statSync(file).ino;
  } catch {
    return -1;
  }
}
