import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseIp4, parseMac } from './address.js';
import { DhcpServer, type DhcpAnswer, type DhcpConfig } from './dhcp-server.js';
import { decodeDomainSearch, encodeDomainSearch, parseDhcpMessage } from './dhcp-wire.js';

const ip = (s: string): number => parseIp4(s)!;
const MAC = parseMac('02:b3:27:00:00:02')!;
const OTHER_MAC = parseMac('02:42:ac:11:00:05')!;

const CONFIG: DhcpConfig = {
  serverIp: ip('198.19.248.1'),
  subnetMask: ip('255.255.255.0'),
  router: ip('198.19.248.1'),
  dnsServers: [ip('198.19.248.1')],
  clientIp: ip('198.19.248.2'),
  mtu: 65520,
  domainName: 'corp.example.com',
  searchList: ['corp.example.com', 'example.com'],
  leaseSeconds: 0xffffffff,
  clientMac: MAC,
};

type LogRecord = [level: string, msg: string, fields: Record<string, unknown> | undefined];

function server(over: Partial<DhcpConfig> = {}): { srv: DhcpServer; logs: LogRecord[] } {
  const logs: LogRecord[] = [];
  const srv = new DhcpServer({ ...CONFIG, ...over }, (level, msg, fields) => logs.push([level, msg, fields]));
  return { srv, logs };
}

const str = (s: string): number[] => [...Buffer.from(s, 'latin1')];

/** A BOOTREQUEST assembled byte by byte, independently of dhcp-wire.ts. */
function request(r: {
  op?: number;
  xid?: number;
  flags?: number;
  ciaddr?: number;
  giaddr?: number;
  mac?: Buffer;
  options: Array<[number, number[]]>;
  padTo?: number;
}): Buffer {
  const opts = r.options.flatMap(([tag, v]) => [tag, v.length, ...v]);
  const b = Buffer.alloc(Math.max(240 + opts.length + 1, r.padTo ?? 0));
  b[0] = r.op ?? 1;
  b[1] = 1;
  b[2] = 6;
  b.writeUInt32BE(r.xid ?? 0x3903f326, 4);
  b.writeUInt16BE(r.flags ?? 0, 10);
  b.writeUInt32BE(r.ciaddr ?? 0, 12);
  b.writeUInt32BE(r.giaddr ?? 0, 24);
  (r.mac ?? MAC).copy(b, 28);
  b.writeUInt32BE(0x63825363, 236);
  Buffer.from(opts).copy(b, 240);
  b[240 + opts.length] = 255;
  return b;
}

/** What busybox udhcpc 1.36 asks for by default (its OPTION_REQ flags in common.c). */
const BUSYBOX_PRL = [1, 3, 6, 12, 15, 28, 42];
const busyboxCommon: Array<[number, number[]]> = [
  [61, [1, ...MAC]],
  [57, [0x02, 0x40]], // 576
  [60, str('udhcp 1.36.1')],
  [55, BUSYBOX_PRL],
];

/** Shaped like a busybox udhcpc DISCOVER: no broadcast flag, ciaddr 0, padded to 300 bytes. */
const busyboxDiscover = (xid = 0x3903f326) => request({ xid, options: [[53, [1]], ...busyboxCommon], padTo: 300 });
const busyboxRequest = (xid = 0x3903f326) =>
  request({ xid, options: [[53, [3]], [50, [198, 19, 248, 2]], [54, [198, 19, 248, 1]], ...busyboxCommon], padTo: 300 });

/** The reply's options in wire order, walked independently of dhcp-wire.ts. Checks the cookie and END. */
function optionsOf(reply: Buffer): { list: Array<[number, number[]]>; end: number } {
  assert.deepEqual([...reply.subarray(236, 240)], [99, 130, 83, 99], 'magic cookie');
  const list: Array<[number, number[]]> = [];
  let off = 240;
  for (;;) {
    const tag = reply[off];
    assert.notEqual(tag, undefined, 'END missing');
    if (tag === 255) break;
    assert.notEqual(tag, 0, 'no PAD expected between options');
    const len = reply[off + 1]!;
    list.push([tag!, [...reply.subarray(off + 2, off + 2 + len)]]);
    off += 2 + len;
  }
  return { list, end: off };
}

