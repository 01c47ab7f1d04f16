import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseIp4, parseMac } from './address.js';
import {
  BOOTP_MIN_SIZE,
  DhcpMessageType,
  DhcpOption,
  MAX_DHCP_PAYLOAD,
  buildDhcpReply,
  clientId,
  decodeDomainSearch,
  dhcpMessageType,
  encodeDomainSearch,
  ip4Value,
  isValidDomainName,
  maxMessageSize,
  parameterRequestList,
  parseDhcpMessage,
  requestedIp,
  serverId,
  type DhcpMessage,
} from './dhcp-wire.js';

const ip = (s: string): number => parseIp4(s)!;
const MAC = parseMac('02:b3:27:00:00:02')!;

/** A BOOTREQUEST assembled byte by byte, independently of the code under test. */
function rawRequest(opts: {
  op?: number;
  htype?: number;
  hlen?: number;
  xid?: number;
  secs?: number;
  flags?: number;
  ciaddr?: number;
  giaddr?: number;
  optionBytes: number[];
  padTo?: number;
}): Buffer {
  const b = Buffer.alloc(Math.max(240 + opts.optionBytes.length, opts.padTo ?? 0));
  b[0] = opts.op ?? 1;
  b[1] = opts.htype ?? 1;
  b[2] = opts.hlen ?? 6;
  b[3] = 1; // hops
  b.writeUInt32BE(opts.xid ?? 0xdeadbeef, 4);
  b.writeUInt16BE(opts.secs ?? 7, 8);
  b.writeUInt16BE(opts.flags ?? 0x8000, 10);
  b.writeUInt32BE(opts.ciaddr ?? ip('10.0.0.9'), 12);
  b.writeUInt32BE(ip('10.0.0.10'), 16);
  b.writeUInt32BE(ip('10.0.0.11'), 20);
  b.writeUInt32BE(opts.giaddr ?? ip('10.0.0.12'), 24);
  MAC.copy(b, 28);
  b.fill(0xee, 34, 44); // chaddr padding beyond hlen must not leak into chaddr
  b.writeUInt32BE(0x63825363, 236);
  Buffer.from(opts.optionBytes).copy(b, 240);
  return b;
}

function parseOk(b: Buffer): DhcpMessage {
  const r = parseDhcpMessage(b);
  if (!r.ok) assert.fail(`unexpected parse failure: ${r.reason}`);
  return r.msg;
}

function parseErr(b: Buffer): string {
  const r = parseDhcpMessage(b);
  if (r.ok) assert.fail('expected a parse failure');
  return r.reason;
}

test('parses every fixed field and the options of a request', () => {
  const msg = parseOk(
    rawRequest({
      xid: 0x01020304,
      secs: 0x0506,
      flags: 0x8000,
      optionBytes: [53, 1, 3, 0, 0, 50, 4, 198, 19, 248, 2, 54, 4, 198, 19, 248, 1, 55, 3, 1, 3, 6, 61, 7, 1, ...MAC, 57, 2, 0x05, 0xdc, 255],
    }),
  );
  assert.equal(msg.op, 1);
  assert.equal(msg.htype, 1);
  assert.equal(msg.hlen, 6);
  assert.equal(msg.hops, 1);
  assert.equal(msg.xid, 0x01020304);
  assert.equal(msg.secs, 0x0506);
  assert.equal(msg.flags, 0x8000);
  assert.equal(msg.broadcast, true);
  assert.equal(msg.ciaddr, ip('10.0.0.9'));
  assert.equal(msg.yiaddr, ip('10.0.0.10'));
  assert.equal(msg.siaddr, ip('10.0.0.11'));
  assert.equal(msg.giaddr, ip('10.0.0.12'));
  assert.deepEqual([...msg.chaddr], [0x02, 0xb3, 0x27, 0, 0, 2]);
  assert.deepEqual([...msg.options.keys()], [53, 50, 54, 55, 61, 57]);
  assert.equal(dhcpMessageType(msg), DhcpMessageType.Request);
  assert.equal(requestedIp(msg), ip('198.19.248.2'));
  assert.equal(serverId(msg), ip('198.19.248.1'));
  assert.deepEqual(parameterRequestList(msg), [1, 3, 6]);
  assert.deepEqual([...clientId(msg)!], [1, 0x02, 0xb3, 0x27, 0, 0, 2]);
  assert.equal(maxMessageSize(msg), 1500);
});

