import type { AgentHandlers } from '../../src/control/rpc.js';

/**
 * Handlers for every agent method that answer plausible results and record each call's method
 * and params in `calls`; tests replace the ones they exercise. Used by the RPC unit tests.
 */
export function fakeAgentHandlers(calls: Array<[string, unknown]> = []): AgentHandlers {
  const engine = { state: 'ready' as const, restarts: 0 };
  return {
    'fs.pin': async (p) => {
      calls.push(['fs.pin', p]);
      return { pinned: Object.fromEntries(p.paths.map((x) => [x, 1])), total: p.paths.length };
    },
    'fs.remount': async (p) => {
      calls.push(['fs.remount', p]);
      return { failures: [] };
    },
    'fs.status': async (p) => {
      calls.push(['fs.status', p]);
      return { failures: [] };
    },
    'fs.verify': async (p) => {
      calls.push(['fs.verify', p]);
      return { results: p.paths.map((path) => ({ path, resolved: path, kind: 'dir' as const })) };
    },
    'fs.unpin': async (p) => {
      calls.push(['fs.unpin', p]);
      return { total: 0 };
    },
    'fs.act': async (p) => {
      calls.push(['fs.act', p]);
      return {};
    },
    'engine.status': async (p) => {
      calls.push(['engine.status', p]);
      return engine;
    },
    'engine.restart': async (p) => {
      calls.push(['engine.restart', p]);
      return engine;
    },
    'system.info': async (p) => {
      calls.push(['system.info', p]);
      return {
        bootId: 'b',
        kernel: '6.1.0',
        uptimeSec: 3,
        memory: { totalBytes: 1024, freeBytes: 512 },
        loadavg: [0, 0, 0],
        bootTimes: { init: 0.5 },
        agentVersion: '1',
        imageKey: 'k',
        engine,
        streams: 2,
      };
    },
    'system.shutdown': async (p) => {
      calls.push(['system.shutdown', p]);
      return { engineForced: false, unmounted: true };
    },
  };
}
