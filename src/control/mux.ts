import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { BerthError } from '../util/errors.js';
import { silentLogger, type Logger } from '../util/log.js';
import { FrameDecoder, FrameType, HEADER_SIZE, MAX_DATA_PAYLOAD, encodeFrame, encodeJsonFrame, parseHello, PROTO_VERSION, type Frame } from './frame.js';
import { MuxStream, type StreamOwner } from './mux-stream.js';

/**
 * The multiplexer (docs/control.md). Runs over any byte pipe with write back-pressure.
 *
 * Events: 'session' (peer info: for the host, the guest's HELLO info), 'session-lost' (reason),
 * 'close' (the link is gone for good).
 */
export interface MuxLink {
  /** Writes bytes; false means: wait for 'drain' before writing more. */
  write(chunk: Buffer): boolean;
  on(event: 'data', cb: (chunk: Buffer) => void): unknown;
  on(event: 'drain', cb: () => void): unknown;
  on(event: 'close', cb: () => void): unknown;
  close(): void;
}

export type StreamHandler = (stream: MuxStream, meta: Record<string, unknown>) => void | Promise<void>;

export interface MuxOptions {
  role: 'host' | 'guest';
  log?: Logger;
  /** Guest only: what the HELLO reply carries (boot id, engine state...). */
  info?: () => Record<string, unknown>;
  /** Receive window per stream, bytes. */
  window?: number;
  maxStreams?: number;
  /** Host only: how often an unanswered HELLO is sent again. */
  helloIntervalMs?: number;
}

const DEFAULT_WINDOW = 256 * 1024;
const MAX_CHUNK = 32 * 1024;
/** Frames are coalesced into link writes of at most this size (each guest write is a syscall). */
const MAX_BATCH = 256 * 1024;
/** Zero bytes sent before a HELLO: longer than any frame, so a peer's half frame is completed. */
const PREAMBLE = MAX_DATA_PAYLOAD + HEADER_SIZE;
/** How long `open()` waits for OPEN_OK before giving up on a wedged peer. */
const OPEN_TIMEOUT_MS = 30_000;

interface PendingOpen {
  resolve(s: MuxStream): void;
  reject(e: Error): void;
  service: string;
  meta: Record<string, unknown>;
}

export class Mux extends EventEmitter implements StreamOwner {
  readonly role: 'host' | 'guest';
  private readonly log: Logger;
  private readonly window: number;
  private readonly maxStreams: number;
  private readonly helloIntervalMs: number;
  private readonly decoder = new FrameDecoder();
  private readonly streams = new Map<number, MuxStream>();
  private readonly opening = new Map<number, PendingOpen>();
  private readonly handlers = new Map<string, StreamHandler>();
  private readonly pings = new Map<string, { resolve(ms: number): void; at: number }>();
  private nextId: number;
  private session = '';
  private readonly recentSessions: string[] = [];
  private established = false;
  private helloTimer: NodeJS.Timeout | undefined;
  private control: Buffer[] = [];
  private active: MuxStream[] = [];
  private rr = 0;
  private blocked = false;
  private flushing = false;
  private closed = false;

  constructor(
    private readonly link: MuxLink,
    private readonly opts: MuxOptions,
  ) {
    super();
    this.role = opts.role;
    this.log = opts.log ?? silentLogger;
    this.window = opts.window ?? DEFAULT_WINDOW;
    this.maxStreams = opts.maxStreams ?? 1024;
    this.helloIntervalMs = opts.helloIntervalMs ?? 500;
    this.nextId = this.role === 'host' ? 1 : 2;
    link.on('data', (chunk: Buffer) => this.onData(chunk));
    link.on('drain', () => {
      this.blocked = false;
      this.flush();
    });
    link.on('close', () => this.shutdown('the link closed'));
    this.newSession();
  }

  get isEstablished(): boolean {
    return this.established;
  }

  get streamCount(): number {
    return this.streams.size + this.opening.size;
  }

  handle(service: string, handler: StreamHandler): void {
    this.handlers.set(service, handler);
  }

