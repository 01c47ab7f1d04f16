import http from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * A minimal client of the engine's HTTP API over a stream the caller opens (a mux stream to the
 * guest's dockerd socket). What dockerd answers is guest data: bodies are bounded and parsed as
 * JSON here, and the callers validate the shapes they use (ports/forwards.ts, fs/mount-tracker.ts).
 */

/** Opens a new stream to the guest's dockerd socket: one per HTTP connection, never reused. */
export type StreamOpener = () => Promise<Duplex>;

const MAX_BODY = 8 * 1024 * 1024;

export class DockerApiError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
  ) {
    super(message);
  }
}

function request(open: StreamOpener, method: string, path: string, timeoutMs: number): http.ClientRequest {
  return http.request({
    method,
    path,
    headers: { Host: 'docker' },
    timeout: timeoutMs,
    // One mux stream per request (no keep-alive pool): the connection is the stream.
    createConnection: ((_opts: unknown, done: (err: Error | null, s?: Duplex) => void) => {
      open().then(
        (s) => done(null, s),
        (err: Error) => done(err),
      );
      return undefined;
    }) as unknown as http.RequestOptions['createConnection'],
  });
}

/** Whether `docker inspect` data (guest data, unchecked) says the container is running. */
export function isRunning(inspect: unknown): boolean {
  return !!inspect && typeof inspect === 'object' && (inspect as { State?: { Running?: unknown } }).State?.Running === true;
}

/** GET/POST returning parsed JSON; rejects with DockerApiError on a non-2xx status or bad JSON. */
export function dockerJson(open: StreamOpener, method: string, path: string, timeoutMs = 15_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request(open, method, path, timeoutMs);
    req.on('timeout', () => req.destroy(new DockerApiError(`${method} ${path}: no answer within ${timeoutMs} ms`, undefined)));
    req.on('error', (err) => reject(err instanceof DockerApiError ? err : new DockerApiError(`${method} ${path}: ${err.message}`, undefined)));
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY) {
          req.destroy(new DockerApiError(`${method} ${path}: answer larger than ${MAX_BODY} bytes`, res.statusCode));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const status = res.statusCode ?? 0;
        if (status < 200 || status > 299) return reject(new DockerApiError(`${method} ${path}: HTTP ${status} ${text.slice(0, 200)}`, status));
        try {
          resolve(text ? JSON.parse(text) : null);
        } catch {
          reject(new DockerApiError(`${method} ${path}: the answer is not JSON`, status));
        }
      });
    });
    req.end();
  });
}

/**
 * Follows GET /events (one JSON object per line). Calls `onEvent` per event and resolves when the
 * stream ends (engine restarted, VM stopping); `abort()` ends it early.
 */
export function followEvents(open: StreamOpener, filters: Record<string, string[]>, onEvent: (e: unknown) => void): { done: Promise<void>; abort: () => void } {
  const path = `/events?filters=${encodeURIComponent(JSON.stringify(filters))}`;
  const req = request(open, 'GET', path, 0);
  const done = new Promise<void>((resolve, reject) => {
    req.on('error', (err) => reject(err));
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new DockerApiError(`GET /events: HTTP ${res.statusCode}`, res.statusCode));
        return;
      }
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        if (buf.length > 1024 * 1024) {
          req.destroy(new DockerApiError('GET /events: an event line longer than 1 MiB', 200));
          return;
        }
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          try {
            onEvent(JSON.parse(line));
          } catch {
            // a malformed event is skipped; the next reconcile catches up
          }
        }
      });
      res.on('end', () => resolve());
      res.on('error', reject);
    });
  });
  req.end();
  return { done, abort: () => req.destroy() };
}
