import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../util/log.js';
import { listenUnix } from '../util/unix-socket.js';
import { toBerthError } from '../util/errors.js';
import { BodyReader, encodeChunk, list, parseRequestHead, parseResponseHead, requestFraming, responseFraming, single, type BodyFraming, type RequestHead } from './http1.js';
import { bytesToText, formatTarget, parseTarget } from './target.js';
import { compareVersions, matchRoute, MIN_API_VERSION, pathVersion, routePath, type RouteMatch } from './routes.js';
import { decideJsonBody, type BodyDecision, type Decider } from './decide.js';
import { PluginArchiveCheck } from './plugin-tar.js';
import type { MountPolicy } from './mount-policy.js';
import type { StreamOpener } from './engine-client.js';
import { platformRefusal } from './host-kernel-policy.js';

/** A request that runs something in a container: a container start or restart, or an exec start. */
export interface HeldRun {
  kind: 'start' | 'exec';
  /** The container id or name (start), or the exec id (exec), as the client sent it. */
  id: string;
}

/**
 * Called before a container or an exec starts; the request is held until it settles. It may
 * refuse the start (`{ refuse: message }`); a rejection (an error) does not block the request.
 */
export type BeforeRun = (run: HeldRun) => Promise<void | { refuse: string }>;

export interface ProxyOptions {
  socketPath: string;
  open: StreamOpener;
  log: Logger;
  policy: () => MountPolicy;
  beforeRun?: BeforeRun;
  /** Tests lower these. */
  limits?: Partial<Limits>;
}

export interface Limits {
  /** Client connections at once (the mux allows 1024 streams; the rest stay for berth). */
  connections: number;
  /** A body the proxy decides on is held in memory up to this size... */
  decidedBody: number;
  /** ...and up to this much for all connections together. */
  decidedTotal: number;
}

export const LIMITS: Limits = { connections: 512, decidedBody: 16 * 1024 * 1024, decidedTotal: 64 * 1024 * 1024 };

/** How long a start waits for BeforeRun at most. */
const BEFORE_RUN_TIMEOUT_MS = 20_000;
/** A started head must be complete within this time. */
const HEAD_TIMEOUT_MS = 60_000;
/** Client bytes held while a request waits (a hook, a hijack answer) before reading pauses. */
const MAX_HELD = 1024 * 1024;
/** The end of a plugin archive held back until its config.json is checked. */
const ARCHIVE_HELD = 1024;
/** How long a refused or failed connection counts towards `degraded`. */
const DEGRADED_WINDOW_MS = 30_000;

export interface ApiHealth {
  state: 'ok' | 'degraded';
  reason?: string;
  connections: number;
}

/** Hop-by-hop and framing fields: the proxy writes its own. */
const DROPPED_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'content-length', 'expect', 'upgrade']);

/**
 * The host's Docker API socket (docs/docker-proxy.md): one mux stream to the guest's dockerd per
 * client connection. Every request is parsed (http1.ts), routed as dockerd routes it (target.ts,
 * routes.ts), its body decided on (decide.ts) and sent on **rebuilt**: the canonical target, the
 * client's end-to-end headers, and a body framed by the proxy (serialized from the checked value
 * where the body can name a path). Responses are copied unchanged, parsed only for where each one
 * ends, so refusals keep their place among pipelined answers and a hijack (attach, exec, BuildKit
 * session) is recognised: after it both directions are raw bytes.
 */
export class DockerProxy {
  private readonly server: net.Server;
  private readonly conns = new Set<ClientConnection>();
  /** Bytes of decided bodies held by all connections. */
  buffered = 0;
  private trouble: { at: number; reason: string } | undefined;
  readonly limits: Limits;

