import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PluginArchiveCheck } from './plugin-tar.js';
import { DEFAULT_VM_PATHS, type MountPolicy } from './mount-policy.js';

/**
 * `docker plugin create` sends an archive whose config.json gives the plugin host mounts and
 * devices that no privilege check covers; the proxy reads it in passing. Archives are built here
 * byte by byte (ustar headers), including the tricks a tar reader must not miss.
 */
const policy: MountPolicy = { shares: [{ path: '/home/me', readOnly: false }], vmPaths: DEFAULT_VM_PATHS, host: { kind: () => 'dir', readlink: () => '', exists: () => true } };

function header(name: string, size: number, type = '0', linkname = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write('00000000000\0', 136);
  h.write(type, 156);
  h.write(linkname, 157, 100);
  h.write('ustar\x0000', 257, 'latin1');
  h.write('        ', 148);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

function entry(name: string, data: string | Buffer, type = '0'): Buffer {
  const d = typeof data === 'string' ? Buffer.from(data) : data;
  return Buffer.concat([header(name, d.length, type), d, Buffer.alloc((512 - (d.length % 512)) % 512)]);
}

function pax(records: Record<string, string>): Buffer {
  const body = Object.entries(records)
    .map(([k, v]) => {
      const rec = ` ${k}=${v}\n`;
      let len = rec.length + 2;
      if (String(len).length + rec.length !== len) len = String(len + 1).length + rec.length;
      return `${len}${rec}`;
    })
    .join('');
  return entry('PaxHeader', body, 'x');
}

const config = (mounts: unknown[], linux: unknown = {}) => JSON.stringify({ Interface: { Socket: 'p.sock' }, Mounts: mounts, Linux: linux, Entrypoint: ['/p'] });
const tar = (...entries: Buffer[]) => Buffer.concat([...entries, Buffer.alloc(1024)]);

function check(archive: Buffer, pieces = 7): string | true {
  const c = new PluginArchiveCheck();
  const step = Math.ceil(archive.length / pieces);
  for (let i = 0; i < archive.length; i += step) {
    const err = c.push(archive.subarray(i, i + step));
    if (err) return err;
  }
  const v = c.finish(policy);
  return v.ok ? true : v.reason;
}

test('a plugin whose config mounts only shared folders and allowed devices passes, however the bytes arrive', () => {
  const good = tar(entry('rootfs/', '', '5'), entry('rootfs/p', 'binary'), entry('config.json', config([{ Name: 'data', Source: '/home/me/data', Destination: '/data', Type: 'bind' }], { Devices: [{ Name: 'fuse', Path: '/dev/fuse' }] })));
  for (const pieces of [1, 3, 50, good.length]) assert.equal(check(good, pieces), true, `${pieces} pieces`);
});

test("a config.json that mounts a path outside the shares, a VM disk or every device is refused", () => {
  for (const c of [
    config([{ Name: 'etc', Source: '/etc', Destination: '/etc', Type: 'bind' }]),
    config([{ Name: 'docker', Source: '/var/lib/docker', Destination: '/d', Type: 'bind' }]),
    config([], { Devices: [{ Name: 'disk', Path: '/dev/vda' }] }),
    config([], { AllowAllDevices: true }),
  ]) {
    assert.match(String(check(tar(entry('config.json', c)))), /cannot be used|every device/, c);
  }
});

test('tar tricks: a PAX path, ./ and /, a second copy, a link or folder named config.json, compression, no config', () => {
  const bad = config([{ Name: 'etc', Source: '/etc', Destination: '/etc', Type: 'bind' }]);
  const good = config([]);
  assert.notEqual(check(tar(pax({ path: 'config.json' }), entry('innocent.txt', bad))), true, 'a PAX path record renames the entry');
  assert.notEqual(check(tar(entry('./config.json', bad))), true);
  assert.notEqual(check(tar(entry('/config.json', bad))), true);
  assert.notEqual(check(tar(entry('rootfs/../config.json', bad))), true);
  assert.match(String(check(tar(entry('config.json', good), entry('config.json', bad)))), /more than once/);
  assert.match(String(check(tar(entry('config.json', '', '2')))), /not a regular file/);
  assert.match(String(check(tar(entry('config.json/', '', '5')))), /folder|not a regular/);
  assert.match(String(check(Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), Buffer.alloc(100)]))), /compressed/);
  assert.match(String(check(tar(entry('rootfs/p', 'x')))), /no config\.json/);
  assert.match(String(check(entry('config.json', good).subarray(0, 600))), /ends inside an entry/);
  assert.match(String(check(tar(entry('config.json', '{"Mounts":[],"Mounts":[]}')))), /given twice/);
});
