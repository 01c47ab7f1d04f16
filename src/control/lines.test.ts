import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineSplitter } from './lines.js';
import { parseEngineEvent, parseGuestInfo } from './guest-info.js';

test('lines split across chunks are joined', () => {
  const s = new LineSplitter(100);
  assert.deepEqual(s.push(Buffer.from('ab')), []);
  assert.deepEqual(s.push(Buffer.from('c\nde\nf')), ['abc', 'de']);
  assert.deepEqual(s.push(Buffer.from('\n')), ['f']);
});

test('an over-long line is dropped without buffering it', () => {
  const s = new LineSplitter(10);
  assert.deepEqual(s.push(Buffer.alloc(50, 0x41)), []);
  assert.deepEqual(s.push(Buffer.from('more\nok\n')), ['ok']);
});

test('guest info parsing keeps only expected, bounded fields', () => {
  const info = parseGuestInfo({ bootId: 'x'.repeat(1000), engine: { state: 'ready', detail: 'y'.repeat(100_000), evil: 1 }, bootTimes: { stage2: 2.5, 'bad key!': 1, x: 'no' }, extra: { a: 1 } });
  assert.equal(info.bootId.length, 64);
  assert.equal(info.engine.state, 'ready');
  assert.equal(info.engine.detail!.length, 8192);
  assert.deepEqual(info.bootTimes, { stage2: 2.5 });
  assert.equal((info as unknown as Record<string, unknown>).extra, undefined);
  assert.equal(parseGuestInfo('garbage').engine.state, 'starting');
});

test('engine events: only well-formed engine lines count', () => {
  assert.deepEqual(parseEngineEvent('{"type":"engine","state":"ready","readyAfterMs":5}'), { state: 'ready', readyAfterMs: 5 });
  assert.equal(parseEngineEvent('{"type":"other"}'), undefined);
  assert.equal(parseEngineEvent('not json'), undefined);
  assert.equal(parseEngineEvent('{"type":"engine","state":"pwned"}')?.state, 'starting');
});
