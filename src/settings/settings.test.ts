import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultSettings, readSettings, setSetting, validateSettings } from './settings.js';
import { BerthError } from '../util/errors.js';

function tmpFile(content?: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-settings-'));
  const f = path.join(dir, 'settings.json');
  if (content !== undefined) fs.writeFileSync(f, content);
  return f;
}

const isCode = (code: string) => (e: unknown) => e instanceof BerthError && e.code === code;

test('a missing file means the defaults', async () => {
  assert.deepEqual(await readSettings(tmpFile()), defaultSettings());
});

test('valid keys override the defaults', async () => {
  const s = await readSettings(tmpFile('{"cpus": 1, "memoryMiB": 1024}'));
  assert.equal(s.cpus, 1);
  assert.equal(s.memoryMiB, 1024);
  assert.equal(s.diskGiB, 64);
});

test('broken JSON is reported with the file name and left untouched', async () => {
  const f = tmpFile('{"cpus": 2,,}');
  await assert.rejects(readSettings(f), (e: unknown) => isCode('SETTINGS_INVALID')(e) && (e as Error).message.includes(f));
  assert.equal(fs.readFileSync(f, 'utf8'), '{"cpus": 2,,}');
});

test('invalid values name the key and the accepted range', () => {
  assert.throws(() => validateSettings({ cpus: 'two' }, 'f'), (e: unknown) => isCode('SETTINGS_INVALID')(e) && /"cpus" is "two"; it must be an integer/.test((e as Error).message));
  assert.throws(() => validateSettings({ memoryMiB: 100 }, 'f'), /memoryMiB/);
  assert.throws(() => validateSettings({ accelerator: 'xen' }, 'f'), /"auto", "kvm" or "tcg"/);
  assert.throws(() => validateSettings({ dockerSocket: 'relative.sock' }, 'f'), /absolute path/);
  assert.throws(() => validateSettings({ nope: 1 }, 'f'), /unknown key "nope"/);
  assert.throws(() => validateSettings([], 'f'), /JSON object/);
});

test('network.subnet: an IPv4 network from /8 to /24 with no host bits, clear of what the VM itself uses', () => {
  for (const ok of ['198.19.248.0/24', '10.0.0.0/8', '192.168.0.0/16', '172.32.0.0/16']) {
    assert.equal(validateSettings({ 'network.subnet': ok }, 'f')['network.subnet'], ok);
  }
  assert.throws(() => validateSettings({ 'network.subnet': '198.19.248.1/24' }, 'f'), /host bits are set/);
  for (const bad of ['198.19.248.0/25', '10.0.0.0/7', '198.19.248.0', '198.19.256.0/24', '127.0.0.0/8', '169.254.0.0/16', '172.17.0.0/16', '172.0.0.0/8', '224.0.0.0/8', '0.0.0.0/8']) {
    assert.throws(() => validateSettings({ 'network.subnet': bad }, 'f'), /"network.subnet".*CIDR form/, bad);
  }
});

test('shares: readOnly and cache are true or false; other keys are refused', () => {
  const s = validateSettings({ shares: [{ path: '/home/me', cache: true }, { path: '/data', readOnly: true, cache: false }] }, 'f');
  assert.deepEqual(s.shares, [{ path: '/home/me', cache: true }, { path: '/data', readOnly: true, cache: false }]);
  assert.throws(() => validateSettings({ shares: [{ path: '/home/me', cache: 'yes' }] }, 'f'), /cache must be true or false/);
  assert.throws(() => validateSettings({ shares: [{ path: '/home/me', caching: true }] }, 'f'), /unknown key/);
});

test('set writes the value, keeps other keys, and refuses invalid ones without writing', async () => {
  const f = tmpFile('{"cpus": 1}');
  await setSetting(f, 'memoryMiB', '1024');
  assert.deepEqual(JSON.parse(fs.readFileSync(f, 'utf8')), { cpus: 1, memoryMiB: 1024 });
  await assert.rejects(setSetting(f, 'memoryMiB', 'lots'), isCode('SETTINGS_INVALID'));
  assert.deepEqual(JSON.parse(fs.readFileSync(f, 'utf8')), { cpus: 1, memoryMiB: 1024 });
  await setSetting(f, 'dockerSocket', 'null');
  assert.equal((await readSettings(f)).dockerSocket, null);
});

test('set never overwrites a broken file', async () => {
  const f = tmpFile('not json');
  await assert.rejects(setSetting(f, 'cpus', '1'), isCode('SETTINGS_INVALID'));
  assert.equal(fs.readFileSync(f, 'utf8'), 'not json');
});

test('shares: "/" and folders that would hide part of the VM are refused, neighbours are not', () => {
  for (const p of ['/', '/usr', '/usr/local', '/var', '/var/lib/docker/x', '/mnt']) {
    assert.throws(() => validateSettings({ shares: [{ path: p }] }, 'f'), /would hide part of the VM/, p);
  }
  for (const p of ['/usrx', '/home/me', '/var/tmp', '/mnt/other']) {
    assert.doesNotThrow(() => validateSettings({ shares: [{ path: p }] }, 'f'), p);
  }
});
