import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileService, guestShareConfig, planShares } from './file-service.js';
import { silentLogger } from '../util/log.js';

test('planShares: folders that exist are shared with their options; missing ones are skipped with a warning', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-plan-'));
  try {
    const gone = path.join(dir, 'gone');
    const plan = planShares([{ path: dir, cache: true }, { path: gone }, { path: dir, readOnly: true }]);
    assert.deepEqual(plan.shares, [
      { id: 's0', path: dir, readOnly: false, cache: true },
      { id: 's1', path: dir, readOnly: true, cache: false },
    ]);
    assert.equal(plan.skipped.length, 1);
    assert.match(plan.skipped[0]!, new RegExp(`${gone} does not exist.*"shares" setting`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('guestShareConfig: id, mode, cache mode, ticket and path per line (what mount-shares reads)', () => {
  const cfg = guestShareConfig(
    [
      { id: 's0', path: '/home/me', readOnly: false, cache: true },
      { id: 's1', path: '/data with space', readOnly: true },
    ],
    { s0: 'aa', s1: 'bb' },
  );
  assert.equal(cfg, 's0\trw\tloose\taa\t/home/me\ns1\tro\tmmap\tbb\t/data with space\n');
});

test('drain: resolves true once the host changes made so far were replayed through actuate (the real worker thread); false once stopped', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-drain-'));
  const watched = path.join(dir, 'w');
  fs.mkdirSync(watched);
  const files = new FileService(path.join(dir, '9p.sock'), [{ id: 's0', path: dir, readOnly: false, cache: true }], silentLogger);
  t.after(async () => {
    await files.stop(); // idempotent; here too so that a failed assertion does not leave the worker running
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await files.start();
  const done: string[] = [];
  files.actuate = async (req) => {
    await sleep(150); // slower than the burst window: drain must wait for the replay itself
    done.push(`${req.op} ${path.basename(req.path)}`);
  };
  files.watch([watched]);
  await sleep(300); // the worker scans the folder and starts watching it
  for (const name of ['a.txt', 'b.txt']) {
    fs.writeFileSync(path.join(watched, name), 'x\n');
    assert.equal(await files.drain(5000), true);
    assert.deepEqual(done.splice(0), [`create ${name}`], `${name} was not replayed when drain resolved`);
  }
  assert.equal(await files.drain(5000), true, 'nothing pending');
  assert.deepEqual(done, []);
  await files.stop();
  assert.equal(await files.drain(5000), false, 'a stopped file server cannot drain');
});
