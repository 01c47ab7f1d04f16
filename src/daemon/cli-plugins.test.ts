import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { installCliPlugins, removeCliPlugins } from './cli-plugins.js';

async function setup() {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-plugins-'));
  const pack = path.join(dir, 'pack');
  await fs.mkdir(pack);
  await fs.writeFile(path.join(pack, 'docker-compose'), 'compose v1', { mode: 0o755 });
  await fs.writeFile(path.join(pack, 'docker-buildx'), 'buildx v1', { mode: 0o755 });
  const system = path.join(dir, 'system');
  await fs.mkdir(system);
  const places = { berthDir: path.join(dir, 'home', 'cli-plugins'), env: { DOCKER_CONFIG: path.join(dir, 'docker') }, systemDirs: [system] };
  const plugins = { 'docker-compose': path.join(pack, 'docker-compose'), 'docker-buildx': path.join(pack, 'docker-buildx') };
  return { dir, pack, system, places, plugins, userDir: path.join(dir, 'docker', 'cli-plugins') };
}

test('plugins are linked from the user folder to berth\'s copies, and updated in place', async () => {
  const t = await setup();
  try {
    const r = await installCliPlugins(t.plugins, t.places);
    assert.deepEqual(r.map((o) => [o.name, o.state]), [['docker-compose', 'linked'], ['docker-buildx', 'linked']]);
    assert.equal(await fs.readlink(path.join(t.userDir, 'docker-compose')), path.join(t.places.berthDir, 'docker-compose'));
    assert.equal(await fs.readFile(path.join(t.userDir, 'docker-compose'), 'utf8'), 'compose v1');
    await fs.writeFile(path.join(t.pack, 'docker-compose'), 'compose v2');
    await fs.utimes(path.join(t.pack, 'docker-compose'), new Date(1e12), new Date(1e12));
    await installCliPlugins(t.plugins, t.places);
    assert.equal(await fs.readFile(path.join(t.userDir, 'docker-compose'), 'utf8'), 'compose v2');
    assert.equal((await fs.stat(path.join(t.places.berthDir, 'docker-compose'))).mode & 0o777, 0o755);
  } finally {
    await fs.rm(t.dir, { recursive: true, force: true });
  }
});

test('a plugin the user has, in the user folder or system-wide, is never replaced', async () => {
  const t = await setup();
  try {
    await fs.mkdir(t.userDir, { recursive: true });
    await fs.writeFile(path.join(t.userDir, 'docker-compose'), 'mine');
    await fs.symlink('/opt/buildx', path.join(t.userDir, 'docker-buildx'));
    const r = await installCliPlugins(t.plugins, t.places);
    assert.deepEqual(r.map((o) => [o.name, o.state]), [['docker-compose', 'user'], ['docker-buildx', 'user']]);
    assert.equal(await fs.readFile(path.join(t.userDir, 'docker-compose'), 'utf8'), 'mine');
    assert.equal(await fs.readlink(path.join(t.userDir, 'docker-buildx')), '/opt/buildx');
    assert.deepEqual(await removeCliPlugins(t.places), [], 'remove leaves the user\'s plugins');
    assert.equal(await fs.readFile(path.join(t.userDir, 'docker-compose'), 'utf8'), 'mine');

    await fs.rm(t.userDir, { recursive: true });
    await installCliPlugins(t.plugins, t.places);
    await fs.writeFile(path.join(t.system, 'docker-buildx'), 'system');
    const r2 = await installCliPlugins(t.plugins, t.places);
    assert.deepEqual(r2.map((o) => [o.name, o.state]), [['docker-compose', 'linked'], ['docker-buildx', 'system']]);
    await assert.rejects(fs.lstat(path.join(t.userDir, 'docker-buildx')), 'berth\'s link would shadow the system plugin: it goes');
  } finally {
    await fs.rm(t.dir, { recursive: true, force: true });
  }
});

test('remove takes away only berth\'s links and copies', async () => {
  const t = await setup();
  try {
    await installCliPlugins(t.plugins, t.places);
    await fs.writeFile(path.join(t.userDir, 'docker-scan'), 'other');
    const removed = await removeCliPlugins(t.places);
    assert.deepEqual(removed.sort(), [path.join(t.userDir, 'docker-buildx'), path.join(t.userDir, 'docker-compose')]);
    assert.deepEqual(await fs.readdir(t.userDir), ['docker-scan']);
    await assert.rejects(fs.access(t.places.berthDir));
  } finally {
    await fs.rm(t.dir, { recursive: true, force: true });
  }
});
