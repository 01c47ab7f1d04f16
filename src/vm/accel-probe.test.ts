import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chooseAccelerator, probeBios, runFirmwareProbe, runKernelProbe, type Accelerator, type ProbeAttempt } from './accel-probe.js';
import { VerdictCache } from './accel-verdicts.js';
import { BerthError } from '../util/errors.js';
import { which } from './qemu-binary.js';

const fakeProber = (results: Partial<Record<Accelerator, ProbeAttempt>>, calls: Accelerator[] = []) => async (_q: string, a: Accelerator) => {
  calls.push(a);
  return results[a] ?? { accelerator: a, ok: false, ms: 1, reason: 'not faked' };
};
const fake = (results: Partial<Record<Accelerator, ProbeAttempt>>) => ({ prober: fakeProber(results) });

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
    const a = await runFirmwareProbe(script, 'tcg', 500);
    assert.equal(a.ok, false);
    assert.match(a.reason ?? '', /KVM internal error/);
    assert.ok(a.ms < 5000, `killed after the timeout (took ${a.ms} ms)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the real QEMU runs the probe guest under TCG', { skip: !which('qemu-system-x86_64') && 'qemu not installed' }, async () => {
  const a = await runFirmwareProbe(which('qemu-system-x86_64')!, 'tcg');
  assert.equal(a.ok, true, a.reason);
});

test('kvm precheck explains a missing or inaccessible /dev/kvm', { skip: fs.existsSync('/dev/kvm') && 'this host has /dev/kvm' }, async () => {
  const a = await runFirmwareProbe('qemu-system-x86_64', 'kvm');
  assert.equal(a.ok, false);
  assert.match(a.reason ?? '', /\/dev\/kvm does not exist/);
});

const kernel = { vmlinux: '/img/vmlinux', initramfs: '/img/initramfs.cpio', cmdline: 'console=ttyS0', imageKey: 'k1', cpus: 2 };

test('a verdict is probed once per host boot, then reused; another host boot probes again', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-verdicts-'));
  try {
    const file = path.join(dir, 'v.json');
    const calls: Accelerator[] = [];
    const prober = fakeProber({ kvm: { accelerator: 'kvm', ok: false, ms: 8000, reason: 'did not reach init' }, tcg: { accelerator: 'tcg', ok: true, ms: 50 } }, calls);
    const boot1 = new VerdictCache(file, 'boot-1');
    const first = await chooseAccelerator('qemu', 'auto', { kernel, verdicts: boot1, qemuVersion: '7.2', prober });
    assert.equal(first.accelerator, 'tcg');
    assert.deepEqual(calls, ['kvm', 'tcg']);
    const again = await chooseAccelerator('qemu', 'auto', { kernel, verdicts: boot1, qemuVersion: '7.2', prober });
    assert.equal(again.accelerator, 'tcg');
    assert.deepEqual(calls, ['kvm', 'tcg', 'tcg'], 'kvm is not probed again on the same host boot');
    assert.match(again.warning ?? '', /did not reach init.*probed earlier/);
    // Another kernel image is another question.
    await chooseAccelerator('qemu', 'auto', { kernel: { ...kernel, imageKey: 'k2' }, verdicts: boot1, qemuVersion: '7.2', prober });
    assert.deepEqual(calls.slice(3), ['kvm', 'tcg']);
    // After a host reboot the verdict is stale.
    await chooseAccelerator('qemu', 'auto', { kernel, verdicts: new VerdictCache(file, 'boot-2'), qemuVersion: '7.2', prober });
    assert.deepEqual(calls.slice(5), ['kvm', 'tcg']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a verdict revoked after a runtime failure is honoured at the next start', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-verdicts-'));
  try {
    const verdicts = new VerdictCache(path.join(dir, 'v.json'), 'b');
    const prober = fakeProber({ kvm: { accelerator: 'kvm', ok: true, ms: 500 }, tcg: { accelerator: 'tcg', ok: true, ms: 50 } });
    const r = await chooseAccelerator('qemu', 'auto', { kernel, verdicts, prober });
    assert.equal(r.accelerator, 'kvm');
    await verdicts.set(r.verdictKey!, { ok: false, reason: 'KVM internal error while booting' });
    const next = await chooseAccelerator('qemu', 'auto', { kernel, verdicts, prober });
    assert.equal(next.accelerator, 'tcg');
    assert.match(next.warning ?? '', /KVM internal error while booting/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a malformed verdict file is treated as empty and rewritten', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-verdicts-'));
  try {
    const file = path.join(dir, 'v.json');
    fs.writeFileSync(file, '{"x": {"ok": "yes"}, ');
    const verdicts = new VerdictCache(file, 'b');
    assert.equal(await verdicts.get('x'), undefined);
    await verdicts.set('y', { ok: true });
    assert.equal((await verdicts.get('y'))?.ok, true);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel probe: a guest that never reaches init is killed at the deadline and diagnosed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-probe-test-'));
  const script = path.join(dir, 'fake-qemu');
  // A crawling nested KVM: early kernel lines, never init.
  fs.writeFileSync(script, '#!/bin/sh\necho "[    0.000000] Linux version 6.1"\nexec sleep 30\n', { mode: 0o755 });
  try {
    const a = await runKernelProbe(script, 'tcg', kernel, 600);
    assert.equal(a.ok, false);
    assert.match(a.reason ?? '', /did not reach its first instruction of userspace within 0.6 s/);
    assert.ok(a.ms < 5000);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel probe: QEMU aborting on the CPU model is reported with its message', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-probe-test-'));
  const script = path.join(dir, 'fake-qemu');
  fs.writeFileSync(script, '#!/bin/sh\necho "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2\nkill -ABRT $$\n', { mode: 0o755 });
  try {
    const a = await runKernelProbe(script, 'tcg', kernel, 5000);
    assert.equal(a.ok, false);
    assert.match(a.reason ?? '', /signal SIGABRT.*failed to set MSR 0x10a/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel probe: the marker from init is success, and the guest is stopped there', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-probe-test-'));
  const script = path.join(dir, 'fake-qemu');
  const argsFile = path.join(dir, 'args');
  fs.writeFileSync(script, `#!/bin/sh\necho "$@" > ${argsFile}\necho "berth-probe: init reached"\nexec sleep 30\n`, { mode: 0o755 });
  try {
    const a = await runKernelProbe(script, 'kvm', { ...kernel, cpuModel: 'host,-arch-capabilities' }, 5000);
    if (!fs.existsSync('/dev/kvm')) return assert.match(a.reason ?? '', /dev\/kvm/); // precheck stops it first
    assert.equal(a.ok, true, a.reason);
    const args = fs.readFileSync(argsFile, 'utf8');
    assert.match(args, /-machine q35 -accel kvm -cpu host,-arch-capabilities -smp 2/, 'the VM\'s own machine and CPU model');
    assert.match(args, /-append console=ttyS0 berth\.probe/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
