import { test } from 'node:test';
import assert from 'node:assert/strict';
import { acquireDaemonLock, isDaemonLocked } from './lock.js';
import { BerthError } from '../util/errors.js';

test('one daemon per home: a second lock fails until the first is released', { skip: process.platform !== 'linux' }, async () => {
  const home = `/tmp/berth-lock-test-${process.pid}-${Date.now()}`;
  const a = await acquireDaemonLock(home);
  assert.equal(await isDaemonLocked(home), true);
  await assert.rejects(acquireDaemonLock(home), (e: unknown) => e instanceof BerthError && e.code === 'DAEMON_LOCKED');
  const other = await acquireDaemonLock(home + '-other');
  await other.release();
  await a.release();
  assert.equal(await isDaemonLocked(home), false);
  const b = await acquireDaemonLock(home);
  await b.release();
});
