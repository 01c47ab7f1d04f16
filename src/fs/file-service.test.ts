import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { guestShareConfig, planShares } from './file-service.js';

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

test('guestShareConfig: the token, then id, mode, cache mode and path per line (what mount-shares reads)', () => {
  const cfg = guestShareConfig('tok', [
    { id: 's0', path: '/home/me', readOnly: false, cache: true },
    { id: 's1', path: '/data with space', readOnly: true },
  ]);
  assert.equal(cfg, 'tok\ns0\trw\tloose\t/home/me\ns1\tro\tnone\t/data with space\n');
});
