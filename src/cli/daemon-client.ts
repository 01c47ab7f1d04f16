import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { BerthPaths } from '../settings/paths.js';
import { packageRoot } from '../settings/paths.js';
import { BerthError, fromSerialized, type SerializedError } from '../util/errors.js';
import { readTail } from '../util/files.js';
import type { StatusReport, StreamLine } from '../daemon/api-types.js';
import type { ProgressEvent } from '../util/progress.js';
import { isDaemonLocked } from '../daemon/lock.js';

/**
 * Client of the daemon API (see daemon/api-types.ts). The CLI is a thin client: all state lives in
 * the daemon.
 */
export class DaemonClient {
  constructor(readonly paths: BerthPaths) {}

  /** True if a daemon answers on the daemon socket. */
  async isRunning(): Promise<boolean> {
    try {
      await this.getJson('/v1/status', 2000);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Starts the daemon in the background unless one answers already, and waits until it does.
   * Its output goes to daemon.log, so a daemon that dies at once still explains itself.
   */
  async ensureRunning(): Promise<void> {
    if (await this.isRunning()) return;
    // A daemon that holds the lock but does not answer yet is starting: wait for it, don't spawn.
    if (!(await isDaemonLocked(this.paths.home))) {
      fs.mkdirSync(this.paths.logsDir, { recursive: true, mode: 0o700 });
      const out = fs.openSync(this.paths.daemonLog, 'a', 0o600);
      const entry = path.join(packageRoot(), 'dist', 'src', 'daemon', 'main.js');
      const child = spawn(process.execPath, [entry], {
        detached: true,
        stdio: ['ignore', out, out],
        env: { ...process.env, BERTH_HOME: this.paths.home, BERTH_CACHE: this.paths.cache },
      });
      fs.closeSync(out);
      child.unref();
    }
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (await this.isRunning()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new BerthError('DAEMON_START_FAILED', 'The berth daemon did not come up within 60 s.', {
      hint: `See ${this.paths.daemonLog}.`,
      details: { daemonLogTail: await readTail(this.paths.daemonLog, 15) },
    });
  }

  status(): Promise<StatusReport> {
    return this.getJson('/v1/status') as Promise<StatusReport>;
  }

  /**
   * GETs `route` if a daemon answers, else resolves undefined. One request, not "isRunning, then
   * ask": a daemon exits ~100 ms after a clean stop, and a check followed by a second request
   * could land between the two (seen in CI: `berth stop; berth status --json` printed an error).
   */
  async getIfRunning(route: string): Promise<unknown> {
    try {
      return await this.getJson(route);
    } catch (err) {
      if (err instanceof BerthError && err.code === 'DAEMON_UNREACHABLE' && err.details?.noAnswer === true) return undefined;
      throw err;
    }
  }

  /**
   * POSTs to a streaming route (starting the daemon if needed); calls `onLine` per progress line
   * and resolves with the result. A daemon that closes the connection without answering at all was
   * exiting when the request arrived (idle exit after a stop): the request is sent once more, to a
   * fresh daemon. Lifecycle routes are idempotent, so the retry is safe.
   */
  async stream(route: string, onLine: (event: ProgressEvent) => void): Promise<StatusReport> {
    await this.ensureRunning();
    try {
      return await this.streamOnce(route, onLine);
    } catch (err) {
      if (!(err instanceof BerthError && err.details?.noAnswer === true)) throw err;
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline && (await this.isRunning())) await new Promise((r) => setTimeout(r, 100));
      await this.ensureRunning();
      return this.streamOnce(route, onLine);
    }
  }

  private streamOnce(route: string, onLine: (event: ProgressEvent) => void): Promise<StatusReport> {
    return new Promise((resolve, reject) => {
      let answered = false;
      const req = http.request({ socketPath: this.paths.daemonSocket, path: route, method: 'POST' }, (res) => {
        answered = true;
        let buf = '';
        let result: StreamLine | undefined;
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const text = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!text.trim()) continue;
            const line = JSON.parse(text) as StreamLine;
            if (line.type === 'result') result = line;
            else onLine(line);
          }
        });
        res.on('end', () => {
          if (result?.type === 'result') {
            if (result.ok) resolve(result.status);
            else reject(fromSerialized(result.error));
          } else {
            reject(new BerthError('DAEMON_UNREACHABLE', 'The daemon closed the connection before reporting a result.', { hint: `See ${this.paths.daemonLog}.` }));
          }
        });
      });
      req.on('error', (err) => reject(unreachable(this.paths, err, !answered)));
      req.end();
    });
  }

  getJson(route: string, timeoutMs = 30_000): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let answered = false;
      const req = http.get({ socketPath: this.paths.daemonSocket, path: route, timeout: timeoutMs }, (res) => {
        answered = true;
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          try {
            const parsed = JSON.parse(body) as { error?: SerializedError };
            if (res.statusCode !== 200 && parsed.error) reject(fromSerialized(parsed.error));
            else resolve(parsed);
          } catch (err) {
            reject(new BerthError('DAEMON_UNREACHABLE', `The daemon sent an unreadable answer for ${route}.`, { cause: err }));
          }
        });
      });
      let timedOut = false;
      req.on('timeout', () => {
        timedOut = true; // a daemon that holds the socket but is slow is not "no daemon"
        req.destroy(new Error(`no answer within ${timeoutMs} ms`));
      });
      req.on('error', (err) => reject(unreachable(this.paths, err, !answered && !timedOut)));
    });
  }
}

/**
 * `noAnswer`: no response began, so no daemon acted on the request (no socket, refused, or reset
 * by a daemon that was exiting); callers may treat that as "no daemon" or retry.
 */
function unreachable(paths: BerthPaths, err: unknown, noAnswer: boolean): BerthError {
  return new BerthError('DAEMON_UNREACHABLE', `Cannot reach the berth daemon at ${paths.daemonSocket}.`, {
    cause: err,
    hint: 'Run `berth start` (it starts the daemon), or see the daemon log with `berth logs daemon`.',
    ...(noAnswer ? { details: { noAnswer: true } } : {}),
  });
}
