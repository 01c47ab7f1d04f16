import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { resolvePaths } from '../settings/paths.js';
import { BerthError } from '../util/errors.js';
import { DaemonClient } from './daemon-client.js';

/** A client for a fresh home, and a server on its daemon socket driven by `handler`. */
async function withDaemon(handler: http.RequestListener | undefined, run: (client: DaemonClient) => Promise<void>): Promise<void> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-client-'));
  const paths = resolvePaths({ BERTH_HOME: home });
  fs.mkdirSync(path.dirname(paths.daemonSocket), { recursive: true });
  const server = handler ? http.createServer(handler) : undefined;
  if (server) await new Promise<void>((r) => server.listen(paths.daemonSocket, r));
  try {
    await run(new DaemonClient(paths));
  } finally {
    server?.closeAllConnections();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    fs.rmSync(home, { recursive: true, force: true });
  }
}

test('getIfRunning: no daemon socket means no daemon', async () => {
  await withDaemon(undefined, async (client) => {
    assert.equal(await client.getIfRunning('/v1/status'), undefined);
  });
});

test('getIfRunning: a daemon that closes the connection without answering (it was exiting) means no daemon', async () => {
  await withDaemon((req) => req.socket.destroy(), async (client) => {
    assert.equal(await client.getIfRunning('/v1/status'), undefined);
  });
});

test('getIfRunning: an answer is returned; an error answer is thrown with its code', async () => {
  await withDaemon((req, res) => {
    if (req.url === '/v1/status') res.end(JSON.stringify({ state: 'running' }));
    else res.writeHead(500).end(JSON.stringify({ error: { code: 'VM_NOT_RUNNING', message: 'no VM' } }));
  }, async (client) => {
    assert.deepEqual(await client.getIfRunning('/v1/status'), { state: 'running' });
    await assert.rejects(client.getIfRunning('/v1/ports'), (e: unknown) => e instanceof BerthError && e.code === 'VM_NOT_RUNNING');
  });
});

test('getJson: a daemon that holds the socket but never answers is an error, not "no daemon"', async () => {
  await withDaemon(() => {}, async (client) => {
    await assert.rejects(client.getJson('/v1/status', 200), (e: unknown) => e instanceof BerthError && e.code === 'DAEMON_UNREACHABLE' && e.details?.noAnswer !== true && /200 ms/.test(String((e.cause as Error).message)));
  });
});
