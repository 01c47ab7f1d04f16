import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../util/log.js';
import { listenUnix } from '../util/unix-socket.js';
import { toBerthError } from '../util/errors.js';

/**
 * The host's Docker API socket. Every client connection becomes one mux stream to the guest's
 * dockerd socket, and bytes are copied both ways unchanged, so streaming responses (logs -f,
 * events), uploads (build contexts, import) and hijacked connections (attach, exec -it) behave as
 * they do against a local dockerd. Half-close is preserved (`allowHalfOpen`): `docker attach`
 * closes its write side on stdin EOF and still reads the output.
 *
 * If the guest cannot be reached, the client gets an HTTP 503 whose body the docker CLI prints
 * as "Error response from daemon: ...".
 */
export type StreamOpener = () => Promise<Duplex>;

export class DockerProxy {
  private readonly server: net.Server;
  private readonly conns = new Set<net.Socket>();

  constructor(
    readonly socketPath: string,
    private readonly open: StreamOpener,
    private readonly log: Logger,
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
      (stream) => {
        if (client.destroyed) {
          stream.destroy();
          return;
        }
        stream.on('error', (err) => {
          this.log.debug('docker stream error', { err: err.message });
          client.destroy();
        });
        client.on('error', () => stream.destroy());
        client.on('close', () => {
          if (!stream.destroyed && !stream.writableEnded) stream.destroy();
        });
        stream.on('close', () => {
          // Ending rather than destroying lets buffered response bytes reach the client.
          if (!client.destroyed) client.end();
        });
        client.pipe(stream);
        stream.pipe(client);
        client.resume();
      },
      (err) => {
        const e = toBerthError(err);
        const body = JSON.stringify({ message: `berth: the Docker engine in the VM is not reachable: ${e.message}${e.hint ? ` ${e.hint}` : ''}` });
        client.end(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      },
    );
  }
}
