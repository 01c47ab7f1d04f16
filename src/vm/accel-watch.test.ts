import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { watchForAccelFailure } from './accel-watch.js';
import { BerthError } from '../util/errors.js';

test('a KVM internal error appearing in qemu.log fails the boot at once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-accel-watch-'));
  const log = path.join(dir, 'qemu.log');
  fs.writeFileSync(log, 'qemu-system-x86_64: warning: something harmless\n');
  const w = watchForAccelFailure(log, 'kvm');
  try {
    setTimeout(() => fs.appendFileSync(log, 'KVM internal error. Suberror: 1\nemulation failure\n'), 300);
    const t0 = Date.now();
    await assert.rejects(w.failed, (e: unknown) => e instanceof BerthError && e.code === 'ACCEL_FAILED_AT_RUNTIME' && /KVM internal error\. Suberror: 1/.test(e.message) && /accelerator tcg/.test(e.hint ?? ''));
    assert.ok(Date.now() - t0 < 2000);
  } finally {
    w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a clean log never fails, and stop() ends the watch', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-accel-watch-'));
  const log = path.join(dir, 'qemu.log');
  fs.writeFileSync(log, '');
  const w = watchForAccelFailure(log, 'kvm');
  let failed = false;
  w.failed.catch(() => {
    failed = true;
  });
  await new Promise((r) => setTimeout(r, 700));
  w.stop();
  fs.appendFileSync(log, 'KVM internal error. Suberror: 1\n');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(failed, false);
  fs.rmSync(dir, { recursive: true, force: true });
});