test('the broadcast bit is only the top bit of flags', () => {
  assert.equal(parseOk(rawRequest({ flags: 0x7fff, optionBytes: [255] })).broadcast, false);
  assert.equal(parseOk(rawRequest({ flags: 0x8000, optionBytes: [255] })).broadcast, true);
});

test('bytes after END are ignored, PAD is skipped, a missing END after a whole option is accepted', () => {
  const afterEnd = parseOk(rawRequest({ optionBytes: [0, 0, 53, 1, 1, 0, 255, 53, 200, 1, 2, 3], padTo: 300 }));
  assert.deepEqual([...afterEnd.options.keys()], [53]);
  assert.equal(dhcpMessageType(afterEnd), DhcpMessageType.Discover);
  const noEnd = parseOk(rawRequest({ optionBytes: [53, 1, 8, 12, 3, 0x61, 0x62, 0x63] }));
  assert.equal(noEnd.options.get(DhcpOption.HostName)?.toString(), 'abc');
  assert.equal(dhcpMessageType(noEnd), DhcpMessageType.Inform);
});

test('repeated instances of an option are concatenated (RFC 3396 §7)', () => {
  const msg = parseOk(rawRequest({ optionBytes: [53, 1, 1, 55, 2, 1, 3, 12, 1, 0x78, 55, 2, 6, 119, 255] }));
  assert.deepEqual(parameterRequestList(msg), [1, 3, 6, 119]);
  assert.deepEqual([...msg.options.keys()], [53, 55, 12]);
});

test('parsed values are copies, not views of the payload', () => {
  const wire = rawRequest({ optionBytes: [61, 3, 1, 2, 3, 255] });
  const msg = parseOk(wire);
  wire.fill(0);
  assert.deepEqual([...msg.chaddr], [...MAC]);
  assert.deepEqual([...clientId(msg)!], [1, 2, 3]);
});

test('each class of malformed message is rejected with a reason', () => {
  const good = rawRequest({ optionBytes: [53, 1, 1, 255] });
  assert.match(parseErr(Buffer.alloc(0)), /too short/);
  assert.match(parseErr(good.subarray(0, 239)), /too short/);
  assert.match(parseErr(Buffer.concat([good, Buffer.alloc(MAX_DHCP_PAYLOAD)])), /too large/);
  assert.match(parseErr(rawRequest({ op: 3, optionBytes: [255] })), /bad op 3/);
  assert.match(parseErr(rawRequest({ op: 0, optionBytes: [255] })), /bad op 0/);
  assert.match(parseErr(rawRequest({ htype: 6, optionBytes: [255] })), /hardware type 6/);
  assert.match(parseErr(rawRequest({ hlen: 16, optionBytes: [255] })), /length 16/);
  const badCookie = Buffer.from(good);
  badCookie[239] = 0x64;
  assert.match(parseErr(badCookie), /bad magic cookie 0x63825364/);
  assert.match(parseErr(rawRequest({ optionBytes: [53, 1, 1, 12] })), /option 12 truncated \(no length\)/);
  assert.match(parseErr(rawRequest({ optionBytes: [53, 1, 1, 12, 5, 0x61, 0x62] })), /option 12 truncated \(5 bytes announced, 2 present\)/);
  // Exactly MAX_DHCP_PAYLOAD is still accepted.
  assert.equal(parseDhcpMessage(rawRequest({ optionBytes: [53, 1, 1, 255], padTo: MAX_DHCP_PAYLOAD })).ok, true);
});

