import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseShareFailures, parseShareFailuresFile } from './share-mounts.js';

test('the failures file: one PATH<TAB>REASON per line; blank and tab-less lines are skipped', () => {
  const text = '/home/u\tthe file server did not answer within 10 s\n\nno tab here\n/tmp\tmount: mounting 10.0.2.2 on /tmp failed: Connection refused\n';
  assert.deepEqual(parseShareFailuresFile(text), [
    { path: '/home/u', reason: 'the file server did not answer within 10 s' },
    { path: '/tmp', reason: 'mount: mounting 10.0.2.2 on /tmp failed: Connection refused' },
  ]);
});

test('an agent reply is untrusted: wrong shapes are dropped, reasons and the list are bounded', () => {
  assert.deepEqual(parseShareFailures(undefined), []);
  assert.deepEqual(parseShareFailures({ failures: 'x' }), []);
  const reply = {
    failures: [
      { path: '/ok', reason: 'r' },
      { path: 'relative', reason: 'r' },
      { path: '/nul\0', reason: 'r' },
      { path: '/n', reason: 5 },
      { path: '/empty', reason: '' },
      { path: '/long', reason: 'x'.repeat(10_000) },
      ...Array.from({ length: 100 }, (_, i) => ({ path: `/many/${i}`, reason: 'r' })),
    ],
    extra: 'ignored',
  };
  const got = parseShareFailures(reply);
  assert.deepEqual(got.slice(0, 3), [
    { path: '/ok', reason: 'r' },
    { path: '/empty', reason: 'no reason given' },
    { path: '/long', reason: 'x'.repeat(512) },
  ]);
  assert.equal(got.length, 64);
});
