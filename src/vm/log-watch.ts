import fs from 'node:fs/promises';
import type { BerthError } from '../util/errors.js';

const POLL_MS = 250;

/**
 * Polls a log file QEMU writes (its stderr, the console) while the VM boots. `check` sees the
 * whole file each time and answers a failure (`failed` rejects with it), 'done' (the watch ends
 * quietly) or undefined (look again). `failed` never resolves; `stop()` ends the watch.
 */
export function watchLog(file: string, check: (text: string) => BerthError | 'done' | undefined): { failed: Promise<never>; stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const failed = new Promise<never>((_, reject) => {
    const poll = async () => {
      if (stopped) return;
      const text = await fs.readFile(file, 'utf8').catch(() => '');
      if (stopped) return;
      const verdict = check(text);
      if (verdict === 'done') return;
      if (verdict) return reject(verdict);
      timer = setTimeout(() => void poll(), POLL_MS);
    };
    void poll();
  });
  failed.catch(() => {});
  return {
    failed,
    stop: () => {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}
