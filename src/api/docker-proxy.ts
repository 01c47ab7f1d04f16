import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../util/log.js';
import { listenUnix } from '../util/unix-socket.js';
import { toBerthError } from '../util/errors.js';
import { BodyReader, bodyFraming, parseHead, type MessageHead } from './http1.js';
import { checkContainerCreate, checkServiceSpec, checkVolumeCreate, refusalMessage, type Decision, type MountPolicy } from './mount-policy.js';

/**
 * The host's Docker API socket. Every client connection becomes one mux stream to the guest's
 * dockerd socket. The proxy reads the HTTP requests going in (http1.ts) so that requests that can
 * mount host paths are checked against the shares first (mount-policy.ts); every byte it does not
 * refuse is forwarded unchanged, in order, so streaming responses (logs -f, events), uploads
 * (build contexts, import) and hijacked connections (attach, exec -it) behave as against a local
 * dockerd. After a successful hijack (101, or 200 with a raw stream) both directions are raw
 * bytes; a refused hijack leaves the connection in HTTP, so no later request escapes the checks.
 * Half-close is preserved (`allowHalfOpen`): `docker attach` closes its write side on stdin EOF.
 *
 * If the guest cannot be reached, the client gets an HTTP 503 whose body the docker CLI prints
 * as "Error response from daemon: ...".
 */
export type StreamOpener = () => Promise<Duplex>;

/** A request that runs something in a container: a container start, or an exec start. */
export interface HeldRun {
  kind: 'start' | 'exec';
  /** The container id or name (start), or the exec id (exec), as the client sent it. */
  id: string;
}

/**
 * Called before a container or an exec starts: POST /containers/{id}/start and POST
 * /exec/{id}/start are held until it resolves (pinning shared folders, replaying pending host
 * changes for cached shares). A rejection does not block the request.
 */
export type BeforeRun = (run: HeldRun) => Promise<void>;

/** How long a start waits for BeforeRun at most. */
const BEFORE_RUN_TIMEOUT_MS = 20_000;

/** Bodies of checked requests are held in memory up to this size (container specs are small). */
const MAX_CHECKED_BODY = 16 * 1024 * 1024;
/** Client bytes held while waiting to learn whether a hijack succeeded. */
const MAX_HELD = 1024 * 1024;

type Check = (body: unknown, p: MountPolicy) => Decision;

/** Requests whose bodies can name host paths. */
function checkFor(h: MessageHead): Check | undefined {
  if (h.method !== 'POST') return undefined;
  const p = h.target.replace(/^\/v\d+(?:\.\d+)?/, '').split('?')[0]!;
  if (p === '/containers/create') return checkContainerCreate;
  if (p === '/volumes/create') return checkVolumeCreate;
  if (p === '/services/create' || /^\/services\/[^/]+\/update$/.test(p)) return checkServiceSpec;
  return undefined;
}

/** What a POST /containers/{id}/start or POST /exec/{id}/start runs, else undefined. */
function runOf(h: MessageHead): HeldRun | undefined {
  if (h.method !== 'POST') return undefined;
  const m = /^\/(containers|exec)\/([^/?]+)\/start$/.exec(h.target.replace(/^\/v\d+(?:\.\d+)?/, '').split('?')[0]!);
  if (!m) return undefined;
  try {
    return { kind: m[1] === 'exec' ? 'exec' : 'start', id: decodeURIComponent(m[2]!) };
  } catch {
    return undefined; // malformed %-escape: the engine answers it
  }
}

/** Requests after which the connection may become a raw stream (attach, exec start, Upgrade). */
function mayHijack(h: MessageHead): boolean {
  if (h.headers.has('upgrade') || /\bupgrade\b/i.test(h.headers.get('connection') ?? '')) return true;
  const p = h.target.replace(/^\/v\d+(?:\.\d+)?/, '').split('?')[0]!;
  return h.method === 'POST' && (/^\/containers\/[^/]+\/attach$/.test(p) || /^\/exec\/[^/]+\/start$/.test(p) || p === '/session' || p === '/grpc');
}

export class DockerProxy {
  private readonly server: net.Server;
  private readonly conns = new Set<net.Socket>();