test('accessors reject options of the wrong length', () => {
  const msg = parseOk(rawRequest({ optionBytes: [53, 2, 1, 1, 50, 3, 1, 2, 3, 54, 5, 1, 2, 3, 4, 5, 55, 0, 61, 1, 1, 57, 1, 2, 255] }));
  assert.equal(dhcpMessageType(msg), undefined);
  assert.equal(requestedIp(msg), undefined);
  assert.equal(serverId(msg), undefined);
  assert.equal(parameterRequestList(msg), undefined);
  assert.equal(clientId(msg), undefined);
  assert.equal(maxMessageSize(msg), undefined);
  for (const t of [0, 9, 200]) assert.equal(dhcpMessageType(parseOk(rawRequest({ optionBytes: [53, 1, t, 255] }))), undefined, `type ${t}`);
  const none = parseOk(rawRequest({ optionBytes: [255] }));
  assert.equal(dhcpMessageType(none), undefined);
  assert.equal(requestedIp(none), undefined);
});

test('buildDhcpReply writes the exact BOOTREPLY bytes and pads to 300', () => {
  const reply = buildDhcpReply({
    xid: 0xcafef00d,
    flags: 0x8000,
    ciaddr: ip('1.2.3.4'),
    yiaddr: ip('198.19.248.2'),
    siaddr: ip('5.6.7.8'),
    giaddr: ip('9.10.11.12'),
    chaddr: MAC,
    options: [
      [DhcpOption.MessageType, Buffer.from([DhcpMessageType.Offer])],
      [DhcpOption.ServerId, ip4Value(ip('198.19.248.1'))],
      [DhcpOption.DnsServers, ip4Value(ip('1.1.1.1'), ip('8.8.8.8'))],
      [224, Buffer.alloc(0)],
    ],
  });
  assert.equal(reply.length, BOOTP_MIN_SIZE);
  const expectedHead = [
    2, 1, 6, 0, 0xca, 0xfe, 0xf0, 0x0d, 0, 0, 0x80, 0, 1, 2, 3, 4, 198, 19, 248, 2, 5, 6, 7, 8, 9, 10, 11, 12, 0x02, 0xb3, 0x27, 0, 0, 2,
  ];
  assert.deepEqual([...reply.subarray(0, 34)], expectedHead);
  assert.ok(reply.subarray(34, 236).every((b) => b === 0), 'chaddr padding, sname and file are zero');
  assert.deepEqual([...reply.subarray(236, 240)], [99, 130, 83, 99]);
  const opts = [53, 1, 2, 54, 4, 198, 19, 248, 1, 6, 8, 1, 1, 1, 1, 8, 8, 8, 8, 224, 0, 255];
  assert.deepEqual([...reply.subarray(240, 240 + opts.length)], opts);
  assert.ok(reply.subarray(240 + opts.length).every((b) => b === 0), 'padding after END is zero');
  assert.equal(reply.subarray(240 + opts.length).length, 300 - 240 - opts.length);

  // And the parser reads it back (it accepts BOOTREPLY too).
  const back = parseOk(reply);
  assert.equal(back.op, 2);
  assert.equal(back.yiaddr, ip('198.19.248.2'));
  assert.deepEqual([...back.options.keys()], [53, 54, 6, 224]);
});

test('buildDhcpReply grows past 300 bytes when the options need it, without padding', () => {
  const reply = buildDhcpReply({ xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC, options: [[12, Buffer.alloc(100, 0x61)]] });
  assert.equal(reply.length, 240 + 2 + 100 + 1);
  assert.equal(reply[reply.length - 1], 255);
});

test('buildDhcpReply rejects caller bugs', () => {
  const base = { xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC };
  assert.throws(() => buildDhcpReply({ ...base, chaddr: Buffer.alloc(16), options: [] }), RangeError);
  assert.throws(() => buildDhcpReply({ ...base, options: [[0, Buffer.alloc(1)]] }), RangeError);
  assert.throws(() => buildDhcpReply({ ...base, options: [[255, Buffer.alloc(1)]] }), RangeError);
});

