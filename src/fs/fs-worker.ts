import { parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import { P9Server } from './p9-server.js';
import { QidMap } from './qids.js';
import { Share, type ShareSpec } from './share.js';

/**
 * The file server's worker thread (docs/files.md): its own event loop and heap, so slow host
 * disks never delay the translator or the daemon's API, and a crash here ends only file sharing.
 * Synchronous fs calls are fine here: this thread does nothing else.
 */
export interface FsWorkerConfig {
  socketPath: string;
  token: string;
  shares: ShareSpec[];
  maxMsize: number;
}

export type FsWorkerMessage = { type: 'ready' } | { type: 'log'; level: 'debug' | 'info' | 'warn'; msg: string; fields?: Record<string, unknown> };

const cfg = workerData as FsWorkerConfig;
const port = parentPort!;
const post = (m: FsWorkerMessage) => port.postMessage(m);
const log = (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => post({ type: 'log', level, msg, ...(fields ? { fields } : {}) });

const shares = new Map<string, Share>();
for (const spec of cfg.shares) shares.set(spec.id, new Share(spec));
const server = new P9Server({ shares, token: cfg.token, maxMsize: cfg.maxMsize, qids: new QidMap(), log });
fs.rmSync(cfg.socketPath, { force: true });
await server.listen(cfg.socketPath);
fs.chmodSync(cfg.socketPath, 0o600);
post({ type: 'ready' });
port.on('message', (m: { type: string }) => {
  if (m.type === 'stop') void server.close().then(() => port.close());
});
