import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeCpio, type CpioEntry } from './cpio.js';
import { bootModuleName } from './initramfs.js';

// Checked against the system GNU cpio: what it lists and extracts must match what we wrote.

const entries: CpioEntry[] = [
  { kind: 'dir', path: 'dev', mode: 0o755 },
  { kind: 'dir', path: '/proc', mode: 0o555 },
  { kind: 'file', path: 'init', mode: 0o755, data: Buffer.from('#!/bin/busybox sh\necho hi\n') },
  // sizes 0..5 exercise every padding remainder; the nested path needs auto-created parents
  { kind: 'file', path: 'a/b/c/empty', mode: 0o600, data: Buffer.alloc(0) },
  ...[1, 2, 3, 4, 5].map((n): CpioEntry => ({ kind: 'file', path: `a/f${n}`, mode: 0o644, data: Buffer.alloc(n, 0x41 + n) })),
  { kind: 'file', path: 'lib/modules/boot/00-x.ko', mode: 0o644, data: Buffer.from(Array.from({ length: 70001 }, (_, i) => i % 251)) },
  { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
  { kind: 'file', path: 'bin/busybox', mode: 0o4755, data: Buffer.from('\x7fELF fake') },
];

const expectedOrder = ['dev', 'proc', 'init', 'a', 'a/b', 'a/b/c', 'a/b/c/empty', 'a/f1', 'a/f2', 'a/f3', 'a/f4', 'a/f5', 'lib', 'lib/modules', 'lib/modules/boot', 'lib/modules/boot/00-x.ko', 'bin', 'bin/sh', 'bin/busybox'];

test('cpio -t lists our archive in order, parents before children', () => {
  const archive = writeCpio(entries);
  assert.equal(archive.length % 4, 0);
  assert.equal(archive.subarray(0, 6).toString(), '070701');
  const listed = execFileSync('cpio', ['-t', '--quiet'], { input: archive }).toString().trim().split('\n');
  assert.deepEqual(listed, expectedOrder);
  const verbose = execFileSync('cpio', ['-tv', '--quiet', '--numeric-uid-gid'], { input: archive }).toString().trim().split('\n');
  for (const line of verbose) assert.match(line, /^\S+\s+\d+\s+0\s+0\s/, `owned by 0:0: ${line}`);
});

test('cpio -i extracts the same contents, modes and link targets', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cpio-'));
  try {
    execFileSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames', '--preserve-modification-time'], { input: writeCpio(entries), cwd: dir });
    for (const e of entries) {
      const p = path.join(dir, e.path);
      const st = await fs.lstat(p);
      if (e.kind === 'dir') {
        assert.ok(st.isDirectory(), e.path);
        assert.equal(st.mode & 0o7777, e.mode, e.path);
      } else if (e.kind === 'file') {
        assert.ok(st.isFile(), e.path);
        assert.deepEqual(await fs.readFile(p), e.data, e.path);
        assert.equal(st.mode & 0o7777, e.mode, e.path);
        assert.equal(st.mtimeMs, 0, 'mtime defaults to 0');
      } else {
        assert.ok(st.isSymbolicLink(), e.path);
        assert.equal(await fs.readlink(p), e.target);
      }
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('the same entries give the same bytes; bad paths and duplicates are refused', () => {
  assert.deepEqual(writeCpio(entries), writeCpio(entries));
  assert.throws(() => writeCpio([{ kind: 'dir', path: '../x', mode: 0o755 }]), /invalid path/);
  assert.throws(() => writeCpio([{ kind: 'dir', path: '', mode: 0o755 }]), /invalid path/);
  assert.throws(() => writeCpio([{ kind: 'dir', path: 'TRAILER!!!', mode: 0o755 }]), /reserved/);
  const f: CpioEntry = { kind: 'file', path: 'x', mode: 0o644, data: Buffer.from('1') };
  assert.throws(() => writeCpio([f, f]), /duplicate/);
});

test('an empty archive is just the trailer, and cpio accepts it', () => {
  const archive = writeCpio([]);
  assert.equal(archive.length, 124); // 110-byte header + "TRAILER!!!\0" (11) + 3 bytes padding
  assert.equal(execFileSync('cpio', ['-t', '--quiet'], { input: archive }).toString(), '');
});

test('boot module names sort in load order', () => {
  const names = Array.from({ length: 12 }, (_, i) => bootModuleName(i, `kernel/drivers/m-${i}.ko`, 12));
  assert.equal(names[0], '00-m_0.ko');
  assert.equal(names[11], '11-m_11.ko');
  assert.deepEqual([...names].sort(), names);
});
