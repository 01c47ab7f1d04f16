import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../util/errors.js';
import { moduleClosure, moduleName, parseModulesBuiltin, parseModulesDep } from './modules.js';

// A small modules.dep in depmod's format: each line lists the full transitive dependency set,
// ordered so that loading from the end of the list backwards works.
const MODULES_DEP = `
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/net/9p/9pnet_fd.ko: kernel/net/9p/9pnet.ko
kernel/net/9p/9pnet.ko:
kernel/crypto/crc32c-generic.ko.xz:
`;

function assertValidOrder(dep: Map<string, string[]>, order: string[]): void {
  const pos = new Map(order.map((p, i) => [p, i]));
  for (const p of order) {
    for (const d of dep.get(p) ?? []) {
      assert.ok(pos.has(d), `${d} (needed by ${p}) is in the closure`);
      assert.ok(pos.get(d)! < pos.get(p)!, `${d} loads before ${p}`);
    }
  }
}

test('parseModulesDep reads paths and dependencies', () => {
  const dep = parseModulesDep(MODULES_DEP);
  assert.equal(dep.size, 16);
  assert.deepEqual(dep.get('kernel/fs/jbd2/jbd2.ko'), []);
  assert.deepEqual(dep.get('kernel/net/bridge/bridge.ko'), ['kernel/net/802/stp.ko', 'kernel/net/llc/llc.ko']);
});

test('moduleName strips the suffix and uses underscores', () => {
  assert.equal(moduleName('kernel/crypto/crc32c-generic.ko.xz'), 'crc32c_generic');
  assert.equal(moduleName('kernel/net/9p/9pnet_fd.ko'), '9pnet_fd');
});

test('the closure holds every dependency, dependencies first, each once', () => {
  const dep = parseModulesDep(MODULES_DEP);
  const { order, builtin } = moduleClosure(dep, ['virtio_blk', 'virtio_pci', 'ext4', 'br_netfilter', 'crc32c_generic']);
  assert.deepEqual(builtin, []);
  assert.equal(new Set(order).size, order.length);
  assertValidOrder(dep, order);
  assert.deepEqual(order.slice(0, 3), ['kernel/drivers/virtio/virtio_ring.ko', 'kernel/drivers/virtio/virtio.ko', 'kernel/drivers/block/virtio_blk.ko']);
  assert.equal(order.length, 14);
  assert.ok(!order.includes('kernel/net/9p/9pnet.ko'), 'nothing unrequested');
});

test('names match with - or _', () => {
  const dep = parseModulesDep(MODULES_DEP);
  assert.deepEqual(moduleClosure(dep, ['crc32c-generic']).order, ['kernel/crypto/crc32c-generic.ko.xz']);
  assert.deepEqual(moduleClosure(dep, ['9pnet-fd']).order, ['kernel/net/9p/9pnet.ko', 'kernel/net/9p/9pnet_fd.ko']);
});

test('built-in modules are satisfied without a file', () => {
  const dep = parseModulesDep(MODULES_DEP);
  const builtin = parseModulesBuiltin('kernel/drivers/virtio/virtio_mmio.ko\nkernel/fs/overlayfs/overlay.ko\n');
  const sel = moduleClosure(dep, ['virtio_mmio', 'ext4'], builtin);
  assert.deepEqual(sel.builtin, ['virtio_mmio']);
  assert.equal(sel.order.at(-1), 'kernel/fs/ext4/ext4.ko');
});

test('an unknown module is IMAGE_BUILD_FAILED naming it', () => {
  const dep = parseModulesDep(MODULES_DEP);
  assert.throws(
    () => moduleClosure(dep, ['ext4', 'no_such_mod']),
    (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_BUILD_FAILED' && err.details?.module === 'no_such_mod' && /no_such_mod/.test(err.message),
  );
});

test('a cyclic (hand-made) modules.dep cannot loop', () => {
  const dep = parseModulesDep('a.ko: b.ko\nb.ko: a.ko\n');
  assert.deepEqual(moduleClosure(dep, ['a']).order.sort(), ['a.ko', 'b.ko']);
});
