import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { sampleManifest } from '../../test/support/manifest-fixture.js';
import { findPack, loadManifest, parseManifest, packageName, validateManifest } from './manifest.js';
import { DEFAULT_ENGINE } from '../settings/settings.js';

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
  assert.equal(m.base.kernel.package, 'linux-image-amd64');
  assert.deepEqual(m.base.packages, ['busybox-static', 'kmod', 'nodejs=18.20.4+dfsg-1~deb12u3']);
  assert.equal(m.base.source, 'host');
  assert.deepEqual(m.sources.trixie?.lines, ['http://deb.debian.org/debian trixie main']);
  assert.deepEqual(findPack(m, '26')?.emulators, ['aarch64']);
  assert.deepEqual(findPack(m, '20.10')?.emulators, []);
  assert.equal(findPack(m, '27'), undefined);
  assert.equal(packageName('nodejs=18.20.4+dfsg-1~deb12u3'), 'nodejs');
  assert.equal(packageName('busybox-static'), 'busybox-static');
});

test('exclude and prune are optional', () => {
  const m = validateManifest(mutate((m) => { delete m.exclude; delete m.prune; }));
  assert.deepEqual(m.exclude, []);
  assert.deepEqual(m.prune, []);
});

test('epoch versions are accepted', () => {
  validateManifest(mutate((m) => m.base.packages.push('bsdutils=1:2.38.1-5+deb12u3')));
});

test('bad manifests name the field', () => {
  expectInvalid([], '(top level)');
  expectInvalid(mutate((m) => (m.format = 1)), 'format');
  expectInvalid(mutate((m) => (m.arch = 'arm64')), 'arch');
  expectInvalid(mutate((m) => delete m.name), 'name');
  expectInvalid(mutate((m) => delete m.base.kernel), 'base.kernel');
  expectInvalid(mutate((m) => (m.base.kernel.package = 'Linux Image')), 'base.kernel.package');
  expectInvalid(mutate((m) => (m.base.kernel.modules = 'ext4')), 'base.kernel.modules');
  expectInvalid(mutate((m) => (m.base.kernel.modules = [])), 'base.kernel.modules');
  expectInvalid(mutate((m) => m.base.kernel.initramfsModules.push('ext4.ko')), 'base.kernel.initramfsModules[3]');
  expectInvalid(mutate((m) => (m.packs[0].packages[1] = 'containerd; rm -rf /')), 'packs[0].packages[1]');
  expectInvalid(mutate((m) => m.base.packages.push(42)), 'base.packages[3]');
  expectInvalid(mutate((m) => m.base.packages.push('kmod')), 'base.packages[3]');
  expectInvalid(mutate((m) => (m.base.packages[2] = 'nodejs=latest')), 'base.packages[2]');
  expectInvalid(mutate((m) => m.base.packages.push('kmod=30+20221128-1')), 'base.packages[3]');
  expectInvalid(mutate((m) => (m.packs = [])), 'packs');
  expectInvalid(mutate((m) => (m.packs[1].id = '26')), 'packs[1].id');
  expectInvalid(mutate((m) => (m.packs[1].id = 'latest')), 'packs[1].id');
  expectInvalid(mutate((m) => (m.packs[0].source = 'sid')), 'packs[0].source');
  expectInvalid(mutate((m) => (m.packs[0].source = 'constructor')), 'packs[0].source');
  expectInvalid(mutate((m) => (m.packs[0].title = 'Docker\u001b[2J')), 'packs[0].title');
  expectInvalid(mutate((m) => (m.base.source = 'sid')), 'base.source');
  expectInvalid(mutate((m) => (m.packs[0].emulators = ['aarch64;rm'])), 'packs[0].emulators[0]');
  expectInvalid(mutate((m) => (m.sources.host = m.sources.trixie)), 'sources.host');
  expectInvalid(mutate((m) => (m.sources.trixie.lines = ['ftp://x trixie main'])), 'sources.trixie.lines[0]');
  expectInvalid(mutate((m) => (m.sources.trixie.lines = ['http://deb.debian.org/debian trixie'])), 'sources.trixie.lines[0]');
  expectInvalid(mutate((m) => (m.sources.trixie.keyring = 'keyring.gpg')), 'sources.trixie.keyring');
  expectInvalid(mutate((m) => (m.sources.trixie.lines = [])), 'sources.trixie.lines');
  expectInvalid(mutate((m) => (m.exclude = ['perl=5.36'])), 'exclude[0]');
  expectInvalid(mutate((m) => m.exclude.push('kmod')), 'exclude[3]');
  expectInvalid(mutate((m) => m.exclude.push('runc')), 'exclude[3]');
  expectInvalid(mutate((m) => (m.prune = ['../etc'])), 'prune[0]');
  expectInvalid(mutate((m) => (m.prune = ['/usr/share/doc'])), 'prune[0]');
  expectInvalid(mutate((m) => (m.prune = ['usr/share/../../etc'])), 'prune[0]');
});

test('unknown keys are refused (a misspelt "exclude" must not pass silently)', () => {
  expectInvalid(mutate((m) => (m.excludes = ['perl'])), 'excludes');
  expectInvalid(mutate((m) => (m.base.kernel.module = ['ext4'])), 'base.kernel.module');
  expectInvalid(mutate((m) => (m.base.extra = ['curl'])), 'base.extra');
  expectInvalid(mutate((m) => (m.packs[0].engine = 'docker')), 'packs[0].engine');
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

test("guest/manifest.json is valid and has the setting engine.version's default pack", async () => {
  const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..');
  const m = await loadManifest(path.join(repoRoot, 'guest', 'manifest.json'));
  assert.ok(findPack(m, DEFAULT_ENGINE), `the default engine ${DEFAULT_ENGINE} is a pack of guest/manifest.json`);
  for (const p of m.packs) assert.ok(p.packages.includes('iptables'), `pack ${p.id} has iptables (the file server shield needs it)`);
});
