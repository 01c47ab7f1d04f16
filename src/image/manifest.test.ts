import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { sampleManifest } from './manifest-fixture.js';
import { loadManifest, parseManifest, packageName, userlandPackages, validateManifest } from './manifest.js';

function expectInvalid(raw: unknown, field: string): void {
  assert.throws(
    () => validateManifest(raw),
    (err: unknown) => {
      assert.ok(err instanceof BerthError);
      assert.equal(err.code, 'IMAGE_MANIFEST_INVALID');
      assert.equal(err.details?.field, field, `field of: ${err.message}`);
      assert.match(err.message, new RegExp(`"${field.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`));
      assert.ok(err.hint);
      return true;
    },
  );
}

function mutate(fn: (m: any) => void): unknown {
  const m = sampleManifest();
  fn(m);
  return m;
}

test('a good manifest validates into the typed value', () => {
  const m = validateManifest(sampleManifest());
  assert.equal(m.name, 'berth-guest');
  assert.equal(m.kernel.package, 'linux-image-amd64');
  assert.deepEqual(m.packages.agent, ['nodejs=18.20.4+dfsg-1~deb12u3']);
  assert.deepEqual(userlandPackages(m), ['busybox-static', 'kmod', 'docker.io', 'containerd', 'runc', 'iptables', 'nodejs=18.20.4+dfsg-1~deb12u3']);
  assert.equal(packageName('nodejs=18.20.4+dfsg-1~deb12u3'), 'nodejs');
  assert.equal(packageName('busybox-static'), 'busybox-static');
});

test('exclude and prune are optional', () => {
  const m = validateManifest(mutate((m) => { delete m.exclude; delete m.prune; }));
  assert.deepEqual(m.exclude, []);
  assert.deepEqual(m.prune, []);
});

test('epoch versions are accepted', () => {
  validateManifest(mutate((m) => m.packages.base.push('bsdutils=1:2.38.1-5+deb12u3')));
});

test('bad manifests name the field', () => {
  expectInvalid([], '(top level)');
  expectInvalid(mutate((m) => (m.format = 2)), 'format');
  expectInvalid(mutate((m) => (m.arch = 'arm64')), 'arch');
  expectInvalid(mutate((m) => delete m.name), 'name');
  expectInvalid(mutate((m) => delete m.kernel), 'kernel');
  expectInvalid(mutate((m) => (m.kernel.package = 'Linux Image')), 'kernel.package');
  expectInvalid(mutate((m) => (m.kernel.modules = 'ext4')), 'kernel.modules');
  expectInvalid(mutate((m) => (m.kernel.modules = [])), 'kernel.modules');
  expectInvalid(mutate((m) => m.kernel.initramfsModules.push('ext4.ko')), 'kernel.initramfsModules[3]');
  expectInvalid(mutate((m) => (m.packages.engine[1] = 'containerd; rm -rf /')), 'packages.engine[1]');
  expectInvalid(mutate((m) => m.packages.base.push(42)), 'packages.base[2]');
  expectInvalid(mutate((m) => m.packages.base.push('kmod')), 'packages.base[2]');
  expectInvalid(mutate((m) => (m.packages.agent = ['nodejs=latest'])), 'packages.agent[0]');
  expectInvalid(mutate((m) => m.packages.agent.push('kmod=30+20221128-1')), 'packages.agent[1]');
  expectInvalid(mutate((m) => (m.exclude = ['perl=5.36'])), 'exclude[0]');
  expectInvalid(mutate((m) => m.exclude.push('kmod')), 'exclude[3]');
  expectInvalid(mutate((m) => (m.prune = ['../etc'])), 'prune[0]');
  expectInvalid(mutate((m) => (m.prune = ['/usr/share/doc'])), 'prune[0]');
  expectInvalid(mutate((m) => (m.prune = ['usr/share/../../etc'])), 'prune[0]');
});

test('unknown keys are refused (a misspelt "exclude" must not pass silently)', () => {
  expectInvalid(mutate((m) => (m.excludes = ['perl'])), 'excludes');
  expectInvalid(mutate((m) => (m.kernel.module = ['ext4'])), 'kernel.module');
  expectInvalid(mutate((m) => (m.packages.extra = ['curl'])), 'packages.extra');
});

test('invalid JSON and unreadable files are IMAGE_MANIFEST_INVALID', async () => {
  assert.throws(() => parseManifest('{"name": ', 'x.json'), (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_MANIFEST_INVALID' && /not valid JSON/.test(err.message));
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-manifest-'));
  try {
    await assert.rejects(loadManifest(path.join(dir, 'missing.json')), (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_MANIFEST_INVALID');
    await fs.writeFile(path.join(dir, 'm.json'), JSON.stringify(sampleManifest()));
    assert.equal((await loadManifest(path.join(dir, 'm.json'))).arch, 'amd64');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
