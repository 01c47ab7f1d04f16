import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { busyboxRootfsTar, daemonPid, E2E_BACKEND, guestPids, type Instance, newInstance, sleep } from './harness.js';
import { uuidFromTag } from '../../src/vm/qemu-args.js';

/**
 * The namespace backend on the host itself (docs/namespace.md): it leaves nothing on the host
 * after a stop, also after kill -9 of the daemon and then of the namespace; containers see the
 * host's kernel; the proxy keeps the boundary. Runs in the namespace backend's pass of the suite
 * (BERTH_E2E_BACKEND=namespace, scripts/test.sh).
 */
const SKIP = E2E_BACKEND === 'namespace' ? false : 'run in the namespace backend\'s pass (BERTH_E2E_BACKEND=namespace)';

/** What of ours could be left on the host: mounts, loop devices, links, cgroup folders, processes, iptables. */
function hostState(home: string): Record<string, string[]> {
  const read = (f: string) => {
    try {
      return fs.readFileSync(f, 'utf8');
    } catch {
      return '';
    }
  };
  const id = uuidFromTag(home);
  const procs: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    const env = read(`/proc/${pid}/environ`);
    const stat = read(`/proc/${pid}/stat`);
    // A zombie is not running; it waits for the host's init to reap it.
    if (env.includes(`BERTH_INSTANCE=${id}`) && !/\) Z /.test(stat)) procs.push(`${pid} ${read(`/proc/${pid}/comm`).trim()}`);
  }
  const cgroups: string[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 6) return;
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = path.join(dir, e.name);
      if (e.name === `berth-${id.slice(0, 8)}`) cgroups.push(p);
      else walk(p, depth + 1);
    }
  };
  walk('/sys/fs/cgroup', 0);
  return {
    mounts: read('/proc/self/mounts').split('\n').filter((l) => l.includes(home)),
    loops: fs.readdirSync('/sys/block').filter((d) => d.startsWith('loop') && read(`/sys/block/${d}/loop/backing_file`).includes(home)),
    links: fs.readdirSync('/sys/class/net').sort(),
    tables: [read('/proc/net/ip_tables_names')],
    cgroups,
    procs,
  };
}

describe('namespace backend', { timeout: 900_000, skip: SKIP }, () => {
  let b: Instance;
  let before0: Record<string, string[]>;
  before(async () => {
    b = newInstance('ns');
    before0 = hostState(b.home);
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    const imp = await b.docker(['import', '-', 'berth-test/busybox:1'], { input: await busyboxRootfsTar() });
    assert.equal(imp.code, 0, imp.stderr);
  });
  after(async () => {
    await b?.cleanup();
  });

  test('containers run on the host\'s kernel; a named volume outlives stop and start', async () => {
    const r = await b.docker(['run', '--rm', '-v', 'keep:/k', 'berth-test/busybox:1', 'sh', '-c', 'uname -r; echo kept > /k/f']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), os.release());
    const s = JSON.parse((await b.berth(['status', '--json'])).stdout);
    assert.equal(s.backend, 'namespace');
    assert.equal((await b.berth(['stop'])).code, 0);
    assert.equal((await b.berth(['start'])).code, 0);
    const again = await b.docker(['run', '--rm', '-v', 'keep:/k', 'berth-test/busybox:1', 'cat', '/k/f']);
    assert.equal(again.stdout.trim(), 'kept');
  });

  test('the boundary: privileged, added capabilities, host devices, host pid and other architectures are refused with the way out', async () => {
    for (const args of [['--privileged'], ['--cap-add', 'SYS_ADMIN'], ['--device', '/dev/loop-control'], ['--pid', 'host'], ['--security-opt', 'seccomp=unconfined'], ['--platform', 'linux/arm64']]) {
      const r = await b.docker(['run', '--rm', ...args, 'berth-test/busybox:1', 'true']);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, /namespace backend/, args.join(' '));
      assert.match(r.stderr, /berth start --backend vm/, args.join(' '));
    }
    // Docker's own default capabilities may be named.
    const ok = await b.docker(['run', '--rm', '--cap-add', 'CHOWN', 'berth-test/busybox:1', 'true']);
    assert.equal(ok.code, 0, ok.stderr);
  });

  test('berth stop leaves nothing on the host: no mount, loop device, link, cgroup, process or iptables table', async () => {
    assert.equal((await b.berth(['stop'])).code, 0);
    await sleep(300);
    assert.deepEqual(hostState(b.home), before0);
    assert.equal((await b.berth(['start'])).code, 0);
  });

  test('kill -9 of the daemon, then of the namespace: the next command cleans up and nothing is left', async () => {
    const [pid1] = guestPids(b.home);
    assert.ok(pid1, 'the namespace runs');
    process.kill(daemonPid(b.home)!, 'SIGKILL');
    await sleep(300);
    assert.deepEqual(guestPids(b.home), [pid1], 'the namespace outlives its daemon');
    process.kill(pid1!, 'SIGKILL');
    await sleep(500);
    const r = await b.berth(['stop']);
    assert.equal(r.code, 0, r.stderr);
    // A start cleans what the killed daemon could not (its cgroups), then a stop leaves nothing.
    assert.equal((await b.berth(['start'])).code, 0);
    assert.equal((await b.berth(['stop'])).code, 0);
    await sleep(300);
    assert.deepEqual(hostState(b.home), before0);
  });
});
