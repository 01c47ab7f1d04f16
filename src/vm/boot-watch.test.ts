import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { watchForSilentBoot } from './boot-watch.js';

function tempLog(): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'berth-bw-')), 'vm.log');
}

test('a console that stays silent: VM_SILENT_BOOT once the time is up', async () => {
  const log = tempLog();
  fs.writeFileSync(log, ''); // QEMU made the file; the kernel printed nothing
  const t0 = Date.now();
  const w = watchForSilentBoot(log, 400);
  await assert.rejects(w.failed, (err: Error & { code?: string }) => err.code === 'VM_SILENT_BOOT' && /printed nothing/.test(err.message));
  assert.ok(Date.now() - t0 >= 400);
  w.stop();
});

test("the initramfs' first line ends the watch: no failure afterwards", async () => {
  const log = tempLog();
  const w = watchForSilentBoot(log, 600);
  let failed = false;
  w.failed.catch(() => (failed = true));
  await sleep(100);
  fs.writeFileSync(log, 'berth-boot: initramfs 1.41\n');
  await sleep(900);
  assert.equal(failed, false);
  w.stop();
});

test('stop() before the time is up: no failure', async () => {
  const w = watchForSilentBoot(tempLog(), 300);
  let failed = false;
  w.failed.catch(() => (failed = true));
  w.stop();
  await sleep(600);
  assert.equal(failed, false);
});

test('BERTH_SILENT_BOOT_SEC sets the time (whole seconds)', async () => {
  process.env.BERTH_SILENT_BOOT_SEC = '1';
  try {
    const t0 = Date.now();
    const w = watchForSilentBoot(tempLog());
    await assert.rejects(w.failed, /printed nothing for 1 s/);
    assert.ok(Date.now() - t0 < 2500);
  } finally {
    delete process.env.BERTH_SILENT_BOOT_SEC;
  }
});
