import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DnsType,
  Rcode,
  buildResponse,
  encodeName,
  foldName,
  parseHeader,
  parseMessage,
  readEdns,
  readName,
  truncateResponse,
  udpPayloadLimit,
  type DnsMessage,
} from './dns-wire.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** www.example.com A IN, id 0x1234, RD; optionally with an OPT record of the given UDP size. */
function query(name = 'www.example.com', type: number = DnsType.A, edns?: number): Buffer {
  const header = hex(`1234 0100 0001 0000 0000 ${edns === undefined ? '0000' : '0001'}`);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(1, 2);
  const parts = [header, encodeName(name), fixed];
  if (edns !== undefined) {
    const opt = hex('00 0029 0000 00000000 0000');
    opt.writeUInt16BE(edns, 3);
    parts.push(opt);
  }
  return Buffer.concat(parts);
}

function parsed(buf: Buffer): DnsMessage {
  const p = parseMessage(buf);
  assert.ok(p.ok, p.ok ? '' : p.reason);
  return p.message;
}

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('header flags are split into fields', () => {
  // id 0xabcd; QR, opcode 2, AA, TC, RD; RA, Z, AD, CD, rcode 3; counts 1 2 3 4
  const h = parseHeader(hex('abcd 97 f3 0001 0002 0003 0004'));
  assert.ok(h.ok);
  assert.deepEqual(h.header, {
    id: 0xabcd, qr: true, opcode: 2, aa: true, tc: true, rd: true, ra: true, z: true, ad: true, cd: true, rcode: 3,
    qdcount: 1, ancount: 2, nscount: 3, arcount: 4,
  });
  const q = parseHeader(hex('0001 0000 0000 0000 0000 0000'));
  assert.ok(q.ok);
  assert.equal(q.header.qr, false);
  assert.equal(q.header.opcode, 0);
  assert.deepEqual(parseHeader(hex('0001 0000 0000 0000 0000 00')), { ok: false, reason: 'message of 11 bytes is shorter than a header' });
});

test('a query parses to its question', () => {
  const m = parsed(hex('1234 0100 0001 0000 0000 0000 03777777 076578616d706c65 03636f6d 00 001c 0001'));
  assert.equal(m.header.id, 0x1234);
  assert.equal(m.header.rd, true);
  assert.deepEqual(m.questions, [{ name: 'www.example.com', type: 28, class: 1 }]);
  assert.deepEqual(m.answers, []);
});

test('a response with compressed names parses, rdata as bytes', () => {
  // example.com A: answer owner 0xC00C, then a CNAME-like record whose owner is "www" + pointer.
  const buf = hex(
    'beef 8180 0001 0002 0000 0000 076578616d706c65 03636f6d 00 0001 0001' +
      ' c00c 0001 0001 0000012c 0004 5db8d822' +
      ' 03777777 c00c 0005 0001 00000000 0002 c00c',
  );
  const m = parsed(buf);
  assert.equal(m.answers.length, 2);
  assert.deepEqual({ ...m.answers[0]!, rdata: m.answers[0]!.rdata.toString('hex') }, { name: 'example.com', type: 1, class: 1, ttl: 300, rdata: '5db8d822' });
  assert.equal(m.answers[1]!.name, 'www.example.com');
  assert.equal(m.answers[1]!.rdata.toString('hex'), 'c00c');
  // A name inside rdata reads through the whole message.
  const inner = readName(buf, buf.length - 2);
  assert.deepEqual(inner, { ok: true, name: 'example.com', end: buf.length });
});

