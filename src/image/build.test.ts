import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import { buildImage, buildPack, findImage, IMAGE_FILES, upstreamVersion, type BuildOptions, type ImageVersions } from './build.js';
import { computeImageKey } from './cache-key.js';
import { checkHostTools } from './host-tools.js';
import { sampleManifest } from '../../test/support/manifest-fixture.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

async function inputs(manifest: unknown): Promise<{ dir: string; opts: BuildOptions }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-build-'));
  const guestDir = path.join(dir, 'guest');
  await fs.mkdir(path.join(guestDir, 'rootfs', 'etc'), { recursive: true });
  await fs.writeFile(path.join(guestDir, 'initramfs-init'), '#!/bin/busybox sh\necho berth test init\n', { mode: 0o755 });
  await fs.writeFile(path.join(guestDir, 'rootfs', 'etc', 'berth-test'), 'from guest/rootfs\n');
  const manifestPath = path.join(dir, 'manifest.json');
  await fs.writeFile(manifestPath, typeof manifest === 'string' ? manifest : JSON.stringify(manifest));
  await fs.writeFile(path.join(dir, 'agent.cjs'), '"use strict"; console.log("agent");\n');
  return { dir, opts: { manifestPath, guestDir, agentBundle: path.join(dir, 'agent.cjs'), cacheDir: path.join(dir, 'cache') } };
}

/** Writes what a finished build leaves, without building (for the cache paths). */
async function fakeImage(opts: BuildOptions, omit?: string): Promise<string> {
  const key = await computeImageKey(opts);
  const dir = path.join(opts.cacheDir, 'images', key);
  await fs.mkdir(dir, { recursive: true });
  for (const f of [IMAGE_FILES.vmlinux, IMAGE_FILES.initramfs, IMAGE_FILES.rootfs]) if (f !== omit) await fs.writeFile(path.join(dir, f), 'x');
  const versions: Partial<ImageVersions> = { key, manifestName: 'berth-guest' };
  await fs.writeFile(path.join(dir, IMAGE_FILES.versions), JSON.stringify(versions));
  return key;
}

