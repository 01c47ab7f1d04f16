import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CgroupSubtree, cgroupLayout, parseHierarchies, DEVICE_ALLOW } from './cgroups.js';

const HYBRID_MOUNTS = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
proc /proc proc rw 0 0
`;
const HYBRID_SELF = `12:name=systemd:/user.slice/session-1.scope
4:memory:/user.slice
3:cpu,cpuacct:/user.slice
0::/user.slice/session-1.scope
`;

test('cgroups: hierarchies of a hybrid host, each with the daemon\'s place in it and the word init mounts it by', () => {
  const h = parseHierarchies(HYBRID_MOUNTS, HYBRID_SELF);
  assert.deepEqual(
    h.map((x) => [x.mount, x.kind, x.key, x.self]),
    [
      ['/sys/fs/cgroup/cpu,cpuacct', 'v1', 'cpu,cpuacct', '/user.slice'],
      ['/sys/fs/cgroup/memory', 'v1', 'memory', '/user.slice'],
      ['/sys/fs/cgroup/systemd', 'v1', 'name=systemd', '/user.slice/session-1.scope'],
      ['/sys/fs/cgroup/unified', 'v2', 'unified', '/user.slice/session-1.scope'],
    ],
  );
  assert.equal(cgroupLayout(h), 'v1');
});

test('cgroups: a v2-only host; a v1 hierarchy the daemon is not in is left out', () => {
  const h = parseHierarchies('cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n', '0::/system.slice/berth.service\n');
  assert.deepEqual(h, [{ mount: '/sys/fs/cgroup', kind: 'v2', key: 'unified', self: '/system.slice/berth.service' }]);
  assert.equal(cgroupLayout(h), 'v2');
  assert.deepEqual(parseHierarchies('cgroup /sys/fs/cgroup/net_cls cgroup rw,net_cls 0 0\n', '0::/\n'), []);
});

test('cgroups: the subtree gets cpuset, limits and the device allow-list; removal goes deepest first', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cg-'));
  try {
    // A fake cgroupfs: the files the kernel would show in a fresh v1 folder.
    const mem = path.join(root, 'memory');
    const cpuset = path.join(root, 'cpuset');
    const devices = path.join(root, 'devices');
    await fs.mkdir(path.join(cpuset, 'parent'), { recursive: true });
    await fs.writeFile(path.join(cpuset, 'parent', 'cpuset.cpus'), '0-1\n');
    await fs.writeFile(path.join(cpuset, 'parent', 'cpuset.mems'), '0\n');
    const hierarchies = [
      { mount: mem, kind: 'v1' as const, key: 'memory', self: '/' },
      { mount: cpuset, kind: 'v1' as const, key: 'cpuset', self: '/parent' },
      { mount: devices, kind: 'v1' as const, key: 'devices', self: '/' },
    ];
    const sub = new CgroupSubtree(hierarchies, 'berth-test');
    // What the kernel creates in a new folder.
    for (const [dir, files] of [
      [path.join(mem, 'berth-test'), ['memory.limit_in_bytes']],
      [path.join(cpuset, 'parent', 'berth-test'), ['cpuset.cpus', 'cpuset.mems']],
      [path.join(devices, 'berth-test'), ['devices.deny', 'devices.allow']],
    ] as const) {
      await fs.mkdir(dir, { recursive: true });
      for (const f of files) await fs.writeFile(path.join(dir, f), '');
    }
    const skipped = await sub.create({ memoryBytes: 2 * 2 ** 30, cpus: 2, pids: 4096 });
    assert.deepEqual(skipped, []);
    assert.equal(await fs.readFile(path.join(mem, 'berth-test', 'memory.limit_in_bytes'), 'utf8'), String(2 * 2 ** 30));
    assert.equal(await fs.readFile(path.join(cpuset, 'parent', 'berth-test', 'cpuset.cpus'), 'utf8'), '0-1');
    assert.equal(await fs.readFile(path.join(devices, 'berth-test', 'devices.deny'), 'utf8'), 'a');
    // A file stands in for the kernel's write-only control: the last rule written is what remains.
    assert.equal(await fs.readFile(path.join(devices, 'berth-test', 'devices.allow'), 'utf8'), DEVICE_ALLOW.at(-1));
    assert.ok(!DEVICE_ALLOW.some((r) => /^c 1:(1|2|4) /.test(r) || /^b (8|259|253):/.test(r)), 'no /dev/mem, /dev/kmem, /dev/port, no disks');

    // dockerd's cgroups beneath; rmdir on a fake tree needs empty folders.
    for (const dir of sub.paths()) for (const f of await fs.readdir(dir)) await fs.rm(path.join(dir, f));
    await fs.mkdir(path.join(mem, 'berth-test', 'docker', 'abc'), { recursive: true });
    assert.deepEqual(await sub.remove(), []);
    for (const dir of sub.paths()) await assert.rejects(fs.access(dir));
    assert.throws(() => new CgroupSubtree(hierarchies, '../escape'), /Not a cgroup name/);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});