test('options longer than 255 bytes are split into consecutive instances (RFC 3396)', () => {
  const value = Buffer.from(Array.from({ length: 600 }, (_, i) => i & 0xff));
  const reply = buildDhcpReply({
    xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC,
    options: [[53, Buffer.from([5])], [119, value], [26, Buffer.from([0x05, 0xdc])]],
  });
  // 53: 3 bytes; 119: 255 + 255 + 90 with a 2-byte header each; 26: 4; END.
  assert.equal(reply.length, 240 + 3 + 606 + 4 + 1);
  let off = 243;
  for (const n of [255, 255, 90]) {
    assert.equal(reply[off], 119);
    assert.equal(reply[off + 1], n);
    off += 2 + n;
  }
  assert.deepEqual([...reply.subarray(off, off + 5)], [26, 2, 0x05, 0xdc, 255]);
  // Exactly 255 bytes is one instance; 256 is two (255 + 1).
  const one = buildDhcpReply({ xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC, options: [[119, Buffer.alloc(255, 1)]] });
  assert.deepEqual([one[240], one[241], one[240 + 257]], [119, 255, 255]);
  const two = buildDhcpReply({ xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC, options: [[119, Buffer.alloc(256, 1)]] });
  assert.deepEqual([two[240], two[241], two[240 + 257], two[240 + 258], two[240 + 259], two[240 + 260]], [119, 255, 119, 1, 1, 255]);
  // The parser concatenates the instances back into the original value.
  assert.deepEqual(parseOk(reply).options.get(119), value);
});

test('RFC 3397 encoding of ["corp.example.com", "example.com"], with compression', () => {
  const enc = encodeDomainSearch(['corp.example.com', 'example.com']);
  const expected = Buffer.from([
    4, ...Buffer.from('corp'), 7, ...Buffer.from('example'), 3, ...Buffer.from('com'), 0,
    0xc0, 0x05, // "example.com" = pointer to offset 5
  ]);
  assert.deepEqual(enc, expected);
  assert.deepEqual(decodeDomainSearch(enc), ['corp.example.com', 'example.com']);
});

test('RFC 3397 §2 example: eng.apple.com and marketing.apple.com', () => {
  const enc = encodeDomainSearch(['eng.apple.com.', 'marketing.apple.com.']);
  const expected = Buffer.from([
    3, ...Buffer.from('eng'), 5, ...Buffer.from('apple'), 3, ...Buffer.from('com'), 0,
    9, ...Buffer.from('marketing'), 0xc0, 0x04,
  ]);
  assert.deepEqual(enc, expected);
});

test('domain search compression: case-insensitive suffixes, whole-name repeats, unrelated names', () => {
  assert.deepEqual([...encodeDomainSearch(['a.b', 'A.B'])], [1, 0x61, 1, 0x62, 0, 0xc0, 0]);
  assert.deepEqual([...encodeDomainSearch(['x.org', 'y.net'])], [1, 0x78, 3, 0x6f, 0x72, 0x67, 0, 1, 0x79, 3, 0x6e, 0x65, 0x74, 0]);
  assert.deepEqual([...encodeDomainSearch([])], []);
  assert.throws(() => encodeDomainSearch(['bad..name']), RangeError);
});

test('domain name validation', () => {
  for (const good of ['example.com', 'example.com.', 'a', 'x-y_z.internal', `${'a'.repeat(63)}.com`]) assert.equal(isValidDomainName(good), true, good);
  for (const bad of ['', '.', 'a..b', '.a', 'a b', 'é.com', `${'a'.repeat(64)}.com`, `${'abcdefgh.'.repeat(29)}x`]) assert.equal(isValidDomainName(bad), false, bad);
});

