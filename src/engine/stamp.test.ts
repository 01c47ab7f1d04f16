import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../util/errors.js';
import { classifySwitch, comparePacks, downgradeError, LEGACY_STAMP, parseStamp, readStamp, writeStamp, type EngineStamp } from './stamp.js';

const at = '2026-12-07T20:00:00.000Z';
const s26: EngineStamp = { pack: '26', engineVersion: '26.1.5', writtenAt: at };

test('packs compare as versions, not as strings', () => {
  assert.equal(comparePacks('26', '20.10'), 1);
  assert.equal(comparePacks('20.10', '26'), -1);
  assert.equal(comparePacks('20.10', '20.9'), 1, '"20.10" < "20.9" as strings');
  assert.equal(comparePacks('26', '26.0'), 0);
});

test('a switch is fresh, the same, an upgrade, or a downgrade (forced only for the pack named)', () => {
  assert.deepEqual(classifySwitch(undefined, '26'), { kind: 'fresh' });
  assert.deepEqual(classifySwitch(s26, '26'), { kind: 'same' });
  assert.equal(classifySwitch(LEGACY_STAMP, '26').kind, 'upgrade');
  assert.deepEqual(classifySwitch(s26, '20.10'), { kind: 'downgrade', from: s26, forced: false });
  assert.equal((classifySwitch({ ...s26, allowDowngradeTo: '20.10' }, '20.10') as { forced: boolean }).forced, true);
  assert.equal((classifySwitch({ ...s26, allowDowngradeTo: '19.03' }, '20.10') as { forced: boolean }).forced, false);
});

test('the downgrade error says why and names rollback only when a snapshot of that engine exists', () => {
  const plain = downgradeError(s26, '20.10');
  assert.equal(plain.code, 'ENGINE_DOWNGRADE');
  assert.match(plain.message, /older than engine 26 \(Docker 26\.1\.5\)/);
  assert.doesNotMatch(plain.hint ?? '', /rollback/);
  assert.match(plain.hint ?? '', /berth engine use 26`/);
  assert.match(plain.hint ?? '', /berth engine use 20\.10 --force/);
  const withSnap = downgradeError({ ...s26, snapshot: { name: 'berth-before-26-1', pack: '20.10', engineVersion: '20.10.24', takenAt: at } }, '20.10');
  assert.match(withSnap.hint ?? '', /berth engine rollback/);
});

test('stamps are read strictly: absent disk, legacy disk, round trip, broken file', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-stamp-'));
  try {
    const file = path.join(dir, 'engine.json');
    const disk = path.join(dir, 'data.qcow2');
    assert.equal(await readStamp(file, disk), undefined, 'no disk: a fresh start');
    await writeStamp(file, s26);
    assert.equal(await readStamp(file, disk), undefined, 'no disk: a fresh start, whatever an old stamp says');
    await fs.rm(file);
    await fs.writeFile(disk, '');
    assert.deepEqual(await readStamp(file, disk), LEGACY_STAMP, 'a disk without a stamp was written by 20.10');
    const full: EngineStamp = { ...s26, snapshot: { name: 'berth-before-26-1', pack: '20.10', engineVersion: '20.10.24', takenAt: at }, allowDowngradeTo: '20.10' };
    await writeStamp(file, full);
    assert.deepEqual(await readStamp(file, disk), full);
    for (const bad of ['{', '[]', '{"pack":"latest","engineVersion":"1","writtenAt":"x"}', JSON.stringify({ ...s26, snapshot: { ...full.snapshot, name: '-o backing_file=/etc/shadow' } })]) {
      await fs.writeFile(file, bad);
      await assert.rejects(readStamp(file, disk), (err: unknown) => err instanceof BerthError && err.code === 'ENGINE_STAMP_INVALID' && /which engine last wrote/.test(err.message));
    }
    await fs.rm(file);
    await fs.mkdir(file);
    await assert.rejects(readStamp(file, disk), (err: unknown) => err instanceof BerthError && err.code === 'ENGINE_STAMP_INVALID', 'not a regular file');
    await fs.rmdir(file);
    await fs.writeFile(file, ' '.repeat(70 * 1024));
    await assert.rejects(readStamp(file, disk), (err: unknown) => err instanceof BerthError && err.code === 'ENGINE_STAMP_INVALID', 'too large');
    assert.equal(parseStamp({ ...s26, extra: 1 })?.pack, '26', 'unknown keys are dropped, not kept');
    assert.equal('extra' in (parseStamp({ ...s26, extra: 1 }) ?? {}), false);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
