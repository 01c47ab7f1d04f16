import net from 'node:net';
import { MessageDecoder } from './p9-wire.js';
import { P9Session, type SessionOptions } from './p9-session.js';

/**
 * The 9P server's connection loop: one P9Session per connection (each guest mount is one
 * connection), messages split by their size field with the negotiated msize as the bound. A
 * framing error closes the connection (a 9P stream cannot be resynchronised); the session's open
 * files are closed with it.
 */
export class P9Server {
  private readonly server: net.Server;
  private readonly sessions = new Set<P9Session>();

  constructor(private readonly opts: Omit<SessionOptions, 'qids'> & Pick<SessionOptions, 'qids'>) {
    this.server = net.createServer((sock) => this.serve(sock));
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  /** Serves one connection (a socket, or any Duplex such as a stream of the translator). */
  serve(sock: net.Socket | import('node:stream').Duplex): void {
    const session = new P9Session(this.opts);
    this.sessions.add(session);
    const decoder = new MessageDecoder(this.opts.maxMsize);
    sock.on('data', (chunk: Buffer) => {
      decoder.push(chunk, (r) => {
        if (r.kind === 'error') {
          this.opts.log('warn', '9p: framing error; closing the connection', { reason: r.reason });
          sock.destroy();
          return;
        }
        const reply = session.handle(r.msg);
        // After Tversion the negotiated msize bounds what the client may send.
        decoder.maxSize = session.maxMessage;
        if (reply) sock.write(reply);
      });
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      session.close();
      this.sessions.delete(session);
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
    for (const s of this.sessions) s.close();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
