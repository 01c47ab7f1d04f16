import net from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { Logger } from '../util/log.js';
import { Mux, type MuxLink } from '../control/mux.js';
import { serveAgentApi } from '../control/rpc.js';
import { CONTROL_PORT_NAME, NAMESPACE_CONTROL_SOCKET } from '../control/ports.js';
import { PortLink, findPort } from './port-link.js';
import { SocketClientLink } from './socket-client-link.js';
import { Engine, GUEST_ENGINE_PATHS } from './engine.js';
import { parseExecMeta, runExec } from './exec-service.js';
import { followLog, parseLogsMeta } from './logs-service.js';
import { readBootId, readBootTimes, readImageKey } from './system.js';
import type { GuestInfo } from '../control/guest-info.js';
import { SharedFolders } from './shared-folders.js';
import { rpcHandlers } from './rpc-handlers.js';

/**
 * The berth guest agent. Runs inside the VM on Debian's Node 18 (bundled into one file by
 * scripts/bundle-agent.mjs), restarted by agent-loop if it dies. It only answers the host: every
 * service below is opened by the host, and nothing the agent sends can make the host act.
 */
const AGENT_VERSION = '1';
const startedAt = Date.now();
const log = new Logger({ write: (l) => process.stdout.write(l) }, 'agent');

function main(): void {
  // In namespaces (docs/namespace.md) there is no virtio-serial port: the host connects to a
  // socket in the host folder bound into the namespace (the host listens, the agent dials).
  const inNamespace = process.env.BERTH_BACKEND === 'namespace';
  const device = inNamespace ? NAMESPACE_CONTROL_SOCKET : waitForPort();
  const engine = new Engine(GUEST_ENGINE_PATHS, log.child('engine'));
  const link = inNamespace ? new SocketClientLink(device, log.child('socket')) : new PortLink(device, log.child('port'));

  const info = (): GuestInfo => ({
    bootId: readBootId(),
    agentVersion: AGENT_VERSION,
    imageKey: readImageKey(),
    kernel: os.release(),
    bootTimes: readBootTimes(),
    agentStartMs: Date.now() - startedAt,
    engine: engine.current,
  });
  const mux = new Mux(link as unknown as MuxLink, { role: 'guest', log: log.child('mux'), info: () => info() as unknown as Record<string, unknown> });
  link.on('host-disconnected', () => {
    log.info('host disconnected from the control port');
    mux.peerDisconnected();
  });

  // One Docker API connection. A stream is freed as soon as either end is done: when dockerd
  // closes the connection, what the host still sends has nowhere to go, so it is read and
  // dropped and the stream closes with the host's FIN (docs/control.md "Streams").
  mux.handle('docker', (stream: Duplex) => {
    const sock = net.connect(GUEST_ENGINE_PATHS.dockerSocket);
    sock.on('error', (err) => stream.destroy(err));
    stream.on('error', () => sock.destroy());
    sock.on('close', () => {
      if (stream.destroyed) return;
      stream.unpipe(sock);
      stream.end();
      stream.resume();
    });
    stream.pipe(sock);
    sock.pipe(stream);
  });

  mux.handle('exec', (stream: Duplex, meta: unknown) => {
    runExec(stream, parseExecMeta(meta), log.child('exec'));
  });

  mux.handle('logs', (stream: Duplex, meta: unknown) => {
    const { file, offset } = parseLogsMeta(meta);
    followLog(stream, file, offset);
  });

  mux.handle('events', (stream: Duplex) => {
    const send = () => {
      if (!stream.destroyed) stream.write(JSON.stringify({ type: 'engine', ...engine.current }) + '\n');
    };
    engine.on('state', send);
    stream.on('close', () => engine.off('state', send));
    stream.on('error', () => {});
    stream.resume();
    send();
  });

  const folders = new SharedFolders(log.child('folders'));
  serveAgentApi(mux, rpcHandlers({ engine, folders, streamCount: () => mux.streamCount, agentVersion: AGENT_VERSION, log }));

  engine.adopt();
  log.info('agent started', { device, startupMs: Date.now() - startedAt });
}

function waitForPort(): string {
  // The port exists before init runs the agent; a short wait covers a slow module load.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const d = findPort(CONTROL_PORT_NAME);
    if (d) return d;
    if (Date.now() > deadline) throw new Error(`virtio-serial port ${CONTROL_PORT_NAME} not found in /sys/class/virtio-ports`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
  }
}

process.on('uncaughtException', (err) => {
  log.error('uncaught exception; exiting (agent-loop restarts the agent)', { err: err.stack ?? String(err) });
  process.exit(70);
});

main();
