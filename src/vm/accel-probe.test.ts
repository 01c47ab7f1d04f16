import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chooseAccelerator, probeBios, runProbe, type Accelerator, type ProbeAttempt } from './accel-probe.js';
import { BerthError } from '../util/errors.js';
import { which } from './qemu-binary.js';

const fake = (results: Partial<Record<Accelerator, ProbeAttempt>>) => async (_q: string, a: Accelerator) =>
  results[a] ?? { accelerator: a, ok: false, ms: 1, reason: 'not faked' };

test('probe BIOS: 64 KiB with the exit code at the reset vector', () => {
  const b = probeBios();
  assert.equal(b.length, 65536);
  assert.deepEqual([...b.subarray(0xfff0, 0xfff4)], [0xb0, 0x31, 0xe6, 0xf4]);
});

test('auto falls back to tcg with a warning naming the KVM failure', async () => {
  const r = await chooseAccelerator('qemu', 'auto', fake({
    kvm: { accelerator: 'kvm', ok: false, ms: 5, reason: 'KVM_RUN failed with a KVM internal error' },
    tcg: { accelerator: 'tcg', ok: true, ms: 5 },
  }));
  assert.equal(r.accelerator, 'tcg');
  assert.match(r.warning ?? '', /KVM internal error/);
  assert.equal(r.attempts.length, 2);
});

test('auto uses kvm when the probe guest really ran', async () => {
  const r = await chooseAccelerator('qemu', 'auto', fake({ kvm: { accelerator: 'kvm', ok: true, ms: 5 } }));
  assert.equal(r.accelerator, 'kvm');
  assert.equal(r.warning, undefined);
});

test('kvm requested but broken fails instead of falling back', async () => {
  await assert.rejects(
    chooseAccelerator('qemu', 'kvm', fake({ kvm: { accelerator: 'kvm', ok: false, ms: 1, reason: '/dev/kvm does not exist' }, tcg: { accelerator: 'tcg', ok: true, ms: 1 } })),
    (e: unknown) => e instanceof BerthError && e.code === 'ACCEL_UNAVAILABLE' && /dev\/kvm/.test(e.message) && /accelerator auto/.test(e.hint ?? ''),
  );
});

test('tcg that cannot run is a QEMU failure', async () => {
  await assert.rejects(chooseAccelerator('qemu', 'tcg', fake({})), (e: unknown) => e instanceof BerthError && e.code === 'QEMU_FAILED');
});

test('a QEMU that reports a KVM internal error and hangs is killed and diagnosed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-probe-test-'));
  const script = path.join(dir, 'fake-qemu');
  // What a nested host prints when the first KVM_RUN fails; then QEMU stays paused.
  fs.writeFileSync(script, '#!/bin/sh\necho "KVM internal error. Suberror: 1" >&2\necho "emulation failure" >&2\nexec sleep 30\n', { mode: 0o755 });
  try {
    const a = await runProbe(script, 'tcg', 500);
    assert.equal(a.ok, false);
    assert.match(a.reason ?? '', /KVM internal error/);
    assert.ok(a.ms < 5000, `killed after the timeout (took ${a.ms} ms)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the real QEMU runs the probe guest under TCG', { skip: !which('qemu-system-x86_64') && 'qemu not installed' }, async () => {
  const a = await runProbe(which('qemu-system-x86_64')!, 'tcg');
  assert.equal(a.ok, true, a.reason);
});

test('kvm precheck explains a missing or inaccessible /dev/kvm', { skip: fs.existsSync('/dev/kvm') && 'this host has /dev/kvm' }, async () => {
  const a = await runProbe('qemu-system-x86_64', 'kvm');
  assert.equal(a.ok, false);
  assert.match(a.reason ?? '', /\/dev\/kvm does not exist/);
});
