import fs from 'node:fs';
import type { Logger } from '../util/log.js';
import type { AgentHandlers } from '../control/rpc.js';
import type { Engine } from './engine.js';
import { powerOff, prepareShutdown, readImageKey, systemInfo } from './system.js';
import { bootMountsDone, readShareFailures, remountShares, type SharedFolders } from './shared-folders.js';

export interface RpcDeps {
  engine: Engine;
  folders: SharedFolders;
  /** Streams open on the agent's side of the control channel now. */
  streamCount: () => number;
  agentVersion: string;
  log: Logger;
}

/**
 * The agent's answers to the host's RPC methods (control/agent-api.ts). Each handler gets params
 * already checked by the method's table entry.
 */
export function rpcHandlers(d: RpcDeps): AgentHandlers {
  const { engine, folders, log } = d;
  return {
    // Change events of shared folders (docs/files.md): pins before containers start, then replays.
    'fs.pin': async ({ paths, dropCaches }) => {
      const out: Record<string, number> = {};
      // A folder of a cached share (cache=loose) that no container watched until now: the VM may
      // hold names, sizes and pages from before that no change event refreshed. Clean caches
      // are dropped (all of them: Linux has no per-folder drop) so the watch starts from what
      // the host has now (docs/files.md "Caching").
      if (dropCaches === true && paths.some((x) => !folders.isPinned(x))) {
        fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
      }
      for (const path of paths) {
        const r = await folders.pin(path);
        out[path] = r.pinned + r.files;
      }
      return { pinned: out, total: folders.pinnedCount };
    },
    'fs.remount': async ({ tickets }) => {
      // The host's file server restarted: the old mounts' connections are dead. Pins held
      // dentries of those mounts; the daemon pins again for the containers it finds. The
      // boot's tickets are used up: the host sends a fresh one per share.
      folders.close();
      return { failures: await remountShares(tickets) };
    },
    // The shares the boot could not mount (docs/files.md "Transport"), once the boot's mounts are over.
    'fs.status': async ({ timeoutMs }) => {
      await bootMountsDone(timeoutMs);
      return { failures: readShareFailures() };
    },
    // Bind sources just before a container starts: what the VM resolves each to (docs/docker-proxy.md).
    'fs.verify': async ({ paths }) => ({ results: paths.map((path) => folders.verify(path)) }),
    'fs.unpin': async ({ paths }) => {
      for (const path of paths) folders.unpin(path);
      return { total: folders.pinnedCount };
    },
    'fs.act': async (req) => {
      await folders.act(req);
      return {};
    },
    'engine.status': async () => engine.current,
    'engine.restart': async ({ timeoutMs }) => {
      await engine.restart(timeoutMs);
      return engine.current;
    },
    'system.info': async () => ({ ...systemInfo(), agentVersion: d.agentVersion, imageKey: readImageKey(), engine: engine.current, streams: d.streamCount() }),
    'system.shutdown': async ({ engineTimeoutMs }) => {
      log.info('shutdown requested by the host');
      const result = await prepareShutdown(engine, engineTimeoutMs, log);
      // Reply first, then power off: the host waits for QEMU to exit.
      setTimeout(powerOff, 200);
      return result;
    },
  };
}
