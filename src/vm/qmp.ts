import net from 'node:net';
import { EventEmitter } from 'node:events';
import { BerthError } from '../util/errors.js';

/**
 * A QEMU Machine Protocol client over a Unix socket.
 *
 * Contract: `connect()` resolves after the greeting and `qmp_capabilities`; `execute()` matches
 * replies by `id`; events are emitted as 'event' ({event, data, timestamp}); 'close' is emitted once
 * when the connection ends for any reason (for a QEMU we launched, that means QEMU is gone or going).
 * Replies are newline-delimited JSON (QMP spec, docs/interop/qmp-spec.rst); a line longer than
 * MAX_LINE is treated as a protocol error and closes the client rather than buffering without bound.
 */
const MAX_LINE = 4 * 1024 * 1024;

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  command: string;
  timer: NodeJS.Timeout;
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  version: { qemu: { major: number; minor: number; micro: number } } | undefined;

  private constructor(private readonly socket: net.Socket) {
    super();
  }

  /** Connects and negotiates capabilities. Rejects with QMP_FAILED if QEMU does not answer in time. */
  static connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      const client = new QmpClient(socket);
      const fail = (err: unknown) => {
        clearTimeout(timer);
        socket.destroy();
        reject(
          err instanceof BerthError
            ? err
            : new BerthError('QMP_FAILED', `Cannot talk to QEMU's QMP socket ${path}.`, { cause: err }),
        );
      };
      const timer = setTimeout(() => fail(new BerthError('QMP_FAILED', `QEMU's QMP socket ${path} did not greet within ${timeoutMs} ms.`)), timeoutMs);
      socket.once('error', fail);
      client.once('greeting', (greeting: { QMP?: { version?: QmpClient['version'] } }) => {
        client.version = greeting.QMP?.version;
        client
          .execute('qmp_capabilities')
          .then(() => {
            clearTimeout(timer);
            socket.off('error', fail);
            socket.on('error', () => client.shutdown());
            resolve(client);
          })
          .catch(fail);
      });
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => client.onData(chunk));
      socket.on('close', () => client.shutdown());
    });
  }

  /** Runs a QMP command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.closed) return Promise.reject(new BerthError('QMP_FAILED', `QMP connection is closed; cannot run ${command}.`));
    const id = `b${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BerthError('QMP_FAILED', `QEMU did not answer ${command} within ${timeoutMs} ms.`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command, timer });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.socket.end();
    this.shutdown();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    if (this.buf.length > MAX_LINE) {
      this.socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QEMU never sends invalid JSON; ignore rather than crash.
    }
    if ('QMP' in msg) {
      this.emit('greeting', msg);
      return;
    }
    if (typeof msg.event === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p || !id) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new BerthError('QMP_FAILED', `QEMU refused ${p.command}: ${e.desc ?? 'unknown error'} (${e.class ?? '?'}).`));
    } else {
      p.resolve(msg.return);
    }
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new BerthError('QMP_FAILED', `QMP connection closed before QEMU answered ${p.command}.`));
      this.pending.delete(id);
    }
    this.emit('close');
  }
}