  /** Opens a stream to a service of the peer. */
  open(service: string, meta: Record<string, unknown> = {}): Promise<MuxStream> {
    if (this.closed) return Promise.reject(new BerthError('MUX_CLOSED', 'The control channel is closed.'));
    if (!this.established) return Promise.reject(new BerthError('MUX_CLOSED', 'No session with the peer yet.'));
    if (this.streamCount >= this.maxStreams) {
      return Promise.reject(new BerthError('MUX_OPEN_FAILED', `Too many open streams (${this.maxStreams}).`, { details: { code: 'TOO_MANY_STREAMS' } }));
    }
    const id = this.allocateId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.opening.delete(id)) {
          reject(new BerthError('MUX_OPEN_FAILED', `The peer did not answer a request to open ${service} within ${OPEN_TIMEOUT_MS / 1000} s.`, { details: { code: 'TIMEOUT' } }));
        }
      }, OPEN_TIMEOUT_MS);
      const done = <T>(f: (v: T) => void) => (v: T) => {
        clearTimeout(timer);
        f(v);
      };
      this.opening.set(id, { resolve: done(resolve), reject: done(reject), service, meta });
      this.sendControl(encodeJsonFrame(FrameType.Open, id, { service, meta, window: this.window }));
    });
  }

  /** Round trip to the peer and back, in milliseconds. */
  ping(timeoutMs = 5000): Promise<number> {
    const token = crypto.randomBytes(8);
    const key = token.toString('hex');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(key);
        reject(new BerthError('MUX_CLOSED', `The peer did not answer a ping within ${timeoutMs} ms.`));
      }, timeoutMs);
      this.pings.set(key, {
        at: performance.now(),
        resolve: (ms) => {
          clearTimeout(timer);
          resolve(ms);
        },
      });
      this.sendControl(encodeFrame(FrameType.Ping, 0, token));
    });
  }

  close(): void {
    if (this.closed) return;
    this.shutdown('closed locally');
    this.link.close();
  }

  // ---- sessions ----

  /**
   * Starts (or restarts) the handshake. The host picks a fresh session id; both sides send HELLO
   * every helloIntervalMs until the session is established. Before the first HELLO each side sends
   * a zero preamble one maximal frame long: if the peer's decoder holds half a frame from an earlier
   * connection, the zeros complete it, and zeros between frames are skipped as padding.
   */
  private newSession(): void {
    this.resetStreams('a new session started');
    this.established = false;
    if (this.role === 'host') {
      if (this.session) this.recentSessions.push(this.session);
      if (this.recentSessions.length > 16) this.recentSessions.shift();
      this.session = crypto.randomBytes(12).toString('hex');
    } else {
      this.session = '';
    }
    this.sendControl(Buffer.alloc(PREAMBLE));
    if (this.helloTimer) clearTimeout(this.helloTimer);
    const send = () => {
      if (this.closed || this.established) return;
      this.sendHello(this.session);
      this.helloTimer = setTimeout(send, this.helloIntervalMs);
    };
    send();
  }

  private sendHello(session: string): void {
    const hello: Record<string, unknown> = { proto: PROTO_VERSION, role: this.role, session };
    if (this.role === 'guest' && this.opts.info) hello.info = this.opts.info();
    this.sendControl(encodeJsonFrame(FrameType.Hello, 0, hello));
  }

  private establish(session: string, info: Record<string, unknown>): void {
    this.session = session;
    this.established = true;
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.log.info('session established', { session });
    this.emit('session', info);
  }

  private onHello(frame: Frame): void {
    const hello = parseHello(frame.payload);
    if (!hello) return this.protocolError('malformed HELLO');
    if (hello.role === this.role) return this.protocolError(`HELLO from a peer claiming our own role (${hello.role})`);
    if (this.role === 'guest') {
      if (hello.session === '') return this.protocolError('host HELLO without a session');
      if (this.established && hello.session === this.session) {
        // A re-sent HELLO that crossed our answer: answer again, keep the streams.
        this.sendHello(this.session);
        return;
      }
      this.resetStreams('the host started a new session');
      this.establish(hello.session, {});
      this.sendHello(this.session);
      return;
    }
    // Host.
    if (hello.session === this.session) {
      if (!this.established) this.establish(this.session, hello.info ?? {});
      return;
    }
    if (this.recentSessions.includes(hello.session)) return; // a late answer to an older HELLO
    if (!this.established) return; // our HELLO is being re-sent; the guest will answer it
    // An established guest announcing itself afresh has restarted (or lost sync).
    this.log.info('the guest agent restarted; starting a new session');
    this.emit('session-lost', 'the guest agent restarted');
    this.newSession();
  }

  /**
   * Guest: the host detached from the port (the daemon exited). Its streams are dead, and the next
   * host may start writing while our decoder still holds half a frame: drop both, wait for HELLO.
   */
  peerDisconnected(): void {
    if (this.closed) return;
    this.decoder.reset();
    if (this.established) this.emit('session-lost', 'the peer disconnected');
    this.newSession();
  }

  private protocolError(reason: string): void {
    this.log.warn('mux protocol error; resynchronising', { reason });
    this.decoder.startHunt();
    if (this.established) this.emit('session-lost', reason);
    // The guest's HELLO with an empty session makes an established host start a new session.
    this.newSession();
  }

  private resetStreams(reason: string): void {
    for (const [, p] of this.opening) p.reject(new BerthError('MUX_CLOSED', `The control channel was reset: ${reason}.`));
    this.opening.clear();
    for (const s of [...this.streams.values()]) s.onSessionClosed(reason);
    this.streams.clear();
    this.active = [];
    this.control = [];
  }

  private shutdown(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.resetStreams(reason);
    this.established = false;
    this.emit('close');
  }

  // ---- inbound ----

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    for (const r of this.decoder.push(chunk)) {
      if (r.kind === 'error') {
        this.protocolError(r.reason);
        continue;
      }
      try {
        this.onFrame(r.frame);
      } catch (err) {
        // A bug in a handler must not take the channel down.
        this.log.error('error while handling a frame', { err: (err as Error).stack ?? String(err) });
      }
    }
  }

  private onFrame(f: Frame): void {
    switch (f.type) {
      case FrameType.Hello:
        return this.onHello(f);
      case FrameType.Ping:
        return this.sendControl(encodeFrame(FrameType.Pong, 0, f.payload));
      case FrameType.Pong: {
        const p = this.pings.get(f.payload.toString('hex'));
        if (p) {
          this.pings.delete(f.payload.toString('hex'));
          p.resolve(performance.now() - p.at);
        }
        return;
      }
      default:
        break;
    }
    if (!this.established) return; // stream frames from a dead session
    switch (f.type) {
      case FrameType.Open:
        return this.onOpen(f);
      case FrameType.OpenOk:
      case FrameType.OpenFail:
        return this.onOpenReply(f);
      case FrameType.Data: {
        const s = this.streams.get(f.stream);
        if (!s) return;
        if (!s.onData(f.payload)) {
          this.log.warn('peer sent beyond its credit; resetting the stream', { stream: f.stream });
          this.sendControl(encodeJsonFrame(FrameType.Reset, f.stream, { code: 'FLOW_CONTROL', message: 'data beyond the receive window' }));
          this.streams.delete(f.stream);
          s.onReset('FLOW_CONTROL', 'the peer sent data beyond the receive window');
        }
        return;
      }
      case FrameType.Window: {
        const s = this.streams.get(f.stream);
        if (s && f.payload.length === 4) s.onWindow(f.payload.readUInt32BE(0));
        return;
      }
      case FrameType.Fin:
        this.streams.get(f.stream)?.onFin();
        return;
      case FrameType.Reset: {
        const s = this.streams.get(f.stream);
        if (!s) return;
        this.streams.delete(f.stream);
        const { code, message } = parseReason(f.payload);
        s.onReset(code, message);
        return;
      }
      default:
        return;
    }
  }

  private onOpen(f: Frame): void {
    const fail = (code: string, message: string) => this.sendControl(encodeJsonFrame(FrameType.OpenFail, f.stream, { code, message }));
    const peerParity = this.role === 'host' ? 0 : 1;
    if (f.stream % 2 !== peerParity || this.streams.has(f.stream)) return fail('BAD_STREAM_ID', `stream id ${f.stream} is not valid for the peer`);
    let req: { service?: unknown; meta?: unknown; window?: unknown };
    try {
      req = JSON.parse(f.payload.toString('utf8')) as typeof req;
    } catch {
      return fail('BAD_REQUEST', 'OPEN payload is not JSON');
    }
    const service = typeof req.service === 'string' ? req.service : '';
    const meta = req.meta && typeof req.meta === 'object' && !Array.isArray(req.meta) ? (req.meta as Record<string, unknown>) : {};
    const peerWindow = typeof req.window === 'number' && req.window > 0 && req.window <= 2 ** 30 ? req.window : DEFAULT_WINDOW;
    const handler = this.handlers.get(service);
    if (!handler) return fail('NO_SUCH_SERVICE', `no service named ${JSON.stringify(service.slice(0, 64))}`);
    if (this.streamCount >= this.maxStreams) return fail('TOO_MANY_STREAMS', `at most ${this.maxStreams} streams`);
    const stream = new MuxStream(this, f.stream, service, meta, this.window, peerWindow);
    this.streams.set(f.stream, stream);
    this.sendControl(encodeJsonFrame(FrameType.OpenOk, f.stream, { window: this.window }));
    // A handler that fails resets the stream (the peer sees its message); it never throws here.
    let result: void | Promise<void>;
    try {
      result = handler(stream, meta);
    } catch (err) {
      stream.fail(err as Error);
      return;
    }
    if (result && typeof result.catch === 'function') result.catch((err: Error) => stream.fail(err));
  }

  private onOpenReply(f: Frame): void {
    const p = this.opening.get(f.stream);
    if (!p) return;
    this.opening.delete(f.stream);
    if (f.type === FrameType.OpenFail) {
      const { code, message } = parseReason(f.payload);
      p.reject(new BerthError('MUX_OPEN_FAILED', `The peer refused to open ${p.service}: ${message}`, { details: { code } }));
      return;
    }
    let window = DEFAULT_WINDOW;
    try {
      const w = (JSON.parse(f.payload.toString('utf8')) as { window?: unknown }).window;
      if (typeof w === 'number' && w > 0 && w <= 2 ** 30) window = w;
    } catch {
      // keep the default
    }
    const stream = new MuxStream(this, f.stream, p.service, p.meta, this.window, window);
    this.streams.set(f.stream, stream);
    p.resolve(stream);
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId += 2;
      if (this.nextId > 0x7fffffff) this.nextId = this.role === 'host' ? 1 : 2;
      if (!this.streams.has(id) && !this.opening.has(id)) return id;
    }
  }

  // ---- StreamOwner ----

  wake(stream: MuxStream): void {
    if (!this.streams.has(stream.id)) return;
    if (!this.active.includes(stream)) this.active.push(stream);
    this.flush();
  }

  sendWindow(stream: MuxStream, increment: number): void {
    if (!this.streams.has(stream.id)) return;
    const b = Buffer.alloc(4);
    b.writeUInt32BE(increment >>> 0, 0);
    this.sendControl(encodeFrame(FrameType.Window, stream.id, b));
  }

  release(stream: MuxStream, reset: { code: string; message: string } | undefined): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    this.active = this.active.filter((s) => s !== stream);
    if (reset && !this.closed && this.established) this.sendControl(encodeJsonFrame(FrameType.Reset, stream.id, reset));
  }

  // ---- outbound scheduling ----

  private sendControl(frame: Buffer): void {
    if (this.closed) return;
    this.control.push(frame);
    this.flush();
  }

  /**
   * Writes control frames first, then one DATA chunk per stream in round-robin order, coalesced
   * into link writes of at most MAX_BATCH bytes, while the link accepts them.
   */
  private flush(): void {
    if (this.flushing || this.closed) return;
    this.flushing = true;
    try {
      while (!this.blocked) {
        const batch: Buffer[] = [];
        let size = 0;
        while (this.control.length > 0 && size < MAX_BATCH) {
          const f = this.control.shift()!;
          batch.push(f);
          size += f.length;
        }
        let progress = true;
        while (size < MAX_BATCH && progress) {
          progress = false;
          for (let n = this.active.length; n > 0 && size < MAX_BATCH; n--) {
            if (this.rr >= this.active.length) this.rr = 0;
            const s = this.active[this.rr]!;
            if (s.sendable) {
              const chunk = s.takeChunk(MAX_CHUNK);
              const frame = encodeFrame(FrameType.Data, s.id, chunk);
              batch.push(frame);
              size += frame.length;
              progress = true;
            }
            if (s.finDue) {
              batch.push(encodeFrame(FrameType.Fin, s.id));
              size += 12;
              s.markFinSent();
            }
            // A stream without credit leaves the rotation; WINDOW brings it back through wake().
            if (!s.sendable) this.active.splice(this.rr, 1);
            else this.rr++;
          }
        }
        if (batch.length === 0) break;
        const buf = batch.length === 1 ? batch[0]! : Buffer.concat(batch, size);
        if (!this.link.write(buf)) this.blocked = true;
      }
    } finally {
      this.flushing = false;
    }
  }
}

function parseReason(payload: Buffer): { code: string; message: string } {
  try {
    const o = JSON.parse(payload.toString('utf8')) as { code?: unknown; message?: unknown };
    return { code: typeof o.code === 'string' ? o.code.slice(0, 64) : 'UNKNOWN', message: typeof o.message === 'string' ? o.message.slice(0, 1024) : '' };
  } catch {
    return { code: 'UNKNOWN', message: '' };
  }
}
