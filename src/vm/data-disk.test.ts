import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureDataDisk } from './data-disk.js';
import { which } from './qemu-binary.js';
import { BerthError } from '../util/errors.js';

const qemuImg = which('qemu-img');

test('data disk: created sparse, reused, grown, never shrunk', { skip: !qemuImg && 'qemu-img not installed' }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-disk-'));
  const f = path.join(dir, 'data.qcow2');
  const a = await ensureDataDisk(qemuImg!, f, 64);
  assert.equal(a.created, true);
  assert.equal(a.virtualGiB, 64);
  assert.ok(fs.statSync(f).size < 10 * 1024 * 1024, 'sparse: a new 64 GiB disk takes almost no space');
  const b = await ensureDataDisk(qemuImg!, f, 64);
  assert.equal(b.created, false);
  const c = await ensureDataDisk(qemuImg!, f, 80);
  assert.equal(c.virtualGiB, 80);
  assert.match(c.note ?? '', /grown/);
  const d = await ensureDataDisk(qemuImg!, f, 16);
  assert.equal(d.virtualGiB, 80);
  assert.match(d.note ?? '', /shrinking would lose data/);
});

test('a data disk with a backing file (possibly pointing at a host file) is refused', { skip: !qemuImg && 'qemu-img not installed' }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-disk-'));
  const f = path.join(dir, 'data.qcow2');
  execFileSync(qemuImg!, ['create', '-q', '-f', 'qcow2', '-b', '/etc/hosts', '-F', 'raw', f]);
  await assert.rejects(ensureDataDisk(qemuImg!, f, 64), (e: unknown) => e instanceof BerthError && e.code === 'DISK_FAILED' && /backing file/.test((e as Error).message));
});

test('a data disk that is not qcow2 is refused, not reformatted', { skip: !qemuImg && 'qemu-img not installed' }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-disk-'));
  const f = path.join(dir, 'data.qcow2');
  fs.writeFileSync(f, Buffer.alloc(1024 * 1024, 1));
  await assert.rejects(ensureDataDisk(qemuImg!, f, 64), /not a qcow2 image/);
  assert.equal(fs.statSync(f).size, 1024 * 1024);
});