const tags = (reply: Buffer) => optionsOf(reply).list.map(([t]) => t);
const option = (reply: Buffer, tag: number) => optionsOf(reply).list.find(([t]) => t === tag)?.[1];

function answered(a: DhcpAnswer | undefined): DhcpAnswer {
  assert.ok(a, 'expected an answer');
  return a;
}

const SEARCH_119 = [4, ...str('corp'), 7, ...str('example'), 3, ...str('com'), 0, 0xc0, 0x05];

test('a busybox udhcpc DISCOVER → OFFER → REQUEST → ACK exchange, byte by byte', () => {
  const { srv } = server();
  for (const [req, type] of [[busyboxDiscover(), 2], [busyboxRequest(), 5]] as const) {
    const a = answered(srv.handle(req));
    const r = a.reply;
    assert.equal(a.broadcast, true, 'ciaddr 0: broadcast');
    assert.equal(a.yiaddr, ip('198.19.248.2'));
    // Fixed header: BOOTREPLY, Ethernet, xid echoed, flags echoed, yiaddr = the VM, chaddr echoed.
    assert.deepEqual([...r.subarray(0, 12)], [2, 1, 6, 0, 0x39, 0x03, 0xf3, 0x26, 0, 0, 0, 0]);
    assert.deepEqual([...r.subarray(12, 28)], [0, 0, 0, 0, 198, 19, 248, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual([...r.subarray(28, 34)], [0x02, 0xb3, 0x27, 0, 0, 2]);
    assert.ok(r.subarray(34, 236).every((b) => b === 0), 'chaddr padding, sname and file are zero');
    const { list, end } = optionsOf(r);
    // 53 and 54 first; then what busybox asked for, in its order (1 3 6 15; it asked for 12 28 42
    // too, which we do not serve); then the rest in our order; then the client id echoed.
    assert.deepEqual(list, [
      [53, [type]],
      [54, [198, 19, 248, 1]],
      [1, [255, 255, 255, 0]],
      [3, [198, 19, 248, 1]],
      [6, [198, 19, 248, 1]],
      [15, str('corp.example.com')],
      [51, [255, 255, 255, 255]],
      [26, [0xff, 0xf0]],
      [119, SEARCH_119],
      [61, [1, 0x02, 0xb3, 0x27, 0, 0, 2]],
    ]);
    assert.equal(end, 240 + 86);
    assert.equal(r.length, 240 + 86 + 1, 'already above 300 bytes: no padding');
    assert.ok(r.length <= 576 - 28, 'fits the 576-byte datagram busybox accepts');
  }
});

test('renewing: REQUEST with ciaddr and no option 50/54 gets a unicast ACK that echoes ciaddr', () => {
  const { srv } = server();
  const a = answered(srv.handle(request({ ciaddr: ip('198.19.248.2'), options: [[53, [3]], [55, BUSYBOX_PRL]] })));
  assert.equal(a.broadcast, false);
  assert.equal(a.yiaddr, ip('198.19.248.2'));
  assert.deepEqual([...a.reply.subarray(12, 20)], [198, 19, 248, 2, 198, 19, 248, 2]);
  assert.deepEqual(option(a.reply, 53), [5]);
  // The broadcast flag forces a broadcast and is echoed in the reply's flags.
  const b = answered(srv.handle(request({ flags: 0x8000, ciaddr: ip('198.19.248.2'), options: [[53, [3]]] })));
  assert.equal(b.broadcast, true);
  assert.deepEqual([...b.reply.subarray(10, 12)], [0x80, 0]);
});

test('REQUEST without server id (INIT-REBOOT) or without any address is ACKed', () => {
  const { srv } = server();
  const initReboot = answered(srv.handle(request({ options: [[53, [3]], [50, [198, 19, 248, 2]]] })));
  assert.deepEqual(option(initReboot.reply, 53), [5]);
  const bare = answered(srv.handle(request({ options: [[53, [3]]] })));
  assert.deepEqual(option(bare.reply, 53), [5]);
  assert.deepEqual([...bare.reply.subarray(16, 20)], [198, 19, 248, 2]);
});

test('without a parameter request list the options come in our default order', () => {
  const { srv } = server();
  const a = answered(srv.handle(request({ options: [[53, [1]]] })));
  assert.deepEqual(tags(a.reply), [53, 54, 51, 1, 3, 6, 26, 15, 119]);
});

test('the parameter request list orders the options; 53 and 54 stay first; duplicates and unknown tags are harmless', () => {
  const { srv } = server();
  const a = answered(srv.handle(request({ options: [[53, [1]], [55, [119, 119, 26, 99, 54, 6, 3, 53, 1, 51]]] })));
  assert.deepEqual(tags(a.reply), [53, 54, 119, 26, 6, 3, 1, 51, 15]);
});

test('INFORM gets an ACK without yiaddr and without lease time, padded to 300 bytes', () => {
  const { srv } = server({ domainName: undefined, searchList: [] });
  const a = answered(srv.handle(request({ ciaddr: ip('198.19.248.2'), options: [[53, [8]], [55, [51, 1, 3, 6]]] })));
  assert.equal(a.broadcast, false);
  assert.equal(a.yiaddr, ip('198.19.248.2'), 'unicast to the client\'s ciaddr');
  assert.deepEqual([...a.reply.subarray(12, 20)], [198, 19, 248, 2, 0, 0, 0, 0], 'ciaddr echoed, yiaddr 0');
  const { list, end } = optionsOf(a.reply);
  assert.deepEqual(list, [
    [53, [5]],
    [54, [198, 19, 248, 1]],
    [1, [255, 255, 255, 0]],
    [3, [198, 19, 248, 1]],
    [6, [198, 19, 248, 1]],
    [26, [0xff, 0xf0]],
  ]);
  assert.equal(a.reply.length, 300);
  assert.equal(end, 240 + 31);
  assert.ok(a.reply.subarray(end + 1).every((b) => b === 0), 'zero padding after END');
  // An INFORM with the broadcast flag is broadcast.
  assert.equal(answered(srv.handle(request({ flags: 0x8000, ciaddr: ip('198.19.248.2'), options: [[53, [8]]] }))).broadcast, true);
});

test('REQUEST for another address gets a broadcast NAK with only 53, 54, 56 and the client id', () => {
  const { srv, logs } = server();
  const a = answered(srv.handle(request({ options: [[53, [3]], [50, [198, 19, 248, 9]], [54, [198, 19, 248, 1]], [61, [1, ...MAC]], [55, BUSYBOX_PRL]] })));
  assert.equal(a.broadcast, true);
  assert.equal(a.yiaddr, 0);
  assert.deepEqual([...a.reply.subarray(12, 28)], Array<number>(16).fill(0), 'ciaddr, yiaddr, siaddr, giaddr all 0');
  const { list } = optionsOf(a.reply);
  assert.deepEqual(list.map(([t]) => t), [53, 54, 56, 61]);
  assert.deepEqual(list[0], [53, [6]]);
  assert.deepEqual(list[1], [54, [198, 19, 248, 1]]);
  assert.match(Buffer.from(list[2]![1]).toString('latin1'), /198\.19\.248\.9 is not available; use 198\.19\.248\.2/);
  assert.ok(a.reply.length >= 300);
  assert.ok(logs.some(([level, msg]) => level === 'info' && /refusing/.test(msg)));
  // A client renewing an address that is not ours (ciaddr) is NAKed too, and NAK is broadcast
  // even though ciaddr is set (RFC 2131 §4.1).
  const renew = answered(srv.handle(request({ ciaddr: ip('10.1.2.3'), options: [[53, [3]]] })));
  assert.deepEqual(option(renew.reply, 53), [6]);
  assert.equal(renew.broadcast, true);
});

test('REQUEST naming another server id gets no answer', () => {
  const { srv, logs } = server();
  const req = request({ options: [[53, [3]], [50, [198, 19, 248, 2]], [54, [198, 19, 248, 99]]] });
  assert.equal(srv.handle(req), undefined);
  assert.ok(logs.some(([, msg, f]) => /another server/.test(msg) && f?.server === '198.19.248.99'));
  // Even when it asks for an address that is not ours: it is not talking to us.
  assert.equal(srv.handle(request({ options: [[53, [3]], [50, [10, 0, 0, 1]], [54, [10, 0, 0, 254]]] })), undefined);
});

test('RELEASE and DECLINE get no answer but are logged', () => {
  const { srv, logs } = server();
  assert.equal(srv.handle(request({ ciaddr: ip('198.19.248.2'), options: [[53, [7]], [54, [198, 19, 248, 1]]] })), undefined);
  assert.equal(srv.handle(request({ options: [[53, [4]], [50, [198, 19, 248, 2]], [54, [198, 19, 248, 1]]] })), undefined);
  assert.ok(logs.some(([level, msg, f]) => level === 'info' && /released/.test(msg) && f?.ip === '198.19.248.2'));
  assert.ok(logs.some(([level, msg, f]) => level === 'warn' && /declined/.test(msg) && f?.ip === '198.19.248.2'));
});

test('only DHCP BOOTREQUESTs from the VM, not relayed, are answered', () => {
  const { srv, logs } = server();
  assert.equal(srv.handle(request({ op: 2, options: [[53, [1]]] })), undefined, 'BOOTREPLY');
  assert.equal(srv.handle(request({ options: [] })), undefined, 'plain BOOTP (no option 53)');
  assert.equal(srv.handle(request({ options: [[53, [2]]] })), undefined, 'OFFER inside a request');
  assert.equal(srv.handle(request({ options: [[53, [5]]] })), undefined, 'ACK inside a request');
  assert.equal(srv.handle(request({ giaddr: ip('198.19.248.50'), options: [[53, [1]]] })), undefined, 'relayed');
  assert.equal(srv.handle(request({ mac: OTHER_MAC, options: [[53, [1]]] })), undefined, 'another MAC');
  assert.equal(srv.handle(Buffer.from('not dhcp')), undefined, 'malformed');
  assert.ok(logs.some(([level, msg, f]) => level === 'debug' && /malformed/.test(msg) && /too short/.test(String(f?.reason))));
  // Without a configured MAC, any client is answered, with its own chaddr.
  const open = server({ clientMac: undefined }).srv;
  const a = answered(open.handle(request({ mac: OTHER_MAC, options: [[53, [1]]] })));
  assert.deepEqual([...a.reply.subarray(28, 34)], [...OTHER_MAC]);
});

test('configuration: finite lease, no DNS servers, invalid names skipped, invalid values rejected', () => {
  const { srv, logs } = server({ leaseSeconds: 3600, dnsServers: [], domainName: 'bad..domain', searchList: ['ok.example', 'bad name', 'example'] });
  const r = answered(srv.handle(request({ options: [[53, [1]]] }))).reply;
  assert.deepEqual(option(r, 51), [0, 0, 0x0e, 0x10]);
  assert.equal(option(r, 6), undefined);
  assert.equal(option(r, 15), undefined);
  assert.deepEqual(option(r, 119), [2, ...str('ok'), 7, ...str('example'), 0, 0xc0, 0x03]);
  assert.equal(logs.filter(([level]) => level === 'warn').length, 2);
  assert.deepEqual(option(answered(server({ domainName: 'corp.example.com.' }).srv.handle(request({ options: [[53, [1]]] }))).reply, 15), str('corp.example.com'));
  assert.throws(() => new DhcpServer({ ...CONFIG, mtu: 67 }), RangeError);
  assert.throws(() => new DhcpServer({ ...CONFIG, mtu: 65536 }), RangeError);
  assert.throws(() => new DhcpServer({ ...CONFIG, leaseSeconds: -1 }), RangeError);
  assert.throws(() => new DhcpServer({ ...CONFIG, clientMac: Buffer.alloc(5) }), RangeError);
});

test('a long search list is split per RFC 3396 when the client accepts it, and left out when it does not fit', () => {
  const names = Array.from({ length: 40 }, (_, i) => `build-farm-${i}.region-${i % 5}.corp.example.com`);
  const enc = encodeDomainSearch(names);
  assert.ok(enc.length > 255, `encoded search list is ${enc.length} bytes`);
  const { srv, logs } = server({ searchList: names });

  // option 57 = 1500: the whole list goes, as consecutive 119 instances of 255 + rest.
  const big = answered(srv.handle(request({ options: [[53, [1]], [57, [0x05, 0xdc]]] }))).reply;
  const instances = optionsOf(big).list.filter(([t]) => t === 119);
  assert.deepEqual(instances.map(([, v]) => v.length), [...Array<number>(Math.floor(enc.length / 255)).fill(255), enc.length % 255]);
  assert.deepEqual(Buffer.from(instances.flatMap(([, v]) => v)), enc);
  const parsed = parseDhcpMessage(big);
  assert.ok(parsed.ok);
  assert.deepEqual(decodeDomainSearch(parsed.msg.options.get(119)!), names);
  assert.ok(big.length <= 1500 - 28);

  // busybox (option 57 = 576) and clients without option 57: 119 is dropped, the rest stays.
  for (const req of [busyboxDiscover(), request({ options: [[53, [1]]] })]) {
    const small = answered(srv.handle(req)).reply;
    assert.ok(small.length <= 576 - 28, `${small.length} bytes`);
    assert.equal(option(small, 119), undefined);
    assert.deepEqual(option(small, 15), str('corp.example.com'));
    assert.deepEqual(option(small, 26), [0xff, 0xf0]);
  }
  assert.ok(logs.some(([level, msg, f]) => level === 'warn' && /too large/.test(msg) && f?.option === 119));
});

/** Deterministic PRNG (LCG) so a failing fuzz case can be reproduced. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('fuzz: 20,000 random and mutated messages never make handle() throw; every reply is well formed', () => {
  const rand = rng(0xd4c9);
  const int = (n: number) => Math.floor(rand() * n);
  const { srv } = server({ clientMac: undefined });
  const seeds = [
    busyboxDiscover(),
    busyboxRequest(),
    request({ ciaddr: ip('198.19.248.2'), options: [[53, [8]], [55, [1, 3, 6, 119, 26, 51]]] }),
    request({ ciaddr: ip('198.19.248.2'), options: [[53, [3]]] }),
    request({ options: [[53, [3]], [50, [198, 19, 248, 9]], [61, [1, ...MAC]]] }),
  ];
  let replies = 0;
  for (let i = 0; i < 20_000; i++) {
    const seed = seeds[i % seeds.length]!;
    let b: Buffer;
    const mode = int(4);
    if (mode === 0) {
      b = Buffer.from(Array.from({ length: int(600) }, () => int(256)));
    } else if (mode === 1) {
      b = Buffer.from(seed);
      for (let n = 1 + int(4); n > 0; n--) b[rand() < 0.8 ? 240 + int(Math.min(80, b.length - 240)) : int(b.length)] = int(256);
    } else if (mode === 2) {
      b = Buffer.from(seed.subarray(0, int(seed.length + 1)));
    } else {
      // A valid header with a random (often well-formed) option area.
      const opts: number[] = [];
      for (let n = int(12); n > 0; n--) {
        const tag = [53, 50, 54, 55, 57, 61, 119, 12, 0, int(256)][int(10)]!;
        const len = tag === 53 ? 1 : tag === 50 || tag === 54 ? 4 : int(20);
        opts.push(tag, len, ...Array.from({ length: len }, () => (tag === 53 ? 1 + int(9) : int(256))));
      }
      b = Buffer.concat([seed.subarray(0, 240), Buffer.from(opts), Buffer.from(rand() < 0.8 ? [255] : [])]);
    }
    const a = srv.handle(b);
    if (!a) continue;
    replies++;
    const p = parseDhcpMessage(a.reply);
    assert.ok(p.ok, 'reply parses');
    assert.equal(p.msg.op, 2);
    assert.equal(p.msg.xid, b.readUInt32BE(4));
    assert.ok(a.reply.length >= 300);
    assert.deepEqual(optionsOf(a.reply).list.slice(0, 2).map(([t]) => t), [53, 54]);
  }
  assert.ok(replies > 1000 && replies < 19_000, `${replies} replies`);
});