test('a cached key is returned at once with one image.cache step; incomplete images do not count', async () => {
  const { dir, opts } = await inputs(sampleManifest());
  try {
    assert.equal(await findImage(opts), undefined);
    await fakeImage(opts, IMAGE_FILES.rootfs);
    assert.equal(await findImage(opts), undefined, 'no rootfs, no image');
    const key = await fakeImage(opts);
    const found = await findImage(opts);
    assert.equal(found?.key, key);
    assert.equal(found?.cached, true);

    const events: ProgressEvent[] = [];
    const t0 = performance.now();
    const info = await buildImage({ ...opts, onProgress: (e) => events.push(e) });
    assert.ok(performance.now() - t0 < 1000);
    assert.equal(info.cached, true);
    assert.equal(info.rootfs, path.join(opts.cacheDir, 'images', key, 'rootfs.squashfs'));
    assert.deepEqual(
      events.map((e) => [e.type, 'id' in e ? e.id : '', e.type === 'step-end' ? e.detail : undefined]),
      [
        ['step-begin', 'image.cache', undefined],
        ['step-end', 'image.cache', 'cache hit'],
      ],
    );
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('upstream versions drop the epoch and the Debian revision', () => {
  assert.equal(upstreamVersion('26.1.5+dfsg1-9+deb13u1+b1'), '26.1.5');
  assert.equal(upstreamVersion('20.10.24+dfsg1-1+deb12u1+b1'), '20.10.24');
  assert.equal(upstreamVersion('1:2.3~rc1-4'), '2.3');
});

test('an aborted signal stops the build with ABORTED', async () => {
  const { dir, opts } = await inputs(sampleManifest());
  try {
    await assert.rejects(buildImage({ ...opts, signal: AbortSignal.abort() }), (err: unknown) => err instanceof BerthError && err.code === 'ABORTED');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

const hasTools = await checkHostTools().then(
  () => true,
  () => false,
);

test('a package apt does not know fails at resolve naming it, and cleans up', { skip: !hasTools && 'host tools missing' }, async () => {
  const m = sampleManifest() as { base: { packages: string[] } };
  m.base.packages.push('berth-no-such-package');
  const { dir, opts } = await inputs(m);
  try {
    const events: ProgressEvent[] = [];
    await assert.rejects(buildImage({ ...opts, onProgress: (e) => events.push(e) }), (err: unknown) => {
      assert.ok(err instanceof BerthError);
      assert.equal(err.code, 'IMAGE_RESOLVE_FAILED');
      assert.match(err.message, /berth-no-such-package/);
      assert.match(err.hint ?? '', /apt-get update/);
      return true;
    });
    assert.deepEqual(events.filter((e) => e.type === 'step-end').map((e) => e.type === 'step-end' && [e.id, e.ok]), [['image.resolve', false]]);
    assert.deepEqual(await fs.readdir(path.join(opts.cacheDir, 'images')), [], 'no .partial or .lock left');
    assert.deepEqual(await fs.readdir(path.join(opts.cacheDir, 'tmp')), [], 'work directory removed');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('aborting during resolution kills apt and cleans up', { skip: !hasTools && 'host tools missing' }, async () => {
  const { dir, opts } = await inputs(sampleManifest());
  try {
    const ac = new AbortController();
    const p = buildImage({ ...opts, signal: ac.signal, onProgress: (e) => e.type === 'step-begin' && e.id === 'image.resolve' && setTimeout(() => ac.abort(), 50) });
    await assert.rejects(p, (err: unknown) => err instanceof BerthError && err.code === 'ABORTED');
    assert.deepEqual(await fs.readdir(path.join(opts.cacheDir, 'images')), []);
    assert.deepEqual(await fs.readdir(path.join(opts.cacheDir, 'tmp')), []);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

// The real build: downloads ~190 MB of Debian packages (kept in the cache directory for next time).
// BERTH_IMAGE_TEST=1 enables it; BERTH_IMAGE_TEST_CACHE picks the cache (default /tmp/berth-image-test-cache).
test('real build from guest/manifest.json', { skip: process.env.BERTH_IMAGE_TEST !== '1' && 'set BERTH_IMAGE_TEST=1 (downloads ~190 MB)', timeout: 30 * 60_000 }, async () => {
  const { dir, opts } = await inputs(await fs.readFile(path.join(repoRoot, 'guest', 'manifest.json'), 'utf8'));
  const cacheDir = process.env.BERTH_IMAGE_TEST_CACHE ?? path.join(os.tmpdir(), 'berth-image-test-cache');
  try {
    const events: ProgressEvent[] = [];
    const info = await buildImage({ ...opts, cacheDir, force: true, onProgress: (e) => events.push(e) });
    assert.equal(info.cached, false);
    const ends = events.filter((e): e is Extract<ProgressEvent, { type: 'step-end' }> => e.type === 'step-end');
    assert.deepEqual(
      ends.map((e) => e.id),
      ['image.resolve', 'image.download', 'image.extract', 'image.modules', 'image.kernel', 'image.initramfs', 'image.rootfs', 'image.finalize'],
    );
    for (const e of ends) console.log(`# ${e.id} ${e.ms} ms: ${e.detail ?? ''}`);

    const head = Buffer.alloc(4);
    const fh = await fs.open(info.vmlinux, 'r');
    await fh.read(head, 0, 4, 0);
    await fh.close();
    assert.deepEqual(head, Buffer.from([0x7f, 0x45, 0x4c, 0x46]), 'vmlinux is ELF');

    const cpio = execFileSync('cpio', ['-t', '--quiet'], { input: await fs.readFile(info.initramfs) }).toString().split('\n');
    for (const p of ['init', 'bin/busybox', 'newroot', 'lower', 'upper']) assert.ok(cpio.includes(p), `initramfs has ${p}`);
    assert.ok(cpio.some((p) => /^lib\/modules\/boot\/00-\w+\.ko$/.test(p)));

    const listing = execFileSync('unsquashfs', ['-l', info.rootfs], { maxBuffer: 64 << 20 }).toString().split('\n');
    const release = info.versions.kernel.release;
    for (const p of ['usr/bin/node', 'usr/lib/berth/agent.cjs', `usr/lib/modules/${release}/modules.dep`, 'etc/berth/image.json', 'etc/berth-test']) {
      assert.ok(listing.includes(`squashfs-root/${p}`), `rootfs has /${p}`);
    }
    assert.ok(!listing.includes('squashfs-root/usr/sbin/dockerd'), 'the engine is in the packs, not the base');
    assert.match(info.versions.node, /^18\./);
    assert.ok(!('perl-base' in info.versions.packages), 'excluded packages are not installed');

    const pack = await buildPack({ ...opts, cacheDir, force: true }, '26');
    assert.equal(pack.versions.engineVersion.split('.')[0], '26');
    assert.deepEqual(pack.versions.emulators, ['aarch64', 'arm', 'riscv64', 'ppc64le', 's390x']);
    const packListing = execFileSync('unsquashfs', ['-l', pack.squashfs], { maxBuffer: 64 << 20 }).toString().split('\n');
    for (const p of ['usr/sbin/dockerd', 'usr/sbin/iptables', 'usr/bin/qemu-aarch64', 'etc/berth/engine.json', 'usr/lib/berth/binfmt.conf']) {
      assert.ok(packListing.includes(`squashfs-root/${p}`), `pack has /${p}`);
    }
    assert.ok(!packListing.includes('squashfs-root/usr/bin/qemu-mips'), 'emulators not asked for are dropped');
    assert.ok(pack.dockerCli && (await fs.stat(pack.dockerCli)).mode & 0o100);
    assert.ok(pack.cliPlugins['docker-compose'] && pack.cliPlugins['docker-buildx']);

    const t0 = performance.now();
    const again = await buildImage({ ...opts, cacheDir });
    const ms = performance.now() - t0;
    console.log(`# cache hit in ${ms.toFixed(0)} ms`);
    assert.equal(again.cached, true);
    assert.equal(again.key, info.key);
    assert.ok(ms < 1000);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
