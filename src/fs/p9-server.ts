import net from 'node:net';
import type { Duplex } from 'node:stream';
import { MessageDecoder } from './p9-wire.js';
import { P9Session, type SessionOptions } from './p9-session.js';
import type { TicketBook } from './tickets.js';

/**
 * The 9P server's connection loop (docs/files.md "Security"). A connection first proves itself
 * with one line, `berth-9p <ticket>\n`, a single-use ticket for one share (tickets.ts), answered
 * `ok\n`; anything else, or nothing within PROVE_MS, closes it. Then it is one P9Session for that
 * share: messages split by their size field with the negotiated msize as the bound. A framing
 * error closes the connection (a 9P stream cannot be resynchronised); the session's open files
 * are closed with it. Connections are bounded, unproven ones more tightly, so a guest that opens
 * them without end is refused while the proven ones keep being served.
 */
export interface ServerLimits {
  /** Connections at once (one per mounted share, plus remounts). */
  connections: number;
  /** Connections that have not proven themselves yet. */
  unproven: number;
  /** How long a connection may take to prove itself. */
  proveMs: number;
}

export const SERVER_LIMITS: ServerLimits = { connections: 64, unproven: 8, proveMs: 10_000 };

/** The proof line is short; a longer one is not a proof. */
const MAX_PROOF = 160;
const PROOF = /^berth-9p ([0-9a-f]{64})$/;
const PREFIX = Buffer.from('berth-9p ');

export type ServerOptions = Omit<SessionOptions, 'share'> & { tickets: TicketBook; limits?: Partial<ServerLimits> };

export class P9Server {
  private readonly server: net.Server;
  private readonly sessions = new Set<P9Session>();
  private readonly sockets = new Set<net.Socket | Duplex>();
  private open = 0;
  private unproven = 0;
  private readonly limits: ServerLimits;

  constructor(private readonly opts: ServerOptions) {
    this.limits = { ...SERVER_LIMITS, ...opts.limits };
    this.server = net.createServer((sock) => this.serve(sock));
  }

  get connectionCount(): number {
    return this.open;
  }

  /** Serves one connection (a socket, or any Duplex such as a stream of the translator). */
  serve(sock: net.Socket | Duplex): void {
    sock.on('error', () => {});
    if (this.open >= this.limits.connections || this.unproven >= this.limits.unproven) {
      this.opts.log('warn', '9p: a connection was refused: too many at once', { open: this.open, unproven: this.unproven });
      sock.destroy();
      return;
    }
    this.open++;
    this.unproven++;
    this.sockets.add(sock);
    let session: P9Session | undefined;
    let proof = Buffer.alloc(0);
    const decoder = new MessageDecoder(this.opts.maxMsize);
    const timer = setTimeout(() => {
      this.opts.log('warn', '9p: a connection did not prove itself in time; closed', {});
      sock.destroy();
    }, this.limits.proveMs);
    timer.unref();
    const proven = () => {
      clearTimeout(timer);
      this.unproven--;
    };
    const feed = (chunk: Buffer) => {
      decoder.push(chunk, (r) => {
        if (r.kind === 'error') {
          this.opts.log('warn', '9p: framing error; closing the connection', { reason: r.reason });
          sock.destroy();
          return;
        }
        const reply = session!.handle(r.msg);
        // After Tversion the negotiated msize bounds what the client may send.
        decoder.maxSize = session!.maxMessage;
        if (reply) sock.write(reply);
      });
    };
    sock.on('data', (chunk: Buffer) => {
      if (session) return feed(chunk);
      proof = Buffer.concat([proof, chunk]);
      const nl = proof.indexOf(0x0a);
      // What cannot become a proof is refused at once (a 9P client that skipped the proof).
      if (!PREFIX.subarray(0, Math.min(proof.length, PREFIX.length)).equals(proof.subarray(0, Math.min(proof.length, PREFIX.length)))) {
        this.opts.log('warn', '9p: a connection that did not start with a ticket was refused', {});
        sock.end('refused\n');
        return;
      }
      if (nl < 0) {
        if (proof.length > MAX_PROOF) sock.destroy();
        return;
      }
      const m = PROOF.exec(proof.toString('latin1', 0, nl));
      const share = m ? this.opts.tickets.consume(m[1]!) : undefined;
      if (!share) {
        this.opts.log('warn', '9p: a connection without a valid ticket was refused', {});
        sock.end('refused\n');
        return;
      }
      proven();
      session = new P9Session({ ...this.opts, share });
      this.sessions.add(session);
      sock.write('ok\n');
      const rest = proof.subarray(nl + 1);
      proof = Buffer.alloc(0);
      if (rest.length) feed(rest);
    });
    sock.on('close', () => {
      this.open--;
      this.sockets.delete(sock);
      if (session) {
        session.close();
        this.sessions.delete(session);
      } else proven();
    });
  }

  listen(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(path, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    for (const s of this.sessions) s.close();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
