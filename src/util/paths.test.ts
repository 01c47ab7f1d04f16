import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isWithin } from './paths.js';

test('isWithin: the root itself and paths under it, not siblings sharing a prefix', () => {
  assert.equal(isWithin('/home/me', '/home/me'), true);
  assert.equal(isWithin('/home/me/src/a', '/home/me'), true);
  assert.equal(isWithin('/home/me/src', '/home/me/'), true);
  assert.equal(isWithin('/home/mee', '/home/me'), false);
  assert.equal(isWithin('/home', '/home/me'), false);
  assert.equal(isWithin('/anything', '/'), true);
});
