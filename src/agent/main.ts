import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { Logger } from '../util/log.js';
import { Mux, type MuxLink } from '../control/mux.js';
import { serveRpc } from '../control/rpc.js';
import { CONTROL_PORT_NAME } from '../control/ports.js';
import { PortLink, findPort } from './port-link.js';
import { Engine, GUEST_ENGINE_PATHS } from './engine.js';
import { parseExecMeta, runExec } from './exec-service.js';
import { followLog, parseLogsMeta } from './logs-service.js';
import { powerOff, prepareShutdown, readBootId, readBootTimes, readImageKey, systemInfo } from './system.js';
import type { GuestInfo } from '../control/guest-info.js';
import { SharedFolders, bootMountsDone, readShareFailures, remountShares } from './shared-folders.js';
import { ACT_OPS, REPLAYED_OPS, isActuatorUid, type ActOp } from '../control/actuator.js';

/**
 * The berth guest agent. Runs inside the VM on Debian's Node 18 (bundled into one file by
 * scripts/bundle-agent.mjs), restarted by agent-loop if it dies. It only answers the host: every
 * service below is opened by the host, and nothing the agent sends can make the host act.
 */
const AGENT_VERSION = '1';
const startedAt = Date.now();
const log = new Logger({ write: (l) => process.stdout.write(l) }, 'agent');

function main(): void {
  const device = waitForPort();
  const engine = new Engine(GUEST_ENGINE_PATHS, log.child('engine'));
  const link = new PortLink(device, log.child('port'));

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
  serveRpc(mux, {
    // Change events of shared folders (docs/files.md): pins before containers start, then replays.
    'fs.pin': async (p: unknown) => {
      const out: Record<string, number> = {};
      const paths = pathsFrom(p);
      // A folder of a cached share (cache=loose) that no container watched until now: the VM may
      // hold names, sizes and pages from before that no change event refreshed. Clean caches
      // are dropped (all of them: Linux has no per-folder drop) so the watch starts from what
      // the host has now (docs/files.md "Caching").
      if ((p as { dropCaches?: unknown }).dropCaches === true && paths.some((x) => !folders.isPinned(x))) {
        fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
      }
      for (const path of paths) {
        const r = await folders.pin(path);
        out[path] = r.pinned + r.files;
      }
      return { pinned: out, total: folders.pinnedCount };
    },
    'fs.remount': async (p: unknown) => {
      // The host's file server restarted: the old mounts' connections are dead. Pins held
      // dentries of those mounts; the daemon pins again for the containers it finds. The
      // boot's tickets are used up: the host sends a fresh one per share.
      const tickets = p && typeof p === 'object' ? (p as { tickets?: unknown }).tickets : undefined;
      if (!tickets || typeof tickets !== 'object' || Array.isArray(tickets) || !Object.values(tickets).every((t) => typeof t === 'string')) {
        throw Object.assign(new Error('fs.remount needs {tickets: {shareId: ticket}}'), { code: 'USAGE' });
      }
      folders.close();
      return { failures: await remountShares(tickets as Record<string, string>) };
    },
    // The shares the boot could not mount (docs/files.md "Transport"), once the boot's mounts are over.
    'fs.status': async (p: unknown) => {
      await bootMountsDone(timeoutFrom(p, 'timeoutMs', 30_000));
      return { failures: readShareFailures() };
    },
    // Bind sources just before a container starts: what the VM resolves each to (docs/docker-proxy.md).
    'fs.verify': async (p: unknown) => ({ results: pathsFrom(p).map((path) => folders.verify(path)) }),
    'fs.unpin': async (p: unknown) => {
      for (const path of pathsFrom(p)) folders.unpin(path);
      return { total: folders.pinnedCount };
    },
    'fs.act': async (p: unknown) => {
      const o = (p && typeof p === 'object' ? p : {}) as { op?: unknown; uid?: unknown; path?: unknown; to?: unknown; size?: unknown; cached?: unknown };
      const sizeOk = o.size === undefined || (Number.isSafeInteger(o.size) && (o.size as number) >= 0);
      const uidOk = REPLAYED_OPS.includes(o.op as ActOp) ? isActuatorUid(o.uid) : o.uid === undefined || isActuatorUid(o.uid);
      if (!ACT_OPS.includes(o.op as ActOp) || !uidOk || !isAbsPath(o.path) || (o.to !== undefined && !isAbsPath(o.to)) || !sizeOk) {
        throw Object.assign(new Error('fs.act needs {op, uid, path[, to][, size]} with an actuator uid, absolute paths and a size that is a whole number of bytes'), { code: 'USAGE' });
      }
      await folders.act({
        op: o.op as ActOp,
        ...(o.uid !== undefined ? { uid: o.uid as number } : {}),
        path: o.path as string,
        ...(o.to !== undefined ? { to: o.to as string } : {}),
        ...(o.size !== undefined ? { size: o.size as number } : {}),
        ...(o.cached === true ? { cached: true } : {}),
      });
      return {};
    },
    'engine.status': async () => engine.current,
    'engine.restart': async (p: unknown) => {
      await engine.restart(timeoutFrom(p, 'timeoutMs', 30_000));
      return engine.current;
    },
    'system.info': async () => ({ ...systemInfo(), agentVersion: AGENT_VERSION, imageKey: readImageKey(), engine: engine.current, streams: mux.streamCount }),
    'system.shutdown': async (p: unknown) => {
      log.info('shutdown requested by the host');
      const result = await prepareShutdown(engine, timeoutFrom(p, 'engineTimeoutMs', 20_000), log);
      // Reply first, then power off: the host waits for QEMU to exit.
      setTimeout(powerOff, 200);
      return result;
    },
  });

  engine.adopt();
  log.info('agent started', { device, startupMs: Date.now() - startedAt });
}

function isAbsPath(v: unknown): v is string {
  return typeof v === 'string' && v.startsWith('/') && v.length < 4096 && !v.includes('\0');
}

function pathsFrom(p: unknown): string[] {
  const paths = p && typeof p === 'object' ? (p as { paths?: unknown }).paths : undefined;
  if (!Array.isArray(paths) || !paths.every(isAbsPath) || paths.length > 256) throw Object.assign(new Error('expected {paths: [absolute paths]}'), { code: 'USAGE' });
  return paths as string[];
}

function timeoutFrom(p: unknown, key: string, dflt: number): number {
  const v = p && typeof p === 'object' ? (p as Record<string, unknown>)[key] : undefined;
  return typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= 600_000 ? v : dflt;
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
