import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { createMergedUsrTree, extractAll, extractDeb, kernelReleaseOf, parseKernelRelease, parseMd5sumsKernelRelease, prune } from './extract.js';
import { applyFixups, applyPackFixups, copyOverlay, installAgent, parseBinfmtDefinition } from './fixups.js';

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-extract-'));
  try {
    await fn(dir);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Builds a tiny .deb with dpkg-deb from a directory tree (files under /bin and /usr/share/doc). */
async function makeDeb(dir: string): Promise<string> {
  const src = path.join(dir, 'pkg');
  await fs.mkdir(path.join(src, 'DEBIAN'), { recursive: true });
  await fs.writeFile(path.join(src, 'DEBIAN', 'control'), 'Package: berth-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n');
  await fs.mkdir(path.join(src, 'bin'), { recursive: true });
  await fs.writeFile(path.join(src, 'bin', 'tool'), '#!/bin/sh\n', { mode: 0o755 });
  await fs.mkdir(path.join(src, 'lib', 'systemd'), { recursive: true });
  await fs.writeFile(path.join(src, 'lib', 'systemd', 'unit'), 'x');
  await fs.mkdir(path.join(src, 'usr', 'share', 'doc', 'berth-test'), { recursive: true });
  await fs.writeFile(path.join(src, 'usr', 'share', 'doc', 'berth-test', 'README'), 'doc');
  const deb = path.join(dir, 'berth-test_1.0_all.deb');
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', src, deb], { stdio: 'ignore' });
  return deb;
}

test('packages unpack through the merged-/usr links; prune follows them', async () => {
  await withTmp(async (dir) => {
    const deb = await makeDeb(dir);
    const root = path.join(dir, 'root with space');
    await createMergedUsrTree(root);
    await extractDeb(deb, root);
    assert.ok((await fs.lstat(path.join(root, 'bin'))).isSymbolicLink(), '/bin is still a link');
    assert.equal(await fs.readlink(path.join(root, 'bin')), 'usr/bin');
    const tool = await fs.stat(path.join(root, 'usr', 'bin', 'tool'));
    assert.equal(tool.mode & 0o777, 0o755);
    assert.equal((await fs.stat(root)).mode & 0o777, 0o755);
    await prune(root, ['usr/share/doc', 'lib/systemd']);
    await assert.rejects(fs.access(path.join(root, 'usr', 'share', 'doc')));
    await assert.rejects(fs.access(path.join(root, 'usr', 'lib', 'systemd')));
    assert.ok((await fs.lstat(path.join(root, 'lib'))).isSymbolicLink(), 'pruning lib/systemd keeps the lib link');
  });
});

test('extractAll unpacks in order, reports each package, and leaves no scratch files', async () => {
  await withTmp(async (dir) => {
    const deb = await makeDeb(dir);
    const root = path.join(dir, 'root');
    await createMergedUsrTree(root);
    const done: number[] = [];
    await extractAll([deb, deb, deb, deb, deb], root, { scratch: path.join(dir, 'tars'), parallel: 3, onDone: (n) => done.push(n) });
    assert.deepEqual(done, [1, 2, 3, 4, 5]);
    assert.deepEqual(await fs.readdir(path.join(dir, 'tars')), []);
    assert.ok((await fs.stat(path.join(root, 'usr', 'bin', 'tool'))).isFile());
    assert.equal((await fs.stat(root)).mode & 0o777, 0o755);

    const broken = path.join(dir, 'broken_1_all.deb');
    await fs.writeFile(broken, 'not a deb');
    const done2: number[] = [];
    await assert.rejects(
      extractAll([deb, broken, deb, deb], root, { scratch: path.join(dir, 'tars2'), parallel: 2, onDone: (n) => done2.push(n) }),
      (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_EXTRACT_FAILED' && /broken_1_all\.deb/.test(err.message),
    );
    assert.deepEqual(done2, [1]);
  });
});

test('a damaged package is IMAGE_EXTRACT_FAILED', async () => {
  await withTmp(async (dir) => {
    const deb = path.join(dir, 'broken_1_all.deb');
    await fs.writeFile(deb, 'not a deb');
    await createMergedUsrTree(path.join(dir, 'root'));
    await assert.rejects(extractDeb(deb, path.join(dir, 'root')), (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_EXTRACT_FAILED' && /broken_1_all\.deb/.test(err.message));
  });
});

test('the kernel release comes from the regular file /boot/vmlinuz-*', () => {
  const listing = [
    'drwxr-xr-x root/root         0 2025-10-20 14:44 ./boot/',
    '-rw-r--r-- root/root   4112431 2025-10-20 14:44 ./boot/System.map-6.1.0-56-amd64',
    '-rw-r--r-- root/root   8192000 2025-10-20 14:44 ./boot/vmlinuz-6.1.0-56-amd64',
    'lrwxrwxrwx root/root         0 2025-10-20 14:44 ./boot/vmlinuz-link -> vmlinuz-6.1.0-56-amd64',
  ].join('\n');
  assert.equal(parseKernelRelease(listing), '6.1.0-56-amd64');
  assert.equal(parseKernelRelease('-rw-r--r-- root/root 1480 2025-10-20 14:44 ./usr/share/doc/linux-image-amd64/copyright'), undefined);
  const md5sums = '0d8adc540aa4bb8269e5b9d5eb93c188  boot/System.map-6.1.0-56-amd64\n1d8adc540aa4bb8269e5b9d5eb93c188  boot/vmlinuz-6.1.0-56-amd64\n';
  assert.equal(parseMd5sumsKernelRelease(md5sums), '6.1.0-56-amd64');
  assert.equal(parseMd5sumsKernelRelease('f9671c9afa74ea7a675edfb933c21364  usr/share/bug/linux-image-amd64/presubj\n'), undefined);
});

test('kernelReleaseOf reads a real package (with and without md5sums)', async () => {
  await withTmp(async (dir) => {
    const src = path.join(dir, 'pkg');
    await fs.mkdir(path.join(src, 'DEBIAN'), { recursive: true });
    await fs.mkdir(path.join(src, 'boot'), { recursive: true });
    await fs.writeFile(path.join(src, 'DEBIAN', 'control'), 'Package: linux-image-9.9.9-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n');
    await fs.writeFile(path.join(src, 'boot', 'vmlinuz-9.9.9-test'), 'kernel');
    const without = path.join(dir, 'without.deb');
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', src, without], { stdio: 'ignore' });
    assert.equal(await kernelReleaseOf(without), '9.9.9-test');
    await fs.writeFile(path.join(src, 'DEBIAN', 'md5sums'), '0123456789abcdef0123456789abcdef  boot/vmlinuz-9.9.9-test\n');
    const withSums = path.join(dir, 'with.deb');
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', src, withSums], { stdio: 'ignore' });
    assert.equal(await kernelReleaseOf(withSums), '9.9.9-test');
  });
});

test('fixups, overlay and agent', async () => {
  await withTmp(async (dir) => {
    const root = path.join(dir, 'root');
    await createMergedUsrTree(root);
    await fs.mkdir(path.join(root, 'etc'), { recursive: true });
    await fs.symlink('../usr/lib/os-release', path.join(root, 'etc', 'os-release'));
    await applyFixups(root, { key: 'abc123', imageJson: '{"key":"abc123"}\n' });
    assert.match(await fs.readFile(path.join(root, 'etc', 'os-release'), 'utf8'), /NAME="berth guest"[\s\S]*BERTH_IMAGE_KEY=abc123/);
    assert.match(await fs.readFile(path.join(root, 'etc', 'group'), 'utf8'), /^docker:x:999:$/m);
    assert.match(await fs.readFile(path.join(root, 'etc', 'passwd'), 'utf8'), /^root:x:0:0:/);
    assert.equal(await fs.readFile(path.join(root, 'etc', 'berth', 'image.json'), 'utf8'), '{"key":"abc123"}\n');
    for (const d of ['proc', 'sys', 'dev', 'run', 'mnt/data', 'var/lib/docker', 'var/lib/containerd']) assert.ok((await fs.stat(path.join(root, d))).isDirectory(), d);
    assert.equal((await fs.stat(path.join(root, 'tmp'))).mode & 0o7777, 0o1777);

    const overlay = path.join(dir, 'overlay');
    await fs.mkdir(path.join(overlay, 'usr', 'lib', 'berth'), { recursive: true });
    await fs.mkdir(path.join(overlay, 'lib', 'firmware'), { recursive: true });
    await fs.mkdir(path.join(overlay, 'etc', 'docker'), { recursive: true });
    await fs.writeFile(path.join(overlay, 'usr', 'lib', 'berth', 'init'), '#!/bin/busybox sh\n');
    await fs.chmod(path.join(overlay, 'usr', 'lib', 'berth', 'init'), 0o750);
    await fs.writeFile(path.join(overlay, 'etc', 'docker', 'daemon.json'), '{}');
    await fs.chmod(path.join(overlay, 'etc', 'docker', 'daemon.json'), 0o600);
    await fs.writeFile(path.join(overlay, 'lib', 'firmware', 'fw.bin'), 'fw');
    await fs.symlink('init', path.join(overlay, 'usr', 'lib', 'berth', 'init-link'));
    assert.equal(await copyOverlay(overlay, root), 4);
    assert.equal((await fs.stat(path.join(root, 'usr', 'lib', 'berth', 'init'))).mode & 0o7777, 0o750);
    assert.equal((await fs.stat(path.join(root, 'etc', 'docker', 'daemon.json'))).mode & 0o7777, 0o600);
    assert.equal(await fs.readlink(path.join(root, 'usr', 'lib', 'berth', 'init-link')), 'init');
    assert.ok((await fs.lstat(path.join(root, 'lib'))).isSymbolicLink(), 'overlay paths under /lib land in /usr/lib');
    assert.equal(await fs.readFile(path.join(root, 'usr', 'lib', 'firmware', 'fw.bin'), 'utf8'), 'fw');
    assert.equal(await copyOverlay(path.join(dir, 'no-such-dir'), root), 0);

    await installAgent(Buffer.from('agent'), root);
    const agent = path.join(root, 'usr', 'lib', 'berth', 'agent.cjs');
    assert.equal(await fs.readFile(agent, 'utf8'), 'agent');
    assert.equal((await fs.stat(agent)).mode & 0o7777, 0o644);
  });
});

test('pack fixups: iptables links, only the wanted emulators, their binfmt registrations', async () => {
  await withTmp(async (dir) => {
    const root = path.join(dir, 'root');
    await createMergedUsrTree(root);
    const pack = { id: '26', title: 'Docker 26', source: 'trixie', packages: ['docker.io'], emulators: ['aarch64', 'riscv64'] };
    await assert.rejects(applyPackFixups(root, pack, '{}'), (err: unknown) => err instanceof BerthError && /xtables-legacy-multi/.test(err.message));
    await fs.writeFile(path.join(root, 'usr', 'sbin', 'xtables-legacy-multi'), '', { mode: 0o755 });
    const bin = path.join(root, 'usr', 'bin');
    const conf = path.join(root, 'usr', 'share', 'qemu', 'binfmt.d');
    const libexec = path.join(root, 'usr', 'libexec', 'qemu-binfmt');
    await fs.mkdir(conf, { recursive: true });
    await fs.mkdir(libexec, { recursive: true });
    const aarch64 = ':qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF\n';
    for (const arch of ['aarch64', 'mips', 'riscv64']) {
      await fs.writeFile(path.join(bin, `qemu-${arch}`), 'elf', { mode: 0o755 });
      await fs.symlink(`../../bin/qemu-${arch}`, path.join(libexec, `${arch}-binfmt-P`));
      await fs.writeFile(path.join(conf, `qemu-${arch}.conf`), arch === 'riscv64' ? '# comment\n' + aarch64.replaceAll('aarch64', 'riscv64') : aarch64.replaceAll('aarch64', arch));
    }
    await fs.mkdir(path.join(root, 'etc', 'containerd'), { recursive: true });
    await fs.writeFile(path.join(root, 'etc', 'containerd', 'config.toml'), 'from the package');
    const r = await applyPackFixups(root, pack, '{"id":"26"}\n');
    await assert.rejects(fs.access(path.join(root, 'etc', 'containerd', 'config.toml')), 'the base\'s containerd config must show through');
    assert.deepEqual(r.emulators, ['aarch64', 'riscv64']);
    assert.equal(await fs.readlink(path.join(root, 'usr', 'sbin', 'ip6tables-restore')), 'xtables-legacy-multi');
    assert.deepEqual((await fs.readdir(bin)).sort(), ['qemu-aarch64', 'qemu-riscv64']);
    assert.deepEqual((await fs.readdir(libexec)).sort(), ['aarch64-binfmt-P', 'riscv64-binfmt-P']);
    assert.deepEqual((await fs.readdir(conf)).sort(), ['qemu-aarch64.conf', 'qemu-riscv64.conf']);
    const lines = (await fs.readFile(path.join(root, 'usr', 'lib', 'berth', 'binfmt.conf'), 'utf8')).trim().split('\n');
    assert.equal(lines.length, 2);
    const [arch, reg] = lines[0]!.split('\t') as [string, string];
    assert.equal(arch, 'aarch64');
    // Debian's magic and mask, our flags: F (works in containers), C (set-uid credentials), P, O.
    assert.equal(reg, aarch64.trim().replace(/:OPF$/, ':POCF'));
    assert.equal(await fs.readFile(path.join(root, 'etc', 'berth', 'engine.json'), 'utf8'), '{"id":"26"}\n');

    // An emulator the manifest promises but the packages lack is an error.
    await assert.rejects(applyPackFixups(root, { ...pack, emulators: ['s390x'] }, '{}'), (err: unknown) => err instanceof BerthError && /s390x/.test(err.message));
  });
});

test('binfmt definitions are parsed strictly', () => {
  assert.deepEqual(parseBinfmtDefinition(':qemu-arm:M::\\x7fELF:\\xff\\xff:/usr/bin/qemu-arm:F'), { offset: '', magic: '\\x7fELF', mask: '\\xff\\xff' });
  assert.equal(parseBinfmtDefinition(':qemu-arm:E::exe::/usr/bin/qemu-arm:F'), undefined, 'extension entries are not used');
  assert.equal(parseBinfmtDefinition(':qemu-arm:M::\\x7fELF:\\xff:/usr/bin/qemu-arm:F:extra'), undefined);
  assert.equal(parseBinfmtDefinition(':qemu-arm:M::\\x7f ELF:\\xff:/x:F'), undefined, 'no spaces in magic');
  assert.equal(parseBinfmtDefinition('# only a comment\n'), undefined);
});
