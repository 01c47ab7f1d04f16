import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Mux } from '../control/mux.js';
import { linkPair } from '../control/memory-link.js';
import { call, serveAgentApi } from '../control/rpc.js';
import { BerthError } from '../util/errors.js';
import { silentLogger } from '../util/log.js';
import { Engine } from './engine.js';
import { SharedFolders } from './shared-folders.js';
import { rpcHandlers } from './rpc-handlers.js';

/**
 * The agent's handlers behind the typed table, over a real Mux pair, on a temporary folder of
 * this Linux host. Only methods that need no VM: pins, verify, the engine's state (never
 * started here) and system.info.
 */
test('the agent handlers answer through the table: pin, verify, unpin, engine.status, system.info', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-rpc-'));
  fs.mkdirSync(path.join(root, 'sub'));
  fs.symlinkSync('/etc', path.join(root, 'link'));
  const folders = new SharedFolders(silentLogger);
  const [a, b] = linkPair();
  const host = new Mux(a, { role: 'host', helloIntervalMs: 20 });
  const guest = new Mux(b, { role: 'guest', helloIntervalMs: 20 });
  t.after(() => {
    host.close();
    folders.close();
    fs.rmSync(root, { recursive: true, force: true });
  });
  await once(host, 'session');
  const paths = { dockerSocket: path.join(root, 'none.sock'), dockerdPid: path.join(root, 'd.pid'), containerdPid: path.join(root, 'c.pid'), engineUp: '/bin/false', engineLog: path.join(root, 'engine.log') };
  const engine = new Engine(paths, silentLogger);
  serveAgentApi(guest, rpcHandlers({ engine, folders, streamCount: () => guest.streamCount, agentVersion: '9', log: silentLogger }));

  const pinned = await call(host, 'fs.pin', { paths: [root] }, 5000);
  assert.equal(pinned.pinned[root], 2, 'the root and its folder');
  assert.equal(pinned.total, 2);

  const verified = await call(host, 'fs.verify', { paths: [root, path.join(root, 'link'), path.join(root, 'gone')] }, 5000);
  assert.deepEqual(
    verified.results.map((r) => [r.kind, r.resolved]),
    [
      ['dir', root],
      ['dir', '/etc'],
      ['missing', null],
    ],
  );

  assert.deepEqual(await call(host, 'fs.unpin', { paths: [root] }, 5000), { total: 0 });
  await assert.rejects(call(host, 'fs.unpin', { paths: ['sub'] }, 5000), (e: unknown) => e instanceof BerthError && e.code === 'USAGE' && /fs\.unpin: paths/.test(e.message));

  assert.equal((await call(host, 'engine.status', {}, 5000)).state, 'starting');
  const info = await call(host, 'system.info', {}, 5000);
  assert.equal(info.agentVersion, '9');
  assert.equal(info.kernel, os.release());
  assert.equal(info.streams, 1, 'the rpc stream answering');
});
