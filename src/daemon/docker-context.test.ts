import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { registerDockerContext, unregisterDockerContext } from './docker-context.js';

const metaPath = (dir: string) => path.join(dir, 'contexts', 'meta', crypto.createHash('sha256').update('berth').digest('hex'), 'meta.json');

test('registers the context without switching the current one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ctx-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { x: {} }, currentContext: 'default' }));
  const r = await registerDockerContext('unix:///h/docker.sock', { env: { DOCKER_CONFIG: dir } });
  assert.equal(r.current, false);
  const meta = JSON.parse(fs.readFileSync(metaPath(dir), 'utf8'));
  assert.equal(meta.Name, 'berth');
  assert.equal(meta.Endpoints.docker.Host, 'unix:///h/docker.sock');
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).currentContext, 'default');
  const again = await registerDockerContext('unix:///h/docker.sock', { env: { DOCKER_CONFIG: dir } });
  assert.equal(again.changed, false);
});

test('switches when asked, keeping the other config keys', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ctx-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { 'r.example': { auth: 'x' } } }));
  const r = await registerDockerContext('unix:///h/docker.sock', { use: true, env: { DOCKER_CONFIG: dir } });
  assert.equal(r.current, true);
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert.equal(cfg.currentContext, 'berth');
  assert.deepEqual(cfg.auths, { 'r.example': { auth: 'x' } });
});

test('a config.json that does not parse is never overwritten', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ctx-'));
  fs.writeFileSync(path.join(dir, 'config.json'), '{broken');
  await registerDockerContext('unix:///h/docker.sock', { use: true, env: { DOCKER_CONFIG: dir } });
  assert.equal(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'), '{broken');
});

test('unregister removes the context and, if current, only the currentContext key', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ctx-'));
  const env = { DOCKER_CONFIG: dir };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { 'r.example': { auth: 'x' } } }));
  await registerDockerContext('unix:///h/docker.sock', { use: true, env });
  assert.deepEqual(await unregisterDockerContext(env), { removed: true, wasCurrent: true });
  assert.equal(fs.existsSync(metaPath(dir)), false);
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), { auths: { 'r.example': { auth: 'x' } } });
  assert.deepEqual(await unregisterDockerContext(env), { removed: false, wasCurrent: false }, 'a second time does nothing');
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ currentContext: 'other' }));
  await registerDockerContext('unix:///h/docker.sock', { env });
  assert.deepEqual(await unregisterDockerContext(env), { removed: true, wasCurrent: false });
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).currentContext, 'other', "another current context is the user's");
});
