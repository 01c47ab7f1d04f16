import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameDecoder, FrameType, HEADER_SIZE, MAX_DATA_PAYLOAD, encodeFrame, encodeJsonFrame, type DecodeResult } from './frame.js';
import { seededRandom } from './memory-link.js';

const hello = (session = 's1') => encodeJsonFrame(FrameType.Hello, 0, { proto: 1, role: 'host', session });
const frames = (rs: DecodeResult[]) => rs.filter((r) => r.kind === 'frame').map((r) => (r as { frame: { type: FrameType; stream: number; payload: Buffer } }).frame);
const errors = (rs: DecodeResult[]) => rs.filter((r) => r.kind === 'error');

test('frames round-trip, whole or split byte by byte', () => {
  const wire = Buffer.concat([hello(), encodeFrame(FrameType.Data, 7, Buffer.from('abc')), encodeFrame(FrameType.Fin, 7)]);
  const whole = frames(new FrameDecoder().push(wire));
  assert.deepEqual(whole.map((f) => [f.type, f.stream, f.payload.toString()]), [
    [FrameType.Hello, 0, '{"proto":1,"role":"host","session":"s1"}'],
    [FrameType.Data, 7, 'abc'],
    [FrameType.Fin, 7, ''],
  ]);
  const d = new FrameDecoder();
  const bytewise = [...wire].flatMap((b) => frames(d.push(Buffer.from([b]))));
  assert.deepEqual(bytewise.map((f) => f.type), [FrameType.Hello, FrameType.Data, FrameType.Fin]);
});

test('each class of framing error is detected', () => {
  const cases: Array<[string, Buffer]> = [
    ['bad magic', Buffer.from([0x42, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])],
    ['unknown type', Buffer.from([0xb7, 99, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])],
    ['flags', Buffer.from([0xb7, 5, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0])],
    ['reserved', Buffer.from([0xb7, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])],
    ['oversize data', (() => { const b = encodeFrame(FrameType.Data, 1); b.writeUInt32BE(MAX_DATA_PAYLOAD + 1, 8); return b; })()],
    ['oversize window', (() => { const b = encodeFrame(FrameType.Window, 1); b.writeUInt32BE(5, 8); return b; })()],
    ['hello on a stream', (() => { const b = hello(); b.writeUInt32BE(3, 4); return b; })()],
    ['data on stream 0', encodeFrame(FrameType.Data, 0, Buffer.from('x'))],
  ];
  for (const [name, bytes] of cases) {
    const d = new FrameDecoder();
    const rs = d.push(bytes);
    assert.equal(errors(rs).length, 1, name);
    assert.equal(d.hunting, true, name);
  }
});

test('zero bytes between frames are padding, not errors', () => {
  const d = new FrameDecoder();
  const rs = d.push(Buffer.concat([Buffer.alloc(70_000), hello(), Buffer.alloc(5), encodeFrame(FrameType.Fin, 3)]));
  assert.deepEqual(errors(rs), []);
  assert.deepEqual(frames(rs).map((f) => f.type), [FrameType.Hello, FrameType.Fin]);
});

test('hunt mode skips garbage until a valid HELLO, even split across chunks', () => {
  const d = new FrameDecoder();
  d.startHunt();
  const garbage = Buffer.from([0xb7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x7b, 0x7d, 0x20, 0xb7, 0xb7, 0x13]); // a fake HELLO with a non-HELLO payload
  const wire = Buffer.concat([garbage, hello('s9'), encodeFrame(FrameType.Data, 1, Buffer.from('after'))]);
  const out: DecodeResult[] = [];
  for (let i = 0; i < wire.length; i += 7) out.push(...d.push(wire.subarray(i, i + 7)));
  const fs = frames(out);
  assert.equal(fs[0]?.type, FrameType.Hello);
  assert.match(fs[0]!.payload.toString(), /s9/);
  assert.equal(fs[1]?.payload.toString(), 'after');
});

test('fuzz: random and mutated input never throws, stays bounded, and resyncs on HELLO', () => {
  const rand = seededRandom(42);
  const valid = [hello(), encodeFrame(FrameType.Data, 5, Buffer.alloc(300, 1)), encodeFrame(FrameType.Window, 5, Buffer.from([0, 0, 1, 0])), encodeJsonFrame(FrameType.Reset, 5, { code: 'X', message: 'y' })];
  for (let iter = 0; iter < 3000; iter++) {
    const d = new FrameDecoder();
    const parts: Buffer[] = [];
    for (let k = 0; k < 4; k++) {
      if (rand() < 0.5) {
        const b = Buffer.alloc(Math.floor(rand() * 200));
        for (let i = 0; i < b.length; i++) b[i] = Math.floor(rand() * 256);
        parts.push(b);
      } else {
        const v = Buffer.from(valid[Math.floor(rand() * valid.length)]!);
        if (rand() < 0.5) v[Math.floor(rand() * v.length)] = Math.floor(rand() * 256);
        parts.push(v);
      }
    }
    const input = Buffer.concat(parts);
    for (let i = 0; i < input.length; ) {
      const n = 1 + Math.floor(rand() * 64);
      d.push(input.subarray(i, i + n));
      assert.ok(d.buffered <= HEADER_SIZE + MAX_DATA_PAYLOAD + 64, `buffered ${d.buffered}`);
      i += n;
    }
    // Whatever state the garbage left: a max-length frame of zeros completes any half frame, then
    // HELLO resynchronises.
    d.push(Buffer.alloc(HEADER_SIZE + MAX_DATA_PAYLOAD));
    const rs = d.push(Buffer.concat([hello('resync'), encodeFrame(FrameType.Data, 9, Buffer.from('ok'))]));
    const fs = frames(rs);
    const last = fs.at(-1);
    assert.equal(last?.stream, 9, `iteration ${iter}`);
    assert.equal(last?.payload.toString(), 'ok');
  }
});
