import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { listenUnix, prepareSocketPath } from './unix-socket.js';
import { BerthError } from './errors.js';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'berth-sock-'));
const isCode = (code: string) => (e: unknown) => e instanceof BerthError && e.code === code;

test('a regular file at the socket path is refused and left intact', async () => {
  const d = tmp();
  const p = path.join(d, 'docker.sock');
  fs.writeFileSync(p, 'ORIGINAL');
  await assert.rejects(prepareSocketPath(p, 'Docker API socket'), isCode('SOCKET_IN_USE'));
  assert.equal(fs.readFileSync(p, 'utf8'), 'ORIGINAL');
});

test('a symlink planted at the socket path is refused; its target is untouched', async () => {
  const d = tmp();
  const canary = path.join(d, 'canary');
  fs.writeFileSync(canary, 'ORIGINAL');
  const p = path.join(d, 'docker.sock');
  fs.symlinkSync(canary, p);
  await assert.rejects(prepareSocketPath(p, 'Docker API socket'), isCode('SOCKET_IN_USE'));
  assert.equal(fs.readFileSync(canary, 'utf8'), 'ORIGINAL');
  assert.ok(fs.lstatSync(p).isSymbolicLink());
});

test('a live socket of another program is SOCKET_IN_USE', async () => {
  const d = tmp();
  const p = path.join(d, 'docker.sock');
  const other = net.createServer();
  await new Promise<void>((r) => other.listen(p, r));
  try {
    await assert.rejects(prepareSocketPath(p, 'Docker API socket'), (e: unknown) => isCode('SOCKET_IN_USE')(e) && /another program/.test((e as Error).message));
  } finally {
    other.close();
  }
});

test('a stale socket (nobody listening) is replaced, and the new one is 0600', async () => {
  const d = tmp();
  const p = path.join(d, 'docker.sock');
  // A process killed with -9 leaves its socket file behind with nobody accepting on it.
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(p)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  assert.ok(fs.existsSync(p), 'the killed process left its socket file');
  const s = net.createServer();
  await listenUnix(s, p, 'test socket');
  try {
    assert.equal(fs.statSync(p).mode & 0o777, 0o600);
  } finally {
    s.close();
  }
});

test('a path over the Unix socket limit is refused with a hint', async () => {
  await assert.rejects(prepareSocketPath('/tmp/' + 'x'.repeat(120), 'Docker API socket'), isCode('SOCKET_PATH_TOO_LONG'));
});