test('decodeDomainSearch rejects loops, forward pointers and truncation', () => {
  assert.equal(decodeDomainSearch(Buffer.from([0xc0, 0x00])), undefined); // points at itself
  assert.equal(decodeDomainSearch(Buffer.from([1, 0x61, 0xc0, 0x04, 0, 1, 0x62, 0])), undefined); // forward
  assert.equal(decodeDomainSearch(Buffer.from([3, 0x61, 0x62])), undefined);
  assert.equal(decodeDomainSearch(Buffer.from([1, 0x61])), undefined); // no terminating zero
  assert.equal(decodeDomainSearch(Buffer.from([0x40, 0])), undefined); // reserved label type
  assert.deepEqual(decodeDomainSearch(Buffer.alloc(0)), []);
});

test('a long search list survives compression, RFC 3396 splitting and reassembly', () => {
  const names = Array.from({ length: 40 }, (_, i) => `engineering-team-${i}.dept${i % 4}.corp-site-number-${i % 3}.example.internal`);
  const enc = encodeDomainSearch(names);
  assert.ok(enc.length > 255 * 2, `encoding is ${enc.length} bytes`);
  assert.ok(enc.length < names.join('').length, 'compression saved space');
  const reply = buildDhcpReply({ xid: 1, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: MAC, options: [[119, enc]] });
  const instances: number[] = [];
  for (let off = 240; reply[off] !== 255; off += 2 + reply[off + 1]!) {
    assert.equal(reply[off], 119);
    instances.push(reply[off + 1]!);
  }
  assert.deepEqual(instances, [...Array<number>(Math.floor(enc.length / 255)).fill(255), enc.length % 255]);
  assert.deepEqual(decodeDomainSearch(parseOk(reply).options.get(119)!), names);
});

/** Deterministic PRNG (LCG) so a failing fuzz case can be reproduced. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('fuzz: 20,000 random and mutated payloads never make the parser throw', () => {
  const rand = rng(0x5eed);
  const int = (n: number) => Math.floor(rand() * n);
  const seedMsg = rawRequest({ flags: 0, ciaddr: 0, giaddr: 0, optionBytes: [53, 1, 1, 61, 7, 1, ...MAC, 57, 2, 2, 64, 55, 7, 1, 3, 6, 12, 15, 28, 42, 255], padTo: 300 });
  let ok = 0;
  for (let i = 0; i < 20_000; i++) {
    let b: Buffer;
    switch (i % 4) {
      case 0: // pure noise of any length
        b = Buffer.from(Array.from({ length: int(700) }, () => int(256)));
        break;
      case 1: {
        // valid header and cookie, random option bytes
        b = Buffer.from(seedMsg.subarray(0, 240 + int(300)));
        for (let j = 240; j < b.length; j++) b[j] = rand() < 0.2 ? [0, 255, 53, 55, 61, 119][int(6)]! : int(256);
        break;
      }
      case 2: {
        // a few byte flips of a valid message, often in the option area
        b = Buffer.from(seedMsg);
        for (let n = 1 + int(6); n > 0; n--) b[rand() < 0.7 ? 240 + int(60) : int(b.length)] = int(256);
        break;
      }
      default: // truncated or extended valid message
        b = rand() < 0.5 ? Buffer.from(seedMsg.subarray(0, int(seedMsg.length + 1))) : Buffer.concat([seedMsg.subarray(0, 240 + int(40)), Buffer.from(Array.from({ length: int(9000) }, () => int(256)))]);
    }
    const r = parseDhcpMessage(b);
    assert.equal(typeof r.ok, 'boolean');
    if (r.ok) {
      ok++;
      dhcpMessageType(r.msg);
      requestedIp(r.msg);
      serverId(r.msg);
      parameterRequestList(r.msg);
      clientId(r.msg);
      maxMessageSize(r.msg);
      assert.equal(r.msg.chaddr.length, 6);
      for (const [tag] of r.msg.options) assert.ok(tag !== 0 && tag !== 255);
    } else {
      assert.equal(typeof r.reason, 'string');
    }
    decodeDomainSearch(b.subarray(240));
  }
  // The corpus must exercise both paths, or the fuzz proves little.
  assert.ok(ok > 2000 && ok < 18_000, `${ok} parsed`);
});
