import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkFlags, parseArgs } from './args.js';

test('command, positionals, flags, values and rest', () => {
  const a = parseArgs(['logs', 'engine', '-f', '-n', '20', '--json']);
  assert.equal(a.command, 'logs');
  assert.deepEqual(a.positional, ['engine']);
  assert.ok(a.flags.has('f'));
  assert.equal(a.values.get('n'), '20');
  assert.equal(a.json, true);
  const s = parseArgs(['shell', '--', 'ls', '-l', '--json']);
  assert.deepEqual(s.rest, ['ls', '-l', '--json']);
  assert.equal(s.json, false);
});

test('unknown flags are rejected by the command', () => {
  assert.throws(() => checkFlags(parseArgs(['stop', '--forse']), []), /Unknown option "--forse"/);
  assert.throws(() => parseArgs(['logs', '-n']), /needs a value/);
});