test('names: pointer loops, forward and out-of-bounds pointers, bad labels are rejected', () => {
  const pad = Buffer.alloc(12);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['pointer to itself', Buffer.concat([pad, hex('c00c')]), /does not point backwards/],
    ['forward pointer', Buffer.concat([pad, hex('c00e 0161 00')]), /does not point backwards/],
    ['pointer beyond the message', Buffer.concat([pad, hex('0161 c3ff')]), /does not point backwards/],
    ['two-step loop', Buffer.concat([pad, hex('0161 c00e'), hex('0162 c00c')]), /does not point backwards/],
    ['truncated pointer', Buffer.concat([pad, hex('0161 c0')]), /pointer runs past/],
    ['label type 0x40 (length 64)', Buffer.concat([pad, Buffer.from([64]), Buffer.alloc(64, 0x61), hex('00')]), /unsupported label type 0x40/],
    ['label type 0x80', Buffer.concat([pad, hex('8161 00')]), /unsupported label type 0x81/],
    ['label past the end', Buffer.concat([pad, hex('0561 62')]), /label runs past/],
    ['no terminating zero', Buffer.concat([pad, hex('0161')]), /name runs past/],
  ];
  for (const [what, buf, reason] of cases) {
    const r = readName(buf, 12);
    assert.equal(r.ok, false, what);
    assert.match((r as { reason: string }).reason, reason, what);
  }
  // A chain of backward pointers is cut at 128 hops: a root at 12, then 200 pointers each to the previous one.
  const chain = Buffer.alloc(13 + 2 * 200);
  for (let i = 0; i < 200; i++) chain.writeUInt16BE(0xc000 | (i === 0 ? 12 : 13 + 2 * (i - 1)), 13 + 2 * i);
  assert.deepEqual(readName(chain, 13 + 2 * 199), { ok: false, reason: 'too many compression pointers' });
  assert.deepEqual(readName(chain, 13 + 2 * 127), { ok: true, name: '', end: 13 + 2 * 128 });
});

test('names: 255 wire bytes are accepted, 256 are not; labels of 63 bytes are fine', () => {
  const label = (n: number) => Buffer.concat([Buffer.from([n]), Buffer.alloc(n, 0x61)]);
  const ok = Buffer.concat([label(63), label(63), label(63), label(61), hex('00')]);
  assert.equal(ok.length, 255);
  const r = readName(ok, 0);
  assert.ok(r.ok);
  assert.equal(r.name.length, 63 * 3 + 61 + 3);
  const long = Buffer.concat([label(63), label(63), label(63), label(62), hex('00')]);
  assert.deepEqual(readName(long, 0), { ok: false, reason: 'name longer than 255 bytes' });
  // The limit holds across pointers too: 200 bytes of labels + a pointer to 100 more.
  const base = Buffer.concat([label(50), label(49), hex('00')]); // 102 bytes at 0
  const far = Buffer.concat([base, label(63), label(63), label(63), hex('c000')]);
  assert.deepEqual(readName(far, base.length), { ok: false, reason: 'name longer than 255 bytes' });
});

test('names: unusual bytes are escaped and encodeName gives the same wire bytes back', () => {
  const wire = hex('05 612e62205c 02 ff41 00'); // "a.b \" and 0xff 'A'
  const r = readName(wire, 0);
  assert.deepEqual(r, { ok: true, name: 'a\\.b\\032\\\\.\\255A', end: wire.length });
  assert.deepEqual(encodeName('a\\.b\\032\\\\.\\255A'), wire);
  assert.deepEqual(encodeName('Example.COM.'), hex('07 4578616d706c65 03 434f4d 00'));
  assert.deepEqual(encodeName(''), hex('00'));
  assert.deepEqual(encodeName('.'), hex('00'));
  for (const bad of ['a..b', '.a', 'a b', `${'x'.repeat(64)}.com`, 'é.com', '\\256']) {
    assert.throws(() => encodeName(bad), RangeError, bad);
  }
  assert.throws(() => encodeName(Array(128).fill('a').join('.')), /longer than 255/);
  assert.equal(foldName('WwW.ExAmple.COM'), 'www.example.com');
});

test('records and questions past the end are rejected with a reason', () => {
  assert.deepEqual(parseMessage(hex('1234 0100 0001 0000 0000 0000 00 0001')), { ok: false, reason: 'question 0 is truncated' });
  assert.deepEqual(parseMessage(hex('1234 8100 0000 0001 0000 0000 00 0001 0001 00000000 0005 0102')), {
    ok: false,
    reason: 'answer record 0: rdata of 5 bytes runs past the end of the message',
  });
  assert.deepEqual(parseMessage(hex('1234 8100 0000 0000 0000 0001 00 0029 10')), { ok: false, reason: 'additional record 0: record header is truncated' });
  // questionsOnly ignores broken record sections (an answer cut by a UDP server).
  const cut = parseMessage(hex('1234 8300 0001 0005 0000 0000 00 0001 0001 c0'), { questionsOnly: true });
  assert.ok(cut.ok);
  assert.deepEqual(cut.message.questions, [{ name: '', type: 1, class: 1 }]);
});

