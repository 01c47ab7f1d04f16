import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { canonicalJson, computeImageKey, snapshotPackInputs } from './cache-key.js';
import { sampleManifest } from '../../test/support/manifest-fixture.js';

async function fixture(): Promise<{ dir: string; opts: { manifestPath: string; guestDir: string; agentBundle: string } }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-key-'));
  const guestDir = path.join(dir, 'guest');
  await fs.mkdir(path.join(guestDir, 'rootfs', 'usr', 'lib', 'berth'), { recursive: true });
  await fs.writeFile(path.join(guestDir, 'manifest.json'), JSON.stringify(sampleManifest(), null, 2));
  await fs.writeFile(path.join(guestDir, 'initramfs-init'), '#!/bin/busybox sh\necho init\n', { mode: 0o755 });
  await fs.writeFile(path.join(guestDir, 'rootfs', 'usr', 'lib', 'berth', 'init'), '#!/bin/busybox sh\n', { mode: 0o755 });
  await fs.writeFile(path.join(dir, 'agent.cjs'), 'console.log(1)\n');
  return { dir, opts: { manifestPath: path.join(guestDir, 'manifest.json'), guestDir, agentBundle: path.join(dir, 'agent.cjs') } };
}

test('canonicalJson ignores key order and whitespace', () => {
  assert.equal(canonicalJson({ b: 1, a: [1, { d: 2, c: null }] }), canonicalJson(JSON.parse('{ "a": [1, {"c": null, "d": 2}],\n "b": 1 }')));
  assert.equal(canonicalJson({ a: 'x' }), '{"a":"x"}');
});

test('the key is stable and changes with every input', async () => {
  const { dir, opts } = await fixture();
  try {
    const k0 = await computeImageKey(opts);
    assert.match(k0, /^[0-9a-f]{64}$/);
    assert.equal(await computeImageKey(opts), k0, 'same inputs, same key');

    // Reformatting the manifest (whitespace, key order) does not change the key.
    const m = sampleManifest();
    const reordered = Object.fromEntries(Object.entries(m).reverse());
    await fs.writeFile(opts.manifestPath, JSON.stringify(reordered, null, 7) + '\n\n');
    assert.equal(await computeImageKey(opts), k0, 'reformatted manifest');

    const keys = new Set([k0]);
    const changed = async (what: string) => {
      const k = await computeImageKey(opts);
      assert.ok(!keys.has(k), `${what} must change the key`);
      keys.add(k);
    };
    (m.base as { packages: string[] }).packages.push('tini');
    await fs.writeFile(opts.manifestPath, JSON.stringify(m));
    await changed('a manifest change');
    await fs.appendFile(opts.agentBundle, '// more\n');
    await changed('an agent change');
    await fs.appendFile(path.join(opts.guestDir, 'initramfs-init'), 'echo more\n');
    await changed('an initramfs-init change');
    await fs.chmod(path.join(opts.guestDir, 'rootfs', 'usr', 'lib', 'berth', 'init'), 0o644);
    await changed('losing the executable bit');
    await fs.writeFile(path.join(opts.guestDir, 'rootfs', 'etc-new'), '');
    await changed('a new guest file');
    await fs.mkdir(path.join(opts.guestDir, 'rootfs', 'mnt'));
    await changed('a new (empty) guest directory');
    await fs.symlink('init', path.join(opts.guestDir, 'rootfs', 'usr', 'lib', 'berth', 'init2'));
    await changed('a new symlink');

    // Mode bits other than the executable bit (umask differences) do not count.
    const before = await computeImageKey(opts);
    await fs.chmod(path.join(opts.guestDir, 'initramfs-init'), 0o775);
    assert.equal(await computeImageKey(opts), before);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('the base and each pack have their own keys: changing one does not rebuild the other', async () => {
  const { dir, opts } = await fixture();
  try {
    const keys = async () => ({ base: await computeImageKey(opts), p26: (await snapshotPackInputs(opts, '26')).key, p20: (await snapshotPackInputs(opts, '20.10')).key });
    const k0 = await keys();
    assert.notEqual(k0.p26, k0.p20);
    assert.notEqual(k0.base, k0.p26);
    const m = sampleManifest() as { base: { packages: string[] }; packs: Array<{ packages: string[] }>; sources: { trixie: { lines: string[] } } };

    m.packs[0]!.packages.push('docker-compose');
    await fs.writeFile(opts.manifestPath, JSON.stringify(m));
    const k1 = await keys();
    assert.equal(k1.base, k0.base, 'a pack change keeps the base');
    assert.equal(k1.p20, k0.p20, 'a pack change keeps the other packs');
    assert.notEqual(k1.p26, k0.p26);

    m.sources.trixie.lines.push('http://deb.debian.org/debian trixie-updates main');
    await fs.writeFile(opts.manifestPath, JSON.stringify(m));
    const k2 = await keys();
    assert.equal(k2.base, k0.base, 'the base does not use that source');
    assert.equal(k2.p20, k0.p20);
    assert.notEqual(k2.p26, k1.p26, 'the pack of that source changes');

    m.base.packages.push('tini');
    await fs.writeFile(opts.manifestPath, JSON.stringify(m));
    await fs.appendFile(opts.agentBundle, '// more\n');
    await fs.appendFile(path.join(opts.guestDir, 'initramfs-init'), 'echo more\n');
    const k3 = await keys();
    assert.notEqual(k3.base, k2.base);
    assert.equal(k3.p26, k2.p26, 'base packages, the agent and guest files do not rebuild a pack');
    assert.equal(k3.p20, k2.p20);

    await assert.rejects(snapshotPackInputs(opts, '19.03'), (err: unknown) => err instanceof BerthError && err.code === 'ENGINE_UNKNOWN' && /26, 20\.10/.test(err.message));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('missing inputs fail clearly', async () => {
  const { dir, opts } = await fixture();
  try {
    await fs.rm(opts.agentBundle);
    await assert.rejects(computeImageKey(opts), (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_BUILD_FAILED' && /agent bundle/.test(err.message) && /npm run build/.test(err.hint ?? ''));
    await fs.writeFile(opts.manifestPath, '{"format": 1}');
    await assert.rejects(computeImageKey(opts), (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_MANIFEST_INVALID');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
