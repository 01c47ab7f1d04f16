import http from 'node:http';
import type net from 'node:net';
import { BerthError, toBerthError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { ProgressEvent } from '../util/progress.js';
import { listenUnix } from '../util/unix-socket.js';
import type { VmController } from './vm-controller.js';
import type { ExecRequest, StatusReport, StreamLine } from './api-types.js';

/**
 * The daemon API: HTTP/1.1 on a Unix socket (mode 0600 in a 0700 directory, so only the user can
 * reach it; it never listens on TCP). Routes are listed in api-types.ts.
 */
export class ApiServer {
  private readonly server: http.Server;

  constructor(
    private readonly socketPath: string,
    private readonly vm: VmController,
    private readonly log: Logger,
    private readonly onStopped: () => void,
  ) {
    this.server = http.createServer((req, res) => {
      this.route(req, res).catch((err) => {
        const e = toBerthError(err);
        if (!res.headersSent) sendJson(res, 500, { error: e.toJSON() });
        else res.destroy();
      });
    });
    this.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.upgrade(req, socket, head));
  }

  listen(): Promise<void> {
    return listenUnix(this.server, this.socketPath, 'daemon API socket');
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://berth');
    const key = `${req.method} ${url.pathname}`;
    switch (key) {
      case 'GET /v1/status':
        return sendJson(res, 200, await this.vm.status());
      case 'GET /v1/ports':
        return sendJson(res, 200, this.vm.ports());
      case 'GET /v1/network':
        return sendJson(res, 200, await this.vm.network());
      case 'POST /v1/start':
        const backend = url.searchParams.get('backend');
        if (backend !== null && backend !== 'vm' && backend !== 'namespace') return sendJson(res, 400, { error: new BerthError('USAGE', `Unknown backend ${JSON.stringify(backend.slice(0, 32))}: "vm" or "namespace".`).toJSON() });
        return this.streamOp(res, (p) => this.vm.start(p, { switchContext: url.searchParams.get('switchContext') === '1', ...(backend ? { backend } : {}) }));
      case 'POST /v1/stop': {
        await this.streamOp(res, (p) => this.vm.stop(p));
        if (this.vm.vmState === 'stopped') this.onStopped();
        return;
      }
      case 'POST /v1/restart':
        return this.streamOp(res, async (p) => {
          // A restart keeps the backend the guest runs on (`start --backend` may have chosen it).
          const backend = this.vm.runningBackend;
          await this.vm.stop(p);
          return this.vm.start(p, backend ? { backend } : {});
        });
      default:
        return sendJson(res, 404, { error: new BerthError('USAGE', `No such daemon API route: ${key}.`).toJSON() });
    }
  }

  /** Streams progress as NDJSON and ends with one result line. */
  private async streamOp(res: http.ServerResponse, op: (progress: (e: ProgressEvent) => void) => Promise<StatusReport>): Promise<void> {
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    const write = (line: StreamLine) => {
      if (!res.writableEnded) res.write(JSON.stringify(line) + '\n');
    };
    try {
      const status = await op(write);
      write({ type: 'result', ok: true, status });
    } catch (err) {
      const e = toBerthError(err);
      write({ type: 'result', ok: false, error: e.toJSON(), status: await this.vm.status() });
    }
    res.end();
  }

  /** GET /v1/exec with `Upgrade: berth-exec`: bridges the connection to an `exec` mux stream. */
  private upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const fail = (status: number, err: BerthError) => {
      const body = JSON.stringify({ error: err.toJSON() });
      socket.end(`HTTP/1.1 ${status} Error\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    };
    if (req.url !== '/v1/exec' || req.headers.upgrade !== 'berth-exec') {
      return fail(404, new BerthError('USAGE', 'Unknown upgrade request.'));
    }
    let exec: ExecRequest;
    try {
      exec = parseExecRequest(String(req.headers['x-berth-exec'] ?? ''));
    } catch (err) {
      return fail(400, toBerthError(err, 'USAGE'));
    }
    let session;
    try {
      session = this.vm.requireSession();
    } catch (err) {
      return fail(409, toBerthError(err));
    }
    socket.pause();
    session.openExec(exec).then(
      (stream) => {
        socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: berth-exec\r\nConnection: Upgrade\r\n\r\n');
        if (head.length > 0) stream.write(head);
        socket.pipe(stream);
        stream.pipe(socket);
        socket.on('error', () => stream.destroy());
        stream.on('error', (err) => {
          this.log.debug('exec stream error', { err: err.message });
          socket.destroy();
        });
        socket.resume();
      },
      (err) => fail(502, toBerthError(err, 'EXEC_FAILED')),
    );
  }
}

/** Validates the exec request header (base64 JSON). */
export function parseExecRequest(header: string): ExecRequest {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
  } catch {
    throw new BerthError('USAGE', 'The exec request header is not base64-encoded JSON.');
  }
  const r = raw as Partial<ExecRequest>;
  if (!Array.isArray(r.argv) || !r.argv.every((a) => typeof a === 'string') || typeof r.tty !== 'boolean') {
    throw new BerthError('USAGE', 'The exec request needs "argv" (array of strings) and "tty" (boolean).');
  }
  const out: ExecRequest = { argv: r.argv, tty: r.tty };
  if (r.env && typeof r.env === 'object') out.env = Object.fromEntries(Object.entries(r.env).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
  if (typeof r.cols === 'number') out.cols = r.cols;
  if (typeof r.rows === 'number') out.rows = r.rows;
  if (typeof r.cwd === 'string') out.cwd = r.cwd;
  return out;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