test('EDNS0: payload size, version, DO bit; two OPT records or a non-root owner are errors', () => {
  const m = parsed(hex('1234 0100 0001 0000 0000 0001 00 0001 0001  00 0029 04d0 00 01 8000 0000'));
  const e = readEdns(m);
  assert.deepEqual(e, { ok: true, edns: { udpPayloadSize: 1232, extendedRcode: 0, version: 1, dnssecOk: true, options: Buffer.alloc(0) } });
  assert.deepEqual(readEdns(parsed(query())), { ok: true, edns: undefined });
  const two = parsed(hex('1234 0100 0000 0000 0000 0002 00 0029 0200 00000000 0000 00 0029 0200 00000000 0000'));
  assert.deepEqual(readEdns(two), { ok: false, reason: 'more than one OPT record' });
  const owned = parsed(hex('1234 0100 0000 0000 0000 0001 0161 00 0029 0200 00000000 0000'));
  assert.deepEqual(readEdns(owned), { ok: false, reason: 'OPT record not owned by the root' });
  assert.equal(udpPayloadLimit(undefined), 512);
  const size = (n: number) => udpPayloadLimit({ udpPayloadSize: n, extendedRcode: 0, version: 0, dnssecOk: false, options: Buffer.alloc(0) });
  assert.deepEqual([size(0), size(511), size(1232), size(4096), size(65535)], [512, 512, 1232, 4096, 4096]);
});

test('buildResponse: exact bytes of an A answer compressed to the question name', () => {
  const q = parsed(query('example.com'));
  const out = buildResponse(q, Rcode.NOERROR, [{ type: DnsType.A, ttl: 0, rdata: hex('c613f8fe') }]);
  assert.equal(
    out.toString('hex'),
    '123481800001000100000000076578616d706c6503636f6d0000010001' + 'c00c00010001000000000004c613f8fe',
  );
  // An answer named like the question in another case still points to it; another name is written out.
  const aaaa = hex('20010db8000000000000000000000001');
  const two = parsed(buildResponse(q, Rcode.NOERROR, [{ name: 'EXAMPLE.com', type: DnsType.AAAA, ttl: 7, rdata: aaaa }, { name: 'b.example.com', type: DnsType.A, ttl: 0, rdata: hex('01020304') }]));
  assert.equal(two.answers[0]!.name, 'example.com');
  assert.equal(two.answers[0]!.ttl, 7);
  assert.deepEqual(two.answers[0]!.rdata, aaaa);
  assert.equal(two.answers[1]!.name, 'b.example.com');
});

test('buildResponse: rcode, RD/CD copied, OPT and extended rcode', () => {
  const q = parsed(hex('0007 0110 0001 0000 0000 0000 00 0001 0001')); // RD and CD
  const nx = buildResponse(q, Rcode.NXDOMAIN);
  assert.equal(nx.subarray(0, 12).toString('hex'), '000781930001000000000000');
  const badvers = parsed(buildResponse(q, Rcode.BADVERS, [], { edns: { udpPayloadSize: 4096 } }));
  assert.equal(badvers.header.rcode, 0);
  const e = readEdns(badvers);
  assert.ok(e.ok && e.edns);
  assert.equal(e.edns.extendedRcode, 1);
  assert.equal(e.edns.udpPayloadSize, 4096);
  assert.throws(() => buildResponse(q, Rcode.BADVERS), RangeError);
});

function manyA(n: number, withOpt: boolean): Buffer {
  const q = parsed(query('example.com', DnsType.A, withOpt ? 4096 : undefined));
  const answers = Array.from({ length: n }, (_, i) => ({ type: DnsType.A, ttl: 0, rdata: Buffer.from([10, 0, i >> 8, i & 255]) }));
  return buildResponse(q, Rcode.NOERROR, answers, withOpt ? { edns: { udpPayloadSize: 4096 } } : {});
}

