import fs from 'node:fs/promises';
import path from 'node:path';
import { errnoCode } from '../util/errors.js';
import { aborted } from './run.js';

/**
 * One build per image key at a time across processes (a `berth image build` and a daemon's start
 * can race): a lock directory (mkdir is atomic) holding the builder's pid. A lock whose process is
 * gone is stale and taken over, so a killed build never blocks the next one.
 */
export async function acquireBuildLock(lockDir: string, signal?: AbortSignal, onWait?: (pid: number) => void): Promise<() => Promise<void>> {
  let reported = false;
  for (;;) {
    if (signal?.aborted) throw aborted();
    try {
      await fs.mkdir(lockDir);
      await fs.writeFile(path.join(lockDir, 'pid'), String(process.pid));
      return () => fs.rm(lockDir, { recursive: true, force: true });
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
    }
    const pid = await readPid(lockDir);
    if (pid === undefined) {
      // The holder may be between mkdir and writing its pid: look again shortly; still no pid
      // after that means it died in between.
      await sleep(500);
      if ((await readPid(lockDir)) === undefined) await fs.rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (!isAlive(pid)) {
      await fs.rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (!reported) {
      reported = true;
      onWait?.(pid);
    }
    await sleep(1000);
  }
}

async function readPid(lockDir: string): Promise<number | undefined> {
  const text = await fs.readFile(path.join(lockDir, 'pid'), 'utf8').catch(() => '');
  const pid = Number.parseInt(text, 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** Whether a process exists (EPERM: it exists but belongs to another user). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
