import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { busyboxRootfsTar, daemonPid, guestPids, type Instance, newInstance, sleep, VM_ONLY } from './harness.js';
import { which } from '../../src/vm/qemu-binary.js';

/**
 * Fault injection on the real VM: kill -9 of QEMU and of the daemon, durability of a write the
 * guest fsynced before QEMU was killed, and a kernel that never reaches the initramfs.
 */
describe('faults', { timeout: 1_500_000 }, () => {
  let b: Instance;
  before(async () => {
    b = newInstance('faults');
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    const imp = await b.docker(['import', '-', 'berth-test/busybox:1'], { input: await busyboxRootfsTar() });
    assert.equal(imp.code, 0, imp.stderr);
  });
  after(async () => {
    await b.cleanup();
  });

  test('a write the guest fsynced survives kill -9 of QEMU', async () => {
    const w = await b.docker(['run', '--rm', '-v', 'durable:/data', 'berth-test/busybox:1', 'sh', '-c', 'echo fsynced-before-kill > /data/f && sync']);
    assert.equal(w.code, 0, w.stderr);
    const [pid] = guestPids(b.home);
    assert.ok(pid, 'QEMU runs');
    process.kill(pid, 'SIGKILL');

    // The daemon notices at once and says so.
    let s: { state: string; failure: { message: string } | null } = { state: '', failure: null };
    for (let i = 0; i < 50; i++) {
      s = JSON.parse((await b.berth(['status', '--json'])).stdout);
      if (s.state === 'failed') break;
      await sleep(200);
    }
    assert.equal(s.state, 'failed');
    assert.match(s.failure?.message ?? '', /QEMU was killed by SIGKILL|stopped unexpectedly/);

    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `restart failed:\n${r.stdout}\n${r.stderr}`);
    const read = await b.docker(['run', '--rm', '-v', 'durable:/data', 'berth-test/busybox:1', 'cat', '/data/f']);
    assert.equal(read.stdout.trim(), 'fsynced-before-kill');
    const imgs = await b.docker(['images', '-q', 'berth-test/busybox:1']);
    assert.notEqual(imgs.stdout.trim(), '', 'the imported image is still there');
  });

  test('kill -9 of the daemon: status finds the running VM and re-attaches', async () => {
    const qemuBefore = guestPids(b.home);
    const pid = daemonPid(b.home);
    assert.ok(pid, 'daemon pid file');
    process.kill(pid, 'SIGKILL');
    await sleep(300);
    assert.deepEqual(guestPids(b.home), qemuBefore, 'QEMU survives the daemon');

    const st = await b.berth(['status', '--json']);
    assert.equal(st.code, 0, st.stderr);
    const s = JSON.parse(st.stdout);
    assert.equal(s.state, 'running');
    assert.equal(s.qemuPid, qemuBefore[0]);
    assert.notEqual(s.daemonPid, pid);
    const r = await b.docker(['run', '--rm', 'berth-test/busybox:1', 'echo', 'after daemon restart']);
    assert.equal(r.stdout.trim(), 'after daemon restart');
  });

  test('kill -9 of the daemon, then start: a no-op on the same VM', async () => {
    const qemuBefore = guestPids(b.home);
    process.kill(daemonPid(b.home)!, 'SIGKILL');
    await sleep(300);
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /already running/);
    assert.deepEqual(guestPids(b.home), qemuBefore);
  });

  test('a kernel that prints nothing (hung before the initramfs): start warns, boots the VM again and succeeds', { skip: VM_ONLY }, async (t) => {
    // The VM's first launch starts paused (-S: the guest never runs, as a hung kernel), through
    // a BERTH_QEMU wrapper; only the VM's launch has -pidfile (the accelerator probe has not).
    const q = newInstance('silent', { BERTH_SILENT_BOOT_SEC: '5' });
    t.after(() => q.cleanup());
    const wrapper = path.join(q.home, 'qemu-wrapper');
    const qemu = which('qemu-system-x86_64');
    assert.ok(qemu, 'qemu-system-x86_64');
    fs.writeFileSync(wrapper, `#!/bin/sh\ncase " $* " in *" -pidfile "*) if [ ! -e '${q.home}/paused-once' ]; then : > '${q.home}/paused-once'; exec '${qemu}' "$@" -S; fi ;; esac\nexec '${qemu}' "$@"\n`, { mode: 0o755 });
    q.env.BERTH_QEMU = wrapper;
    const r = await q.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout + r.stderr, /kernel printed nothing for 5 s and did not reach berth's initramfs.*Booting it again/s);
    assert.ok(fs.existsSync(path.join(q.home, 'paused-once')), 'the first launch was paused');
    assert.doesNotMatch(fs.readFileSync(path.join(q.home, 'logs', 'vm.prev.log'), 'utf8'), /berth-boot:/);
    assert.match(fs.readFileSync(path.join(q.home, 'logs', 'vm.log'), 'utf8'), /berth-boot: initramfs/);
    assert.equal(guestPids(q.home).length, 1, 'one QEMU: the paused one is gone');
    const v = await q.docker(['version', '--format', '{{.Server.Version}}']);
    assert.equal(v.code, 0, v.stderr);
  });

  test('kill -9 of both daemon and QEMU: start recovers cleanly', async () => {
    process.kill(daemonPid(b.home)!, 'SIGKILL');
    for (const p of guestPids(b.home)) process.kill(p, 'SIGKILL');
    await sleep(300);
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    const v = await b.docker(['run', '--rm', '-v', 'durable:/data', 'berth-test/busybox:1', 'cat', '/data/f']);
    assert.equal(v.stdout.trim(), 'fsynced-before-kill');
  });
});
