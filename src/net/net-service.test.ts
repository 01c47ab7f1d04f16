import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Logger } from '../util/log.js';
import { NetService } from './net-service.js';
import type { NetWorkerConfig } from './worker-protocol.js';

/**
 * The daemon's supervision of the translator (docs/network.md "Process model and failure"), with a
 * real worker thread whose script is replaced by one that dies on cue: the translator's death must
 * not take the daemon down, it is restarted, it gets the published ports again, and a translator
 * that keeps dying is given up on instead of being restarted forever.
 */

/**
 * A stand-in worker: counts its starts in the file named by socketPath; dies (uncaught exception)
 * while its start number is below `crashes`; otherwise reports every forward it is given as listening.
 */
const FAKE_WORKER = `
import { parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
const counter = workerData.socketPath;
const n = fs.existsSync(counter) ? Number(fs.readFileSync(counter, 'utf8')) : 0;
fs.writeFileSync(counter, String(n + 1));
parentPort.postMessage({ type: 'link', up: true });
parentPort.on('message', (m) => {
  if (m.type === 'forwards') parentPort.postMessage({ type: 'forward-states', states: m.forwards.map((f) => ({ id: f.id, state: 'listening' })) });
  if (m.type === 'stop') { parentPort.postMessage({ type: 'stopped' }); parentPort.close(); }
});
if (n < workerData.mtu) setTimeout(() => { throw new Error('translator crashed on purpose (start ' + n + ')'); }, 100);
`;

function setup(crashes: number): { dir: string; cfg: NetWorkerConfig; url: URL; logs: string[]; log: Logger } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-netsvc-'));
  const script = path.join(dir, 'worker.mjs');
  fs.writeFileSync(script, FAKE_WORKER);
  // mtu carries the number of crashes to the fake worker (it has no network to configure).
  const cfg: NetWorkerConfig = { socketPath: path.join(dir, 'starts'), subnet: '198.19.248.0/24', mtu: crashes, allowLinkLocal: false, translatorMac: '02:b3:27:00:00:01', guestMac: '02:b3:27:00:00:02', deniedHostPorts: [] };
  const logs: string[] = [];
  return { dir, cfg, url: pathToFileURL(script), logs, log: new Logger({ write: (l) => logs.push(l) }, 'net', 'debug') };
}

const forward = { id: 'tcp/127.0.0.1:8080', proto: 'tcp' as const, hostIp: '127.0.0.1', hostPort: 8080, guestIp: '172.17.0.2', guestPort: 80 };

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('a translator that dies is restarted and gets the published ports again', async () => {
  const t = setup(1);
  const svc = new NetService(t.cfg, t.log, { workerUrl: t.url, backoffMs: 20 });
  try {
    svc.start();
    svc.setForwards([forward]);
    await until(() => svc.restarts === 1 && svc.forwardStates().get(forward.id)?.state === 'listening', 5000);
    assert.equal(fs.readFileSync(t.cfg.socketPath, 'utf8'), '2', 'the worker was started twice');
    assert.match(svc.lastFailure ?? '', /crashed on purpose \(start 0\)/);
    assert.equal(svc.isLinkUp, true);
    assert.ok(t.logs.some((l) => /ERROR .*network translator crashed/.test(l)));
    assert.ok(t.logs.some((l) => /WARN .*restarting the network translator/.test(l)));
  } finally {
    await svc.stop();
    fs.rmSync(t.dir, { recursive: true, force: true });
  }
});

test('a translator that keeps dying is tried again only every 30 s after 5 restarts within a minute', async () => {
  const t = setup(1000);
  const svc = new NetService(t.cfg, t.log, { workerUrl: t.url, backoffMs: 5 });
  try {
    svc.start();
    await until(() => t.logs.some((l) => /keeps failing; trying again in 30 s/.test(l)), 10_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(svc.restarts, 5, 'no sixth restart within the 30 s');
    assert.equal(fs.readFileSync(t.cfg.socketPath, 'utf8'), '6');
    assert.equal(svc.isLinkUp, false);
  } finally {
    await svc.stop();
    fs.rmSync(t.dir, { recursive: true, force: true });
  }
});

test('stats() of a translator that is not running answers undefined at once', async () => {
  const t = setup(0);
  const svc = new NetService(t.cfg, t.log, { workerUrl: t.url });
  assert.equal(await svc.stats(), undefined);
  fs.rmSync(t.dir, { recursive: true, force: true });
});
