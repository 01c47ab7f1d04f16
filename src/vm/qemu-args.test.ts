import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildQemuArgs, uuidFromTag, type VmConfig } from './qemu-args.js';

const cfg: VmConfig = {
  network: { kind: 'stream', socket: '/h/run/net.sock', mac: '02:b3:27:00:00:02', mtu: 65520 },
  accelerator: 'tcg', cpus: 2, memoryMiB: 2048, vmlinux: '/c/vmlinux', initramfs: '/c/initramfs.cpio', rootfs: '/c/root,fs.squashfs', pack: '/c/pack.squashfs',
  dataDisk: '/h/data.qcow2', cmdline: 'console=ttyS0', qmpSocket: '/h/run/qmp.sock', controlSocket: '/h/run/control.sock',
  serialLog: '/h/logs/vm.log', pidFile: '/h/run/qemu.pid', instanceTag: '/h',
};

const values = (args: string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));

test('every drive names its format and none ignores flushes (GHSA-f7qw-jj9c-rpq9, crash safety)', () => {
  const drives = values(buildQemuArgs(cfg), '-drive');
  assert.equal(drives.length, 3);
  for (const d of drives) {
    assert.match(d, /(^|,)format=(raw|qcow2)(,|$)/);
    assert.doesNotMatch(d, /cache=unsafe/);
  }
  assert.match(drives[0]!, /readonly=on/, 'the root image is read-only');
});

test('commas in paths are escaped for QEMU option parsing', () => {
  const drives = values(buildQemuArgs(cfg), '-drive');
  assert.match(drives[0]!, /file=\/c\/root,,fs\.squashfs,format=raw/);
});

test('tcg uses multi-threaded TCG and the max CPU model; kvm uses the host CPU', () => {
  assert.deepEqual(values(buildQemuArgs(cfg), '-accel'), ['tcg,thread=multi']);
  assert.deepEqual(values(buildQemuArgs(cfg), '-cpu'), ['max']);
  const k = buildQemuArgs({ ...cfg, accelerator: 'kvm' });
  assert.deepEqual(values(k, '-accel'), ['kvm']);
  assert.deepEqual(values(k, '-cpu'), ['host']);
});

test('no network listener of QEMU is opened on the host: only Unix sockets in the run directory', () => {
  for (const network of [cfg.network, { kind: 'user' as const, mac: '02:b3:27:00:00:02', forwards: [] }]) {
    const args = buildQemuArgs({ ...cfg, network }).join(' ');
    assert.doesNotMatch(args, /hostfwd|tcp:|inet|telnet|vnc|spice|-gdb/);
  }
  // QEMU's user network listens only where ports.extra says (loopback by default).
  const user = buildQemuArgs({ ...cfg, network: { kind: 'user', mac: '02:b3:27:00:00:02', forwards: [{ proto: 'tcp', hostIp: '127.0.0.1', hostPort: 8022, guestPort: 22 }] } });
  assert.deepEqual(values(user, '-netdev'), ['user,id=net0,hostfwd=tcp:127.0.0.1:8022-:22']);
  {
  }
  for (const c of values(buildQemuArgs(cfg), '-chardev').filter((c) => c.startsWith('socket'))) assert.match(c, /path=\/h\/run\//);
});

test('the translator network: QEMU listens on a Unix socket, the NIC has the MAC and the MTU', () => {
  const args = buildQemuArgs(cfg);
  assert.deepEqual(values(args, '-netdev'), ['stream,id=net0,server=on,addr.type=unix,addr.path=/h/run/net.sock']);
  assert.deepEqual(values(args, '-device').filter((d) => d.startsWith('virtio-net')), ['virtio-net-pci,netdev=net0,mac=02:b3:27:00:00:02,host_mtu=65520,romfile=']);
});

test('the instance UUID is stable per home and differs between homes', () => {
  assert.equal(uuidFromTag('/a'), uuidFromTag('/a'));
  assert.notEqual(uuidFromTag('/a'), uuidFromTag('/b'));
  assert.match(uuidFromTag('/a'), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
});