  constructor(
    readonly socketPath: string,
    private readonly open: StreamOpener,
    private readonly log: Logger,
    private readonly policy: () => MountPolicy,
    private readonly beforeRun?: BeforeRun,
  ) {
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.onConnection(c));
  }

  async listen(): Promise<void> {
    await listenUnix(this.server, this.socketPath, 'Docker API socket');
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /** Stops accepting and drops every open connection. */
  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private onConnection(client: net.Socket): void {
    this.conns.add(client);
    client.once('close', () => this.conns.delete(client));
    client.on('error', () => {});
    this.open().then(
      (engine) => {
        if (client.destroyed) {
          engine.destroy();
          return;
        }
        new ProxiedConnection(client, engine, this.policy(), this.log, this.beforeRun);
      },
      (err) => {
        const e = toBerthError(err);
        const body = JSON.stringify({ message: `berth: the Docker engine in the VM is not reachable: ${e.message}${e.hint ? ` ${e.hint}` : ''}` });
        client.end(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      },
    );
  }
}

/** One client connection and its engine stream. */
class ProxiedConnection {
  /** Client bytes not processed yet. */
  private pending: Buffer = Buffer.alloc(0);
  private up: 'head' | 'body' | 'check' | 'await-hook' | 'await-hijack' | 'raw' | 'closed' = 'head';
  private down: 'pass' | 'hijack-head' | 'raw' = 'pass';
  private reader: BodyReader | undefined;
  private hijackAfterBody = false;
  private checked: { head: Buffer; raw: Buffer[]; decoded: Buffer[]; size: number; check?: Check; before?: () => Promise<void> } | undefined;
  private downHead: Buffer = Buffer.alloc(0);
  private clientEnded = false;
  private waitingEngineDrain = false;
  private waitingClientDrain = false;

  constructor(
    private readonly client: net.Socket,
    private readonly engine: Duplex,
    private readonly policy: MountPolicy,
    private readonly log: Logger,
    private readonly beforeRun?: BeforeRun,
  ) {
    engine.on('error', (err) => {
      log.debug('docker stream error', { err: err.message });
      client.destroy();
    });
    client.on('error', () => engine.destroy());
    client.on('close', () => {
      if (!engine.destroyed && !engine.writableEnded) engine.destroy();
    });
    engine.on('close', () => {
      // Ending rather than destroying lets buffered response bytes reach the client.
      if (!client.destroyed) client.end();
    });
    engine.on('data', (d: Buffer) => this.fromEngine(d));
    engine.on('end', () => {
      if (!client.destroyed) client.end();
    });
    client.on('data', (d: Buffer) => this.fromClient(d));
    client.on('end', () => {
      this.clientEnded = true;
      this.maybeEndUp();
    });
    client.resume();
  }

  /** Writes towards the engine; a full engine stream pauses the client until it drains. */
  private toEngine(b: Buffer): void {
    if (b.length === 0) return;
    if (!this.engine.write(b) && !this.waitingEngineDrain) {
      this.waitingEngineDrain = true;
      this.client.pause();
      this.engine.once('drain', () => {
        this.waitingEngineDrain = false;
        if (this.up !== 'await-hijack') this.client.resume();
      });
    }
  }

  /** Writes towards the client; a slow client pauses the engine stream until it drains. */
  private toClient(b: Buffer): void {
    if (b.length === 0) return;
    if (!this.client.write(b) && !this.waitingClientDrain) {
      this.waitingClientDrain = true;
      this.engine.pause();
      this.client.once('drain', () => {
        this.waitingClientDrain = false;
        this.engine.resume();
      });
    }
  }

  private fromClient(d: Buffer): void {
    if (this.up === 'raw') return this.toEngine(d);
    if (this.up === 'closed') return;
    this.pending = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    this.process();
  }

  private process(): void {
    while (this.pending.length > 0 && this.up !== 'closed') {
      if (this.up === 'raw') {
        const b = this.pending;
        this.pending = Buffer.alloc(0);
        this.toEngine(b);
        break;
      }
      if (this.up === 'await-hijack' || this.up === 'await-hook') {
        if (this.pending.length > MAX_HELD) this.client.pause();
        break;
      }
      if (this.up === 'head' && !this.onHead()) break;
      if (this.up === 'body' || this.up === 'check') this.onBody();
    }
    this.maybeEndUp();
  }

  /** Parses one request head; false when more bytes are needed. */
  private onHead(): boolean {
    const r = parseHead(this.pending, 'request');
    if (r.kind === 'incomplete') return false;
    if (r.kind === 'error') {
      this.refuse(400, `berth: malformed request to the Docker API: ${r.reason}.`);
      return false;
    }
    const framing = bodyFraming(r.head, 'request');
    if (framing.kind === 'error') {
      this.refuse(400, `berth: malformed request to the Docker API: ${framing.reason}.`);
      return false;
    }
    this.pending = this.pending.subarray(r.used);
    const check = checkFor(r.head);
    const run = this.beforeRun ? runOf(r.head) : undefined;
    const before = run !== undefined ? () => this.beforeRun!(run) : undefined;
    this.hijackAfterBody = mayHijack(r.head);
    if (check || before) {
      const decoded: Buffer[] = [];
      this.reader = new BodyReader(framing, decoded);
      let head = r.head.raw;
      if (/100-continue/i.test(r.head.headers.get('expect') ?? '')) {
        // The engine will not see this request before its body has been checked, so the client's
        // wait for "100 Continue" is answered here (and the header is not forwarded).
        this.client.write('HTTP/1.1 100 Continue\r\n\r\n');
        head = Buffer.from(head.toString('latin1').replace(/\r\nexpect:[^\r]*/i, ''), 'latin1');
      }
      this.checked = { head, raw: [], decoded, size: 0, ...(check ? { check } : {}), ...(before ? { before } : {}) };
      this.up = 'check';
    } else {
      this.toEngine(r.head.raw);
      this.reader = new BodyReader(framing);
      this.up = 'body';
    }
    return true;
  }

  private onBody(): void {
    const reader = this.reader!;
    const n = reader.done ? 0 : reader.push(this.pending);
    if (reader.error) return this.refuse(400, `berth: malformed request body: ${reader.error}.`);
    const part = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    if (this.up === 'body') this.toEngine(part);
    else if (this.checked) {
      this.checked.raw.push(part);
      this.checked.size += n;
      if (this.checked.size > MAX_CHECKED_BODY) return this.refuse(413, `berth: request body larger than ${MAX_CHECKED_BODY} bytes.`);
    }
    if (!reader.done) return;
    if (this.up === 'check') {
      const c = this.checked!;
      this.checked = undefined;
      const decision = c.check ? this.decide(c.check, Buffer.concat(c.decoded)) : ({ ok: true } as const);
      if (!decision.ok) {
        const message = refusalMessage(decision, this.policy);
        this.log.warn('docker request refused: mount outside the shares', { path: decision.path, where: decision.where });
        return this.refuse(400, message);
      }
      if (c.before) {
        // Hold the request (and whatever follows) until the hook is done, then send it on.
        this.up = 'await-hook';
        const timeout = new Promise<void>((r) => setTimeout(r, BEFORE_RUN_TIMEOUT_MS));
        void Promise.race([c.before().catch(() => {}), timeout]).then(() => {
          if (this.up !== 'await-hook') return;
          this.toEngine(c.head);
          for (const p of c.raw) this.toEngine(p);
          this.afterRequest();
          this.process();
        });
        return;
      }
      this.toEngine(c.head);
      for (const p of c.raw) this.toEngine(p);
    }
    this.afterRequest();
  }

  /** The request went out: next comes a head, or (after a possible hijack) the engine's answer. */
  private afterRequest(): void {
    this.reader = undefined;
    if (this.hijackAfterBody) {
      // Hold what the client sends next until the response says whether this is still HTTP.
      this.up = 'await-hijack';
      this.down = 'hijack-head';
    } else this.up = 'head';
  }

  private decide(check: Check, body: Buffer): Decision {
    let json: unknown;
    try {
      json = body.length ? JSON.parse(body.toString('utf8')) : undefined;
    } catch {
      return { ok: true }; // not JSON: the engine answers 400 itself, and nothing can be mounted
    }
    return check(json, this.policy);
  }

  private fromEngine(d: Buffer): void {
    if (this.down !== 'hijack-head') return this.toClient(d);
    this.downHead = this.downHead.length ? Buffer.concat([this.downHead, d]) : d;
    const r = parseHead(this.downHead, 'response');
    if (r.kind === 'incomplete') return;
    const held = this.downHead;
    this.downHead = Buffer.alloc(0);
    const ct = r.kind === 'head' ? (r.head.headers.get('content-type') ?? '') : '';
    const hijacked = r.kind === 'head' && (r.head.status === 101 || (r.head.status === 200 && /application\/vnd\.docker\.(raw|multiplexed)-stream/.test(ct)));
    this.toClient(held);
    if (hijacked) {
      this.down = 'raw';
      this.up = 'raw';
    } else {
      this.down = 'pass';
      this.up = 'head';
    }
    if (!this.waitingEngineDrain) this.client.resume();
    this.process();
  }

  /** Answers the client itself (the request never reaches the engine) and closes the connection. */
  private refuse(status: number, message: string): void {
    this.up = 'closed';
    this.pending = Buffer.alloc(0);
    const body = JSON.stringify({ message });
    const reason = status === 413 ? 'Payload Too Large' : 'Bad Request';
    this.client.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    this.engine.end();
  }

  /** The client half-closed: pass it on once everything it sent has been forwarded. */
  private maybeEndUp(): void {
    if (!this.clientEnded || this.engine.writableEnded) return;
    if (this.up === 'raw' || (this.pending.length === 0 && (this.up === 'head' || this.up === 'body'))) this.engine.end();
  }
}
