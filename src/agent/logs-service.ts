import fs from 'node:fs';
import type { Duplex } from 'node:stream';

/**
 * The `logs` service: streams one of the guest's log files from a byte offset and keeps following
 * it until the host closes the stream. Only the two known logs can be named: the host cannot ask
 * for an arbitrary guest path (and has no reason to).
 */
export const GUEST_LOGS: Record<string, string> = {
  engine: '/run/berth/logs/engine.log',
  agent: '/run/berth/logs/agent.log',
};

const CHUNK = 64 * 1024;
const POLL_MS = 250;

export function parseLogsMeta(raw: unknown): { file: string; offset: number } {
  const o = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const file = typeof o.name === 'string' ? GUEST_LOGS[o.name] : undefined;
  if (!file) throw new Error(`logs: unknown log ${JSON.stringify(o.name)}; known: ${Object.keys(GUEST_LOGS).join(', ')}`);
  const offset = typeof o.offset === 'number' && Number.isInteger(o.offset) && o.offset >= 0 ? o.offset : 0;
  return { file, offset };
}

export function followLog(stream: Duplex, file: string, offset: number): void {
  let pos = offset;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const buf = Buffer.alloc(CHUNK);
  stream.on('close', () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  });
  stream.on('error', () => {});
  stream.resume(); // the host sends nothing; discard
  const tick = () => {
    if (stopped) return;
    let size = 0;
    try {
      size = fs.statSync(file).size;
    } catch {
      // not created yet
    }
    if (size < pos) pos = 0; // truncated
    if (size > pos) {
      let fd: number | undefined;
      try {
        fd = fs.openSync(file, 'r');
        const n = fs.readSync(fd, buf, 0, Math.min(CHUNK, size - pos), pos);
        pos += n;
        // Copy: `buf` is reused for the next read while this chunk may still be queued.
        const ok = stream.write(Buffer.from(buf.subarray(0, n)));
        if (!ok) {
          stream.once('drain', tick);
          return;
        }
        if (pos < size) {
          setImmediate(tick);
          return;
        }
      } catch {
        // transient; retry on the next tick
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
    }
    timer = setTimeout(tick, POLL_MS);
  };
  tick();
}