  constructor(readonly o: ProxyOptions) {
    this.limits = { ...LIMITS, ...o.limits };
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.onConnection(c));
  }

  get socketPath(): string {
    return this.o.socketPath;
  }

  async listen(): Promise<void> {
    await listenUnix(this.server, this.o.socketPath, 'Docker API socket');
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  health(): ApiHealth {
    const t = this.trouble;
    if (t && Date.now() - t.at < DEGRADED_WINDOW_MS) return { state: 'degraded', reason: t.reason, connections: this.conns.size };
    return { state: 'ok', connections: this.conns.size };
  }

  /** Something made the API fail a client; `berth status` shows it for a while. */
  noteTrouble(reason: string): void {
    this.trouble = { at: Date.now(), reason };
  }

  /** Stops accepting and drops every open connection. */
  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private onConnection(client: net.Socket): void {
    client.on('error', () => {});
    if (this.conns.size >= this.limits.connections) {
      const reason = `more than ${this.limits.connections} Docker API connections are open at once`;
      this.noteTrouble(reason);
      this.o.log.warn('Docker API connection refused', { reason });
      turnAway(client, errorResponse(503, `berth: ${reason}; close some (a client that leaks connections?) and try again.`));
      return;
    }
    const conn = new ClientConnection(this, client);
    this.conns.add(conn);
    client.once('close', () => this.conns.delete(conn));
    this.o.open().then(
      (engine) => {
        // A client that left while its stream was being opened (abandoned it) is gone already.
        if (client.destroyed) {
          engine.destroy();
          return;
        }
        conn.attach(engine);
      },
      (err) => {
        const e = toBerthError(err);
        const reason = `the Docker engine in the VM is not reachable: ${e.message}`;
        if (/streams|did not answer/.test(e.message)) this.noteTrouble(reason);
        turnAway(client, errorResponse(503, `berth: ${reason}${e.hint ? ` ${e.hint}` : ''}`));
      },
    );
  }
}

/** Answers a connection that will not be served and ends it; what the client sends is read and dropped. */
function turnAway(client: net.Socket, response: string): void {
  client.end(response);
  client.resume();
}