test('truncation at 512 keeps whole records and sets TC', () => {
  const full = manyA(40, false);
  assert.equal(full.length, 29 + 40 * 16);
  const cut = truncateResponse(full, 512);
  // 12 header + 17 question + 30 × 16 = 509; a 31st record would need 525.
  assert.equal(cut.length, 509);
  const m = parsed(cut);
  assert.equal(m.header.tc, true);
  assert.equal(m.answers.length, 30);
  assert.deepEqual(m.answers[29]!.rdata, Buffer.from([10, 0, 0, 29]));
  const expected = Buffer.from(full.subarray(0, 509));
  expected[2] = expected[2]! | 0x02;
  expected.writeUInt16BE(30, 6);
  assert.deepEqual(cut, expected);
  // Fits already: returned unchanged, same buffer.
  const small = manyA(3, false);
  assert.equal(truncateResponse(small, 512), small);
});

test('truncation at a larger EDNS size keeps the OPT record', () => {
  const full = manyA(100, true);
  const cut = truncateResponse(full, 1232);
  // 29 + 74 × 16 + 11 (OPT) = 1224; 75 records would need 1240.
  assert.equal(cut.length, 1224);
  const m = parsed(cut);
  assert.equal(m.header.tc, true);
  assert.equal(m.answers.length, 74);
  assert.equal(m.additionals.length, 1);
  const e = readEdns(m);
  assert.ok(e.ok && e.edns);
  assert.equal(e.edns.udpPayloadSize, 4096);
});

test('truncation: dropping only additional records does not set TC (RFC 2181 §9); garbage becomes a bare TC header', () => {
  const q = parsed(query('example.com'));
  const big = buildResponse(q, Rcode.NOERROR, [{ type: DnsType.A, ttl: 0, rdata: hex('01020304') }]);
  // Append 3 additional records of 200 bytes each by hand.
  const extra = Array.from({ length: 3 }, () => Buffer.concat([hex('c00c 0010 0001 00000000 00c8'), Buffer.alloc(200, 0x41)]));
  const msg = Buffer.concat([big, ...extra]);
  msg.writeUInt16BE(3, 10);
  const cut = truncateResponse(msg, 512);
  const m = parsed(cut);
  assert.equal(m.header.tc, false);
  assert.equal(m.answers.length, 1);
  assert.equal(m.additionals.length, 2);
  const junk = Buffer.concat([hex('4321 8180 0001 0000 0000 0000'), Buffer.alloc(600, 0xc0)]);
  assert.equal(truncateResponse(junk, 512).toString('hex'), '432183800000000000000000');
});

test('fuzz: the parser never throws on random or mutated bytes, and parsed names re-encode', () => {
  const rand = seeded(7);
  const seeds = [query(), query('a.b.c', DnsType.MX, 1232), manyA(5, true), hex('beef 8180 0001 0001 0000 0000 076578616d706c65 03636f6d 00 0001 0001 c00c 0001 0001 0000012c 0004 5db8d822')];
  let parsedCount = 0;
  for (let i = 0; i < 20_000; i++) {
    let buf: Buffer;
    if (rand() < 0.3) {
      buf = Buffer.alloc(Math.floor(rand() * 120));
      for (let k = 0; k < buf.length; k++) buf[k] = Math.floor(rand() * 256);
    } else {
      buf = Buffer.from(seeds[Math.floor(rand() * seeds.length)]!);
      const flips = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < flips; k++) buf[Math.floor(rand() * buf.length)] = Math.floor(rand() * 256);
      if (rand() < 0.2) buf = buf.subarray(0, Math.floor(rand() * buf.length));
    }
    const p = parseMessage(buf);
    truncateResponse(buf, 64);
    if (!p.ok) continue;
    parsedCount++;
    readEdns(p.message);
    for (const q of p.message.questions) {
      const again = readName(encodeName(q.name), 0);
      assert.ok(again.ok);
      assert.equal(again.name, q.name);
    }
  }
  assert.ok(parsedCount > 1000, `only ${parsedCount} inputs parsed`);
});
