import { parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import { P9Server } from './p9-server.js';
import { QidMap } from './qids.js';
import { Share, type ShareSpec } from './share.js';
import { ChangeEvents } from './change-events.js';
import type { ActRequest } from '../control/actuator.js';
import { TicketBook, type Ticket } from './tickets.js';
import type { WorkerLogRecord } from '../util/supervised-worker.js';

/**
 * The file server's worker thread (docs/files.md): its own event loop and heap, so slow host
 * disks never delay the translator or the daemon's API, and a crash here ends only file sharing.
 * Synchronous fs calls are fine here: this thread does nothing else. It also follows host changes
 * in bind-mounted folders (change-events.ts) and asks the daemon to replay them in the guest.
 */
export interface FsWorkerConfig {
  socketPath: string;
  shares: ShareSpec[];
  maxMsize: number;
  /** This file server's change-event actuator uid (control/actuator.ts). */
  actuatorUid: number;
}

/** Daemon → worker. */
export type ToFsWorker =
  | { type: 'roots'; paths: string[]; id?: number }
  | { type: 'acted'; id: number; error?: string }
  | { type: 'drain'; id: number }
  | { type: 'tickets'; tickets: Ticket[] }
  | { type: 'revoke-tickets' }
  | { type: 'stop' };

/** Worker → daemon. */
export type FsWorkerMessage =
  | { type: 'ready' }
  | { type: 'act'; id: number; req: ActRequest }
  | { type: 'drained'; id: number }
  /** The roots of a 'roots' message are watched now. */
  | { type: 'rooted'; id: number }
  | WorkerLogRecord;

const cfg = workerData as FsWorkerConfig;
const port = parentPort!;
const post = (m: FsWorkerMessage) => port.postMessage(m);
const log = (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => post({ type: 'log', level, msg, ...(fields ? { fields } : {}) });

const shares = new Map<string, Share>();
for (const spec of cfg.shares) shares.set(spec.id, new Share(spec));
const qids = new QidMap();

let nextAct = 1;
const acting = new Map<number, (error?: string) => void>();
const events = new ChangeEvents(
  [...shares.values()],
  (req) =>
    new Promise<void>((resolve, reject) => {
      const id = nextAct++;
      acting.set(id, (error) => (error ? reject(new Error(error)) : resolve()));
      post({ type: 'act', id, req });
    }),
  log,
  undefined,
  cfg.actuatorUid,
);

const tickets = new TicketBook();
const server = new P9Server({ shares, tickets, maxMsize: cfg.maxMsize, qids, log, actuator: events.hooks, guestChanged: (s, c) => events.guestChanged(s, c) });
fs.rmSync(cfg.socketPath, { force: true });
await server.listen(cfg.socketPath);
fs.chmodSync(cfg.socketPath, 0o600);
post({ type: 'ready' });
port.on('message', (m: ToFsWorker) => {
  switch (m.type) {
    case 'roots':
      events.setRoots(m.paths);
      if (m.id !== undefined) post({ type: 'rooted', id: m.id });
      break;
    case 'acted':
      acting.get(m.id)?.(m.error);
      acting.delete(m.id);
      break;
    case 'drain':
      void events.drain().then(() => post({ type: 'drained', id: m.id }));
      break;
    case 'tickets':
      for (const t of m.tickets) tickets.add(t);
      break;
    case 'revoke-tickets':
      tickets.revokeAll();
      break;
    case 'stop':
      events.close();
      void server.close().then(() => {
        // The shares' folder handles (share.ts): this is a thread, its descriptors outlive it.
        for (const s of shares.values()) s.close();
        port.close();
      });
      break;
  }
});