export function errorResponse(status: number, message: string): string {
  const body = JSON.stringify({ message });
  const reason = { 400: 'Bad Request', 404: 'Not Found', 413: 'Payload Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable' }[status] ?? 'Error';
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** What a request does with its body on the way to dockerd. */
type Plan =
  | { kind: 'drop' }
  | { kind: 'decide'; decide: Decider; parts: Buffer[]; size: number }
  | { kind: 'stream'; framing: BodyFraming; archive?: PluginArchiveCheck; tail: Buffer[]; tailSize: number };

interface Pending {
  method: string;
  /** The connection may become raw after this request's response. */
  mayHijack: boolean;
}

/** One client connection and its engine stream. */
class ClientConnection {
  private engine: Duplex | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private up: 'head' | 'body' | 'held' | 'await-response' | 'raw' | 'closed' = 'head';
  private reader: BodyReader | undefined;
  private plan: Plan | undefined;
  private req: { head: RequestHead; match: RouteMatch | undefined; canonical: string; mayHijack: boolean } | undefined;
  private headTimer: NodeJS.Timeout | undefined;
  /** Requests sent whose responses are not complete, oldest first. */
  private readonly pending: Pending[] = [];
  private refusal: string | undefined;
  private down: 'head' | 'body' | 'raw' = 'head';
  private downBuf: Buffer = Buffer.alloc(0);
  private downReader: BodyReader | undefined;
  private clientEnded = false;
  private engineEnded = false;
  private waitingEngineDrain = false;
  private waitingClientDrain = false;
  private heldBytes = 0;

  /** What the client sent before its engine stream was open. */
  private early: Buffer[] = [];
  private earlySize = 0;

  /**
   * The client is read at once, before its engine stream is open (that takes a round trip to
   * the VM), so a client that leaves in the middle of a request is let go of at once too.
   */
  constructor(
    private readonly proxy: DockerProxy,
    private readonly client: net.Socket,
  ) {
    client.on('data', (d: Buffer) => {
      if (this.engine) return this.fromClient(d);
      this.early.push(d);
      this.earlySize += d.length;
      if (this.earlySize > MAX_HELD) client.pause();
    });
    client.on('end', () => {
      if (this.engine) return this.onClientEnd();
      this.clientEnded = true;
      if (!endsAtRequestBoundary(Buffer.concat(this.early))) client.destroy();
    });
    client.resume();
  }

  private get log(): Logger {
    return this.proxy.o.log;
  }

  attach(engine: Duplex): void {
    this.engine = engine;
    const client = this.client;
    engine.on('error', (err) => {
      this.log.debug('docker stream error', { err: err.message });
      client.destroy();
    });
    engine.on('data', (d: Buffer) => this.fromEngine(d));
    engine.on('end', () => this.onEngineEnd());
    engine.on('close', () => {
      if (!this.engineEnded) client.destroy();
    });
    client.on('close', () => {
      this.release();
      if (!engine.destroyed) engine.destroy();
    });
    this.armHeadTimer();
    const early = Buffer.concat(this.early);
    this.early = [];
    if (early.length) this.fromClient(early);
    if (this.clientEnded) this.onClientEnd();
    if (!this.waitingEngineDrain && this.up !== 'held' && this.up !== 'await-response') client.resume();
  }

  destroy(): void {
    this.client.destroy();
    this.engine?.destroy();
  }

  // ---- client → engine ----

  private fromClient(d: Buffer): void {
    if (this.up === 'raw') return this.toEngine(d);
    if (this.up === 'closed') return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    this.process();
  }

  private process(): void {
    while (this.buf.length > 0) {
      if (this.up === 'raw') {
        const b = this.buf;
        this.buf = Buffer.alloc(0);
        this.toEngine(b);
        return;
      }
      if (this.up === 'held' || this.up === 'await-response') {
        if (this.buf.length > MAX_HELD) this.client.pause();
        return;
      }
      if (this.up === 'closed') {
        this.buf = Buffer.alloc(0);
        return;
      }
      if (this.up === 'head' && !this.onHead()) return;
      if (this.up === 'body') this.onBody();
    }
  }

  /** Parses one request head and plans its body; false when more bytes are needed. */
  private onHead(): boolean {
    const r = parseRequestHead(this.buf);
    if (r.kind === 'incomplete') {
      if (this.clientEnded) this.onClientEnd();
      return false;
    }
    this.clearHeadTimer();
    if (r.kind === 'error') return this.refuse(400, `berth: malformed request to the Docker API: ${r.reason}.`);
    const head = r.head;
    this.buf = this.buf.subarray(r.used);
    const framing = requestFraming(head);
    if (framing.kind === 'error') return this.refuse(400, `berth: malformed request to the Docker API: ${framing.reason}.`);
    const t = parseTarget(head.target);
    if (!t.ok) return this.refuse(400, `berth: malformed request to the Docker API: ${t.reason}.`);
    const match = matchRoute(head.method, t.target.path);
    const version = match?.version ?? pathVersion(t.target.path);
    if (version !== undefined && compareVersions(version, MIN_API_VERSION) < 0) {
      return this.refuse(400, `berth: Docker API version ${version} is older than ${MIN_API_VERSION}, the oldest berth accepts (older ones let a container start change its mounts). Use a newer docker client.`);
    }
    if (match?.route.refuse) return this.refuse(400, `berth: ${head.method} ${bytesToText(t.target.path)} is refused: ${match.route.refuse}.`);
    // Another architecture cannot run on the host's kernel (namespace backend; host-kernel-policy.ts).
    if (match && (match.route.body === 'container-create' || match.route.path === '/build') && this.proxy.o.policy().hostKernel) {
      const refusal = platformRefusal(t.target.query);
      if (refusal) return this.refuse(400, refusal);
    }
    const kind = match?.route.body ?? (framing.kind === 'none' ? 'none' : undefined);
    if (kind === undefined) {
      return this.refuse(400, `berth: ${head.method} ${bytesToText(t.target.path)} with a body is not an endpoint berth knows; it is refused because only known endpoints may carry a body.`);
    }
    const path = match ? routePath(match) : t.target.path;
    const upgrade = head.headers.some(([n]) => n === 'upgrade');
    const mayHijack = (match?.route.hijack ?? false) || upgrade;
    this.req = { head, match, canonical: formatTarget(path, t.target.query), mayHijack };
    const decide = kind === 'none' || kind === 'stream' || kind === 'plugin-archive' ? undefined : decideJsonBody(kind);
    // dockerd never sees Expect (the proxy reads every body first), so the proxy answers it,
    // unless an earlier response is still on its way (the interim answer would cut into it).
    if (framing.kind !== 'none' && this.pending.length === 0 && /100-continue/i.test(single(head.headers, 'expect') ?? '')) this.client.write('HTTP/1.1 100 Continue\r\n\r\n');
    if (decide) {
      this.plan = { kind: 'decide', decide, parts: [], size: 0 };
    } else if (kind === 'stream' || kind === 'plugin-archive') {
      if (framing.kind === 'none') {
        this.plan = { kind: 'drop' };
      } else {
        const archive = kind === 'plugin-archive' ? new PluginArchiveCheck() : undefined;
        this.plan = { kind: 'stream', framing, tail: [], tailSize: 0, ...(archive ? { archive } : {}) };
        // An archive is sent chunked: its length is not known until the proxy decides to finish it.
        this.sendHead(framing.kind === 'length' && !archive ? { length: framing.length } : 'chunked');
      }
    } else {
      this.plan = { kind: 'drop' };
    }
    this.reader = new BodyReader(framing, (b) => this.onBodyData(b));
    this.up = 'body';
    if (this.reader.done) this.onBodyDone();
    return true;
  }

  private onBody(): void {
    const reader = this.reader!;
    const n = reader.push(this.buf);
    this.buf = this.buf.subarray(n);
    if (reader.error) {
      this.refuse(400, `berth: malformed request body: ${reader.error}.`);
      return;
    }
    if (this.up !== 'body') return; // refused while reading
    if (reader.done) this.onBodyDone();
  }

  private onBodyData(b: Buffer): void {
    const plan = this.plan;
    if (!plan || plan.kind === 'drop') return;
    if (plan.kind === 'decide') {
      plan.size += b.length;
      this.proxy.buffered += b.length;
      this.heldBytes += b.length;
      const { decidedBody, decidedTotal } = this.proxy.limits;
      if (plan.size > decidedBody) {
        this.refuse(413, `berth: a request body larger than ${decidedBody} bytes on ${this.req!.head.method} ${this.req!.canonical}.`);
        return;
      }
      if (this.proxy.buffered > decidedTotal) {
        this.proxy.noteTrouble('request bodies waiting for a decision exceed their memory limit');
        this.refuse(503, `berth: too many large requests are waiting at once (more than ${decidedTotal} bytes); try again.`);
        return;
      }
      plan.parts.push(Buffer.from(b));
      return;
    }
    if (!plan.archive) {
      this.toEngine(plan.framing.kind === 'chunked' ? encodeChunk(b) : b);
      return;
    }
    // A plugin archive: dockerd gets all but its last KiB while it streams; the rest only once
    // its config.json has been checked, so a refused archive never reaches dockerd whole.
    const err = plan.archive.push(b);
    if (err) {
      this.abortRequest(400, `berth: the plugin archive cannot be used: ${err}.`);
      return;
    }
    plan.tail.push(Buffer.from(b));
    plan.tailSize += b.length;
    if (plan.tailSize > 2 * ARCHIVE_HELD) {
      const all = Buffer.concat(plan.tail);
      const cut = all.length - ARCHIVE_HELD;
      this.toEngine(encodeChunk(all.subarray(0, cut)));
      plan.tail = [all.subarray(cut)];
      plan.tailSize = ARCHIVE_HELD;
    }
  }

  private onBodyDone(): void {
    const plan = this.plan!;
    const req = this.req!;
    this.reader = undefined;
    this.plan = undefined;
    if (plan.kind === 'drop') {
      this.hold(() => this.sendHead(undefined));
      return;
    }
    if (plan.kind === 'stream') {
      if (!plan.archive) {
        if (plan.framing.kind === 'chunked') this.toEngine(encodeChunk(Buffer.alloc(0)));
        this.afterRequest();
        return;
      }
      const verdict = plan.archive.finish(this.proxy.o.policy());
      if (!verdict.ok) {
        this.abortRequest(400, `berth: the plugin archive cannot be used: ${verdict.reason}.`);
        return;
      }
      this.toEngine(Buffer.concat([encodeChunk(Buffer.concat(plan.tail)), encodeChunk(Buffer.alloc(0))]));
      this.afterRequest();
      return;
    }
    const body = Buffer.concat(plan.parts, plan.size);
    this.up = 'held';
    void plan
      .decide({ body, match: req.match!, policy: this.proxy.o.policy(), open: this.proxy.o.open })
      .catch((err: Error): BodyDecision => ({ ok: false, status: 500, message: `berth: could not check the request: ${err.message}` }))
      .then((d) => {
        // What a refusal meanwhile (the client left) has not already given back.
        const freed = Math.min(this.heldBytes, plan.size);
        this.proxy.buffered -= freed;
        this.heldBytes -= freed;
        if (this.up !== 'held') return;
        if (!d.ok) {
          if (d.status === 400) this.log.warn('docker request refused', { request: `${req.head.method} ${req.canonical}`, why: d.message });
          this.refuse(d.status, d.message);
          return;
        }
        this.hold(() => this.sendHead({ length: d.body.length }, d.body));
      });
  }

  /** Runs the before-run hook for starts, then sends the request. */
  private hold(send: () => void): void {
    const req = this.req!;
    const run = runOf(req.match);
    const hook = this.proxy.o.beforeRun;
    if (!run || !hook) {
      send();
      this.afterRequest();
      if (this.up !== 'held') this.resumeClient();
      return;
    }
    this.up = 'held';
    const timeout = new Promise<void>((r) => setTimeout(r, BEFORE_RUN_TIMEOUT_MS).unref());
    void Promise.race([hook(run).catch(() => undefined), timeout]).then((verdict) => {
      if (this.up !== 'held') return;
      if (verdict && 'refuse' in verdict) {
        this.refuse(400, verdict.refuse);
        return;
      }
      send();
      this.afterRequest();
      this.resumeClient();
      this.process();
    });
  }

  private resumeClient(): void {
    if (!this.waitingEngineDrain && this.up !== 'closed') this.client.resume();
  }

  /**
   * Writes the rebuilt head (and a decided body in the same write, so dockerd reads them
   * together). `framing`: a length, 'chunked', or undefined for no body.
   */
  private sendHead(framing: { length: number } | 'chunked' | undefined, body?: Buffer): void {
    const req = this.req!;
    const h = req.head;
    const lines = [`${h.method} ${req.canonical} HTTP/${h.version}`];
    for (const [name, value] of h.headers) {
      if (DROPPED_HEADERS.has(name)) continue;
      lines.push(`${name}: ${value}`);
    }
    const upgrade = single(h.headers, 'upgrade');
    if (req.mayHijack && upgrade) lines.push(`upgrade: ${upgrade}`, 'connection: Upgrade');
    else if (list(h.headers, 'connection').some((c) => c.toLowerCase() === 'close')) lines.push('connection: close');
    if (framing === 'chunked') lines.push('transfer-encoding: chunked');
    else if (framing !== undefined) lines.push(`content-length: ${framing.length}`);
    const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    this.pending.push({ method: h.method, mayHijack: req.mayHijack });
    this.toEngine(body && body.length ? Buffer.concat([head, body]) : head);
  }

  /** The request is out: next comes a head, or (after a possible hijack) the engine's answer. */
  private afterRequest(): void {
    const req = this.req!;
    this.req = undefined;
    if (req.mayHijack) this.up = 'await-response';
    else {
      this.up = 'head';
      this.armHeadTimer();
    }
    this.maybeEndUp();
  }

  /**
   * Answers the client itself and ends the connection, after every earlier response has been
   * delivered. The request never reaches dockerd.
   */
  private refuse(status: number, message: string): false {
    this.clearHeadTimer();
    this.releaseBody();
    this.up = 'closed';
    this.buf = Buffer.alloc(0);
    this.refusal = errorResponse(status, message);
    this.maybeFlushRefusal();
    return false;
  }

  /** A streamed request turned out bad midway: dockerd must not get the rest, so its stream is reset. */
  private abortRequest(status: number, message: string): void {
    this.releaseBody();
    this.up = 'closed';
    this.buf = Buffer.alloc(0);
    this.engine?.destroy();
    this.client.end(errorResponse(status, message));
  }

  private maybeFlushRefusal(): void {
    if (this.refusal === undefined || this.pending.length > 0) return;
    const r = this.refusal;
    this.refusal = undefined;
    this.client.end(r);
    if (this.engine && !this.engine.writableEnded) this.engine.end();
  }

  private releaseBody(): void {
    if (this.heldBytes > 0) {
      this.proxy.buffered -= this.heldBytes;
      this.heldBytes = 0;
    }
    this.plan = undefined;
    this.reader = undefined;
  }

  private release(): void {
    this.clearHeadTimer();
    this.releaseBody();
  }

  private toEngine(b: Buffer): void {
    const engine = this.engine!;
    if (b.length === 0 || engine.writableEnded || engine.destroyed) return;
    if (!engine.write(b) && !this.waitingEngineDrain) {
      this.waitingEngineDrain = true;
      this.client.pause();
      engine.once('drain', () => {
        this.waitingEngineDrain = false;
        if (this.up !== 'held' && this.up !== 'await-response') this.client.resume();
      });
    }
  }

  private armHeadTimer(): void {
    this.clearHeadTimer();
    this.headTimer = setTimeout(() => {
      // Only a head that has started is timed: an idle keep-alive connection may wait.
      if (this.up === 'head' && this.buf.length > 0) this.refuse(400, `berth: the request head did not arrive within ${HEAD_TIMEOUT_MS / 1000} s.`);
      else if (this.up === 'head') this.armHeadTimer();
    }, HEAD_TIMEOUT_MS);
    this.headTimer.unref();
  }

  private clearHeadTimer(): void {
    if (this.headTimer) clearTimeout(this.headTimer);
    this.headTimer = undefined;
  }

  private onClientEnd(): void {
    this.clientEnded = true;
    const midRequest = this.up === 'body' || (this.up === 'head' && this.buf.length > 0);
    if (!midRequest) {
      this.maybeEndUp();
      return;
    }
    // The client gave up in the middle of a request: nothing more will come, so dockerd must
    // not wait for it (its stream is reset) and the connection ends now.
    this.releaseBody();
    this.up = 'closed';
    this.engine?.destroy();
    this.client.destroy();
  }

  /** The client half-closed between requests (or in a raw stream): pass it on. */
  private maybeEndUp(): void {
    const engine = this.engine;
    if (!this.clientEnded || !engine || engine.writableEnded) return;
    if (this.up === 'raw' || (this.buf.length === 0 && (this.up === 'head' || this.up === 'await-response'))) engine.end();
  }

  // ---- engine → client ----

  private toClient(b: Buffer): void {
    if (b.length === 0 || this.client.destroyed) return;
    if (!this.client.write(b) && !this.waitingClientDrain) {
      this.waitingClientDrain = true;
      this.engine!.pause();
      this.client.once('drain', () => {
        this.waitingClientDrain = false;
        this.engine!.resume();
      });
    }
  }

  private fromEngine(d: Buffer): void {
    if (this.down === 'raw') return this.toClient(d);
    // A response's head and body usually come in one chunk: one write to the client for both.
    this.client.cork();
    try {
      this.parseEngine(d);
    } finally {
      this.client.uncork();
    }
  }

  private parseEngine(d: Buffer): void {
    this.downBuf = this.downBuf.length ? Buffer.concat([this.downBuf, d]) : d;
    while (this.downBuf.length > 0) {
      if (this.down === 'body') {
        const n = this.downReader!.push(this.downBuf);
        this.toClient(this.downBuf.subarray(0, n));
        this.downBuf = this.downBuf.subarray(n);
        if (this.downReader!.error) return this.engineGarbage(this.downReader!.error);
        if (this.downReader!.done) this.responseDone();
        continue;
      }
      const r = parseResponseHead(this.downBuf);
      if (r.kind === 'incomplete') return;
      if (r.kind === 'error') return this.engineGarbage(r.reason);
      const req = this.pending[0];
      if (!req) return this.engineGarbage('a response to no request');
      const headBytes = this.downBuf.subarray(0, r.used);
      this.downBuf = this.downBuf.subarray(r.used);
      const status = r.head.status;
      const ct = single(r.head.headers, 'content-type') ?? '';
      const hijacked = req.mayHijack && (status === 101 || (status === 200 && /application\/vnd\.docker\.(raw|multiplexed)-stream/.test(ct ?? '')));
      this.toClient(headBytes);
      if (hijacked) {
        this.down = 'raw';
        this.pending.shift();
        const rest = this.downBuf;
        this.downBuf = Buffer.alloc(0);
        this.toClient(rest);
        this.goRaw();
        return;
      }
      if (status >= 100 && status < 200) continue; // an interim answer (100 Continue)
      const framing = responseFraming(r.head, req.method);
      if (framing.kind === 'error') return this.engineGarbage(framing.reason);
      this.downReader = new BodyReader(framing, () => {});
      this.down = 'body';
      if (this.downReader.done) this.responseDone();
    }
  }

  private responseDone(): void {
    const req = this.pending.shift();
    this.down = 'head';
    this.downReader = undefined;
    this.maybeFlushRefusal();
    if (req?.mayHijack && this.up === 'await-response') {
      // Not hijacked: the connection is still HTTP, and what the client sent meanwhile is a request.
      this.up = 'head';
      this.armHeadTimer();
      if (!this.waitingEngineDrain) this.client.resume();
      this.process();
      this.maybeEndUp();
    }
  }

  private goRaw(): void {
    this.clearHeadTimer();
    if (this.up === 'await-response' || this.up === 'head') {
      this.up = 'raw';
      const held = this.buf;
      this.buf = Buffer.alloc(0);
      this.toEngine(held);
      if (!this.waitingEngineDrain) this.client.resume();
      this.maybeEndUp();
    }
  }

  private engineGarbage(reason: string): void {
    this.log.warn('the engine sent a malformed response; closing the connection', { reason });
    this.destroy();
  }

  /** dockerd closed the connection: deliver what came, then end both ways. */
  private onEngineEnd(): void {
    this.engineEnded = true;
    this.clearHeadTimer();
    this.releaseBody();
    if (this.refusal !== undefined) {
      this.client.end(this.refusal);
      this.refusal = undefined;
    } else this.client.end();
    this.up = 'closed';
    this.buf = Buffer.alloc(0);
    const engine = this.engine!;
    if (!engine.writableEnded) engine.end();
    // Whatever the client still sends is dropped; the stream closes once both FINs are through.
    this.client.resume();
  }
}

/** Whether `buf` holds whole requests only (a client that half-closed after them is still waiting). */
function endsAtRequestBoundary(buf: Buffer): boolean {
  let rest = buf;
  while (rest.length > 0) {
    const h = parseRequestHead(rest);
    if (h.kind !== 'head') return false;
    const framing = requestFraming(h.head);
    if (framing.kind === 'error') return false;
    const reader = new BodyReader(framing, () => {});
    const n = reader.push(rest.subarray(h.used));
    if (!reader.done || reader.error) return false;
    rest = rest.subarray(h.used + n);
  }
  return true;
}

/** What a request runs, from its route: container start or restart, exec start. */
function runOf(match: RouteMatch | undefined): HeldRun | undefined {
  const hook = match?.route.hook;
  if (!hook || match.vars.name === undefined) return undefined;
  return { kind: hook, id: bytesToText(match.vars.name) };
}
