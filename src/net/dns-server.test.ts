import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { DnsServer, createForwarder, parseIp6, parseServerAddress, readHostResolvConf, type DnsServerOptions } from './dns-server.js';
import { DnsType, Rcode, buildResponse, encodeName, parseMessage, readEdns, udpPayloadLimit, type DnsMessage } from './dns-wire.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

interface QueryOpts {
  id?: number;
  rd?: boolean;
  opcode?: number;
  klass?: number;
  /** Adds an OPT record with this UDP payload size. */
  edns?: number;
  ednsVersion?: number;
}

function query(name: string, type: number, o: QueryOpts = {}): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(o.id ?? 0x1234, 0);
  header[2] = ((o.opcode ?? 0) << 3) | (o.rd === false ? 0 : 1);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(o.edns === undefined ? 0 : 1, 10);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(o.klass ?? 1, 2);
  const parts = [header, encodeName(name), fixed];
  if (o.edns !== undefined) {
    const opt = hex('00 0029 0000 00000000 0000');
    opt.writeUInt16BE(o.edns, 3);
    opt[6] = o.ednsVersion ?? 0;
    parts.push(opt);
  }
  return Buffer.concat(parts);
}

function parsed(buf: Buffer | undefined): DnsMessage {
  assert.ok(buf, 'expected an answer');
  const p = parseMessage(buf);
  assert.ok(p.ok, p.ok ? '' : p.reason);
  return p.message;
}

function err(code: string): Error {
  return Object.assign(new Error(code), { code });
}

/** A fake getaddrinfo over a table; unknown names fail with ENOTFOUND; calls are recorded. */
function fakeLookup(table: Record<string, { 4?: string[]; 6?: string[] } | 'again'>) {
  const calls: string[] = [];
  const lookup = async (name: string, family: 4 | 6): Promise<string[]> => {
    calls.push(`${name}/${family}`);
    const e = table[name];
    if (e === 'again') throw err('EAI_AGAIN');
    const list = e?.[family];
    if (!list) throw err('ENOTFOUND');
    return list;
  };
  return { lookup, calls };
}

const LOCAL = new Map([
  ['host.docker.internal', '198.19.248.254'],
  ['gateway.docker.internal', '198.19.248.1'],
]);

function server(extra: Partial<DnsServerOptions> = {}): DnsServer {
  return new DnsServer({
    localNames: LOCAL,
    forward: async () => {
      throw new Error('forward not expected');
    },
    lookup: async () => {
      throw new Error('lookup not expected');
    },
    ...extra,
  });
}

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

test('A through lookup: exact answer bytes, id, RD copied, RA set, question echoed in its case', async () => {
  const f = fakeLookup({ 'www.example.com': { 4: ['93.184.216.34', '93.184.216.35', '93.184.216.34'] } });
  const s = server({ lookup: f.lookup });
  const out = await s.answer(query('WWW.Example.COM.', DnsType.A, { id: 0xbeef }), 'udp');
  assert.ok(out);
  assert.equal(
    out.toString('hex'),
    'beef81800001000200000000' + '03575757074578616d706c6503434f4d0000010001' + 'c00c000100010000000000045db8d822' + 'c00c000100010000000000045db8d823',
  );
  assert.deepEqual(f.calls, ['www.example.com/4']);
  const noRd = parsed(await s.answer(query('www.example.com', DnsType.A, { rd: false }), 'tcp'));
  assert.equal(noRd.header.rd, false);
  assert.equal(noRd.header.ra, true);
});

test('AAAA through lookup with family 6', async () => {
  const f = fakeLookup({ 'v6.test': { 6: ['2001:db8::1', '::ffff:10.0.0.1', 'fe80::1%eth0'] } });
  const m = parsed(await server({ lookup: f.lookup }).answer(query('v6.test', DnsType.AAAA), 'udp'));
  assert.equal(m.header.rcode, Rcode.NOERROR);
  assert.deepEqual(
    m.answers.map((a) => [a.type, a.ttl, a.rdata.toString('hex')]),
    [
      [28, 0, '20010db8000000000000000000000001'],
      [28, 0, '00000000000000000000ffff0a000001'],
    ],
  );
  assert.deepEqual(f.calls, ['v6.test/6']);
});

test('local names: A with TTL 0, NODATA for AAAA and other types, PTR for their address; nothing leaves', async () => {
  const s = server();
  const a = await s.answer(query('Host.Docker.Internal', DnsType.A, { id: 9 }), 'udp');
  assert.ok(a);
  assert.equal(a.subarray(a.length - 16).toString('hex'), 'c00c00010001000000000004c613f8fe');
  const gw = parsed(await s.answer(query('gateway.docker.internal.', DnsType.A), 'udp'));
  assert.deepEqual(gw.answers[0]!.rdata, Buffer.from([198, 19, 248, 1]));
  for (const type of [DnsType.AAAA, DnsType.MX, DnsType.TXT]) {
    const m = parsed(await s.answer(query('host.docker.internal', type), 'udp'));
    assert.equal(m.header.rcode, Rcode.NOERROR);
    assert.equal(m.answers.length, 0);
  }
  const ptr = parsed(await s.answer(query('254.248.19.198.in-addr.arpa', DnsType.PTR), 'udp'));
  assert.equal(ptr.answers.length, 1);
  assert.deepEqual(ptr.answers[0]!.rdata, encodeName('host.docker.internal'));
});

test('NXDOMAIN when neither family resolves, NODATA when the other does; negatives cached 5 s', async () => {
  let now = 1000;
  const f = fakeLookup({ 'v4only.test': { 4: ['10.1.2.3'] } });
  const s = server({ lookup: f.lookup, now: () => now });
  const nodata = parsed(await s.answer(query('v4only.test', DnsType.AAAA), 'udp'));
  assert.equal(nodata.header.rcode, Rcode.NOERROR);
  assert.equal(nodata.answers.length, 0);
  assert.deepEqual(f.calls, ['v4only.test/6', 'v4only.test/4']);
  const nx = parsed(await s.answer(query('nope.test', DnsType.A), 'udp'));
  assert.equal(nx.header.rcode, Rcode.NXDOMAIN);
  assert.equal(nx.answers.length, 0);
  f.calls.length = 0;
  // Cached: no lookups for 5 s, for either family of the NXDOMAIN name.
  now += 4999;
  assert.equal(parsed(await s.answer(query('nope.test', DnsType.AAAA), 'udp')).header.rcode, Rcode.NXDOMAIN);
  assert.equal(parsed(await s.answer(query('v4only.test', DnsType.AAAA), 'udp')).header.rcode, Rcode.NOERROR);
  assert.deepEqual(f.calls, []);
  now += 2;
  assert.equal(parsed(await s.answer(query('nope.test', DnsType.A), 'udp')).header.rcode, Rcode.NXDOMAIN);
  assert.deepEqual(f.calls, ['nope.test/4', 'nope.test/6']);
});

test('SERVFAIL: EAI_AGAIN, failed forward, a forward answering another query, and the deadline', async () => {
  const f = fakeLookup({ 'flaky.test': 'again' });
  const s = server({ lookup: f.lookup });
  assert.equal(parsed(await s.answer(query('flaky.test', DnsType.A), 'udp')).header.rcode, Rcode.SERVFAIL);
  assert.equal(parsed(await s.answer(query('flaky.test', DnsType.A), 'udp')).header.rcode, Rcode.SERVFAIL);
  assert.equal(f.calls.length, 2, 'SERVFAIL is not cached');
  const failing = server({ forward: async () => Promise.reject(err('ETIMEDOUT')) });
  const mx = parsed(await failing.answer(query('example.com', DnsType.MX, { id: 77 }), 'udp'));
  assert.equal(mx.header.rcode, Rcode.SERVFAIL);
  assert.equal(mx.header.id, 77);
  assert.deepEqual(mx.questions, [{ name: 'example.com', type: DnsType.MX, class: 1 }]);
  const wrongId = server({
    forward: async (q) => {
      const m = parsed(q);
      return buildResponse({ ...m, header: { ...m.header, id: m.header.id ^ 1 } }, Rcode.NOERROR);
    },
  });
  assert.equal(parsed(await wrongId.answer(query('example.com', DnsType.TXT), 'udp')).header.rcode, Rcode.SERVFAIL);
  const hanging = server({ lookup: () => new Promise<string[]>(() => {}), timeoutMs: 30 });
  const t0 = Date.now();
  assert.equal(parsed(await hanging.answer(query('slow.test', DnsType.A), 'udp')).header.rcode, Rcode.SERVFAIL);
  assert.ok(Date.now() - t0 >= 25);
});

test('FORMERR, NOTIMP, REFUSED, BADVERS, and no answer for responses or short input', async () => {
  const s = server();
  const two = query('a.test', DnsType.A);
  two.writeUInt16BE(2, 4);
  const formerr = await s.answer(two, 'udp');
  assert.equal(formerr?.toString('hex'), '123481810000000000000000');
  const zero = hex('4444 0100 0000 0000 0000 0000');
  assert.equal((await s.answer(zero, 'udp'))?.toString('hex'), '444481810000000000000000');
  const cut = query('a.test', DnsType.A).subarray(0, 16);
  assert.equal(parsed(await s.answer(cut, 'udp')).header.rcode, Rcode.FORMERR);
  const status = parsed(await s.answer(query('a.test', DnsType.A, { opcode: 2 }), 'udp'));
  assert.equal(status.header.rcode, Rcode.NOTIMP);
  assert.equal(status.header.opcode, 2);
  assert.equal(status.questions[0]?.name, 'a.test');
  assert.equal(parsed(await s.answer(query('version.bind', DnsType.TXT, { klass: 3 }), 'udp')).header.rcode, Rcode.REFUSED);
  assert.equal(parsed(await s.answer(query('example.com', DnsType.AXFR), 'tcp')).header.rcode, Rcode.NOTIMP);
  const bv = parsed(await s.answer(query('a.test', DnsType.A, { edns: 1232, ednsVersion: 1 }), 'udp'));
  const e = readEdns(bv);
  assert.ok(e.ok && e.edns);
  assert.equal((e.edns.extendedRcode << 4) | bv.header.rcode, Rcode.BADVERS);
  const response = query('a.test', DnsType.A);
  response[2] = response[2]! | 0x80;
  assert.equal(await s.answer(response, 'udp'), undefined);
  assert.equal(await s.answer(hex('1234 0100 0001'), 'udp'), undefined);
  assert.equal(await s.answer(Buffer.alloc(0), 'tcp'), undefined);
});

test('other types are forwarded as the raw query; the answer keeps its OPT; UDP answers are cut to 512 with TC', async () => {
  const seen: Buffer[] = [];
  const s = server({
    forward: async (q) => {
      seen.push(q);
      const m = parsed(q);
      const txt = Array.from({ length: 10 }, (_, i) => ({ type: DnsType.TXT, ttl: 60, rdata: Buffer.concat([Buffer.from([99]), Buffer.alloc(99, 0x61 + i)]) }));
      const e = readEdns(m);
      return buildResponse(m, Rcode.NOERROR, txt, e.ok && e.edns ? { edns: { udpPayloadSize: 1232 } } : {});
    },
  });
  const q = query('Big.Example.com', DnsType.TXT, { id: 5 });
  const udp = parsed(await s.answer(q, 'udp'));
  assert.deepEqual(seen[0], q);
  assert.equal(udp.header.tc, true);
  // 12 + 21 question + 4 × (12 + 100) = 481; a fifth record would need 593.
  assert.equal(udp.answers.length, 4);
  const tcp = parsed(await s.answer(q, 'tcp'));
  assert.equal(tcp.header.tc, false);
  assert.equal(tcp.answers.length, 10);
  assert.equal(tcp.answers[9]!.rdata[1], 0x61 + 9);
  // With EDNS 700: 33 + 5 × 112 + 11 (OPT) = 604; the OPT record survives the cut.
  const withOpt = await s.answer(query('Big.Example.com', DnsType.TXT, { id: 6, edns: 700 }), 'udp');
  assert.ok(withOpt);
  assert.equal(withOpt.length, 604);
  const wm = parsed(withOpt);
  assert.equal(wm.header.tc, true);
  assert.equal(wm.answers.length, 5);
  assert.deepEqual(wm.additionals.map((r) => [r.type, r.class]), [[DnsType.OPT, 1232]]);
  // Reverse lookups of non-local addresses are forwarded too.
  await s.answer(query('4.3.2.1.in-addr.arpa', DnsType.PTR), 'udp');
  assert.equal(seen.length, 4);
});

test('A answers larger than 512 bytes or the EDNS size are cut with TC; TCP gets them whole', async () => {
  const addrs = Array.from({ length: 100 }, (_, i) => `10.0.${i >> 8}.${i & 255}`);
  const s = server({ lookup: fakeLookup({ 'many.test': { 4: addrs } }).lookup });
  const plain = await s.answer(query('many.test', DnsType.A), 'udp');
  assert.ok(plain);
  // 12 + 15 question + 30 × 16 = 507
  assert.equal(plain.length, 507);
  const pm = parsed(plain);
  assert.equal(pm.header.tc, true);
  assert.equal(pm.answers.length, 30);
  const edns = await s.answer(query('many.test', DnsType.A, { edns: 1232 }), 'udp');
  assert.ok(edns);
  const em = parsed(edns);
  // 27 + 74 × 16 + 11 (OPT) = 1222
  assert.equal(edns.length, 1222);
  assert.equal(em.header.tc, true);
  assert.equal(em.answers.length, 74);
  assert.equal(em.additionals[0]?.type, DnsType.OPT);
  const whole = parsed(await s.answer(query('many.test', DnsType.A, { edns: 1232 }), 'tcp'));
  assert.equal(whole.header.tc, false);
  assert.equal(whole.answers.length, 100);
});

test('maxInFlight: beyond it SERVFAIL at once; local names still answered; slots come back', async () => {
  const waiting: Array<ReturnType<typeof deferred<string[]>>> = [];
  const s = server({
    maxInFlight: 2,
    lookup: () => {
      const d = deferred<string[]>();
      waiting.push(d);
      return d.promise;
    },
  });
  const p1 = s.answer(query('one.test', DnsType.A), 'udp');
  const p2 = s.answer(query('two.test', DnsType.A), 'udp');
  await new Promise((r) => setImmediate(r));
  assert.equal(s.inFlightCount, 2);
  const third = parsed(await s.answer(query('three.test', DnsType.A), 'udp'));
  assert.equal(third.header.rcode, Rcode.SERVFAIL);
  assert.equal(waiting.length, 2, 'no lookup started for the refused query');
  assert.equal(parsed(await s.answer(query('host.docker.internal', DnsType.A), 'udp')).answers.length, 1);
  waiting[0]!.resolve(['1.1.1.1']);
  waiting[1]!.resolve(['2.2.2.2']);
  assert.deepEqual(parsed(await p1).answers[0]!.rdata, Buffer.from([1, 1, 1, 1]));
  assert.deepEqual(parsed(await p2).answers[0]!.rdata, Buffer.from([2, 2, 2, 2]));
  assert.equal(s.inFlightCount, 0);
  const p4 = s.answer(query('four.test', DnsType.A), 'udp');
  await new Promise((r) => setImmediate(r));
  waiting[2]!.resolve(['4.4.4.4']);
  assert.equal(parsed(await p4).header.rcode, Rcode.NOERROR);
});

test('a lookup that throws synchronously is a failure, and is not remembered as under way', async () => {
  let calls = 0;
  const s = server({
    lookup: (name) => {
      calls++;
      if (calls === 1) throw err('EAI_AGAIN');
      return Promise.resolve(name === 'sync.test' ? ['10.0.0.9'] : []);
    },
  });
  assert.equal(parsed(await s.answer(query('sync.test', DnsType.A), 'udp')).header.rcode, Rcode.SERVFAIL);
  const ok = parsed(await s.answer(query('sync.test', DnsType.A), 'udp'));
  assert.deepEqual(ok.answers[0]?.rdata, Buffer.from([10, 0, 0, 9]));
  assert.equal(calls, 2);
});

test('concurrent queries for the same name share one lookup', async () => {
  const d = deferred<string[]>();
  let calls = 0;
  const s = server({
    lookup: () => {
      calls++;
      return d.promise;
    },
  });
  const a = s.answer(query('same.test', DnsType.A, { id: 1 }), 'udp');
  const b = s.answer(query('SAME.test', DnsType.A, { id: 2 }), 'udp');
  d.resolve(['10.9.8.7']);
  const [ma, mb] = [parsed(await a), parsed(await b)];
  assert.equal(calls, 1);
  assert.deepEqual([ma.header.id, mb.header.id], [1, 2]);
  assert.equal(mb.questions[0]!.name, 'SAME.test');
  assert.deepEqual(mb.answers[0]!.rdata, Buffer.from([10, 9, 8, 7]));
});

test('fuzz: 20,000 random and mutated queries never throw and never exceed the UDP limit', async () => {
  const rand = seeded(2024);
  const s = new DnsServer({
    localNames: LOCAL,
    lookup: async (name, family) => {
      const h = [...name].reduce((acc, c) => (acc * 31 + c.charCodeAt(0)) >>> 0, 7);
      if (h % 5 === 0) throw err('ENOTFOUND');
      if (h % 11 === 0) throw err('EAI_AGAIN');
      const n = 1 + (h % 300);
      return Array.from({ length: n }, (_, i) => (family === 4 ? `10.${i & 255}.0.1` : `2001:db8::${i.toString(16)}`));
    },
    forward: async (q) => {
      const r = rand();
      if (r < 0.1) throw err('ETIMEDOUT');
      if (r < 0.2) return Buffer.from(q.subarray(0, Math.floor(rand() * q.length)));
      const m = parsed(q);
      const n = Math.floor(rand() * 60);
      const answers = Array.from({ length: n }, () => ({ type: DnsType.TXT, ttl: 1, rdata: Buffer.alloc(Math.floor(rand() * 200)) }));
      return buildResponse(m, Rcode.NOERROR, answers);
    },
  });
  const seeds = [
    query('www.example.com', DnsType.A),
    query('v6.example.com', DnsType.AAAA, { edns: 1400 }),
    query('mail.example.com', DnsType.MX),
    query('host.docker.internal', DnsType.A, { edns: 512 }),
    query('254.248.19.198.in-addr.arpa', DnsType.PTR),
    query('txt.example.com', DnsType.TXT, { edns: 4096 }),
  ];
  let answered = 0;
  for (let i = 0; i < 20_000; i++) {
    let q: Buffer;
    if (rand() < 0.25) {
      q = Buffer.alloc(Math.floor(rand() * 80));
      for (let k = 0; k < q.length; k++) q[k] = Math.floor(rand() * 256);
      if (rand() < 0.5 && q.length >= 3) q[2] = q[2]! & 0x7f; // mostly queries, so they get past QR
    } else {
      q = Buffer.from(seeds[Math.floor(rand() * seeds.length)]!);
      const flips = Math.floor(rand() * 4);
      for (let k = 0; k < flips; k++) q[2 + Math.floor(rand() * (q.length - 2))] = Math.floor(rand() * 256);
      if (rand() < 0.1) q = q.subarray(0, Math.floor(rand() * q.length));
      if (rand() < 0.1) q = Buffer.concat([q, Buffer.alloc(Math.floor(rand() * 40), Math.floor(rand() * 256))]);
    }
    const transport = rand() < 0.8 ? 'udp' : 'tcp';
    const out = await s.answer(q, transport);
    if (!out) continue;
    answered++;
    const p = parseMessage(q);
    const e = p.ok ? readEdns(p.message) : undefined;
    const limit = transport === 'tcp' ? 65535 : udpPayloadLimit(e?.ok ? e.edns : undefined);
    assert.ok(out.length <= limit, `answer of ${out.length} bytes exceeds ${limit}`);
    assert.equal(out.readUInt16BE(0), q.readUInt16BE(0), 'answer carries the query id');
    assert.ok((out[2]! & 0x80) !== 0, 'QR set');
  }
  assert.ok(answered > 10_000, `only ${answered} answers`);
  assert.equal(s.inFlightCount, 0);
});

/** Collects a session's output and splits it into messages. */
function collect(session: Duplex): Promise<{ messages: Buffer[]; ended: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let ended = false;
    session.on('data', (c: Buffer) => chunks.push(c));
    session.on('end', () => {
      ended = true;
    });
    session.on('close', () => {
      const all = Buffer.concat(chunks);
      const messages: Buffer[] = [];
      let off = 0;
      while (off + 2 <= all.length) {
        const len = all.readUInt16BE(off);
        messages.push(all.subarray(off + 2, off + 2 + len));
        off += 2 + len;
      }
      assert.equal(off, all.length, 'output is whole length-prefixed messages');
      resolve({ messages, ended });
    });
  });
}

const framed = (m: Buffer): Buffer => Buffer.concat([Buffer.from([m.length >> 8, m.length & 255]), m]);

test('TCP session: two pipelined queries and a half-close are answered in order, then the stream ends', async () => {
  const slow = deferred<string[]>();
  const s = server({
    lookup: async (name) => (name === 'slow.test' ? slow.promise : ['10.0.0.2']),
  });
  const session = s.tcpSession();
  const done = collect(session);
  const wire = Buffer.concat([framed(query('slow.test', DnsType.A, { id: 1 })), framed(query('fast.test', DnsType.A, { id: 2 }))]);
  // Split at odd places, including inside a length prefix.
  session.write(wire.subarray(0, 1));
  session.write(wire.subarray(1, 20));
  session.write(wire.subarray(20));
  session.end();
  setTimeout(() => slow.resolve(['10.0.0.1']), 20);
  const { messages, ended } = await done;
  assert.equal(ended, true);
  assert.equal(messages.length, 2);
  const [a, b] = messages.map((m) => parsed(m));
  assert.equal(a!.header.id, 1);
  assert.deepEqual(a!.answers[0]!.rdata, Buffer.from([10, 0, 0, 1]));
  assert.equal(b!.header.id, 2);
  assert.deepEqual(b!.answers[0]!.rdata, Buffer.from([10, 0, 0, 2]));
});

test('TCP session: no truncation, and a response-bit message gets no answer', async () => {
  const addrs = Array.from({ length: 100 }, (_, i) => `10.1.0.${i}`);
  const s = server({ lookup: fakeLookup({ 'many.test': { 4: addrs } }).lookup });
  const session = s.tcpSession();
  const done = collect(session);
  const resp = query('x.test', DnsType.A, { id: 3 });
  resp[2] = resp[2]! | 0x80;
  session.end(Buffer.concat([framed(resp), framed(query('many.test', DnsType.A, { id: 4 }))]));
  const { messages } = await done;
  assert.equal(messages.length, 1);
  const m = parsed(messages[0]);
  assert.equal(m.header.id, 4);
  assert.equal(m.answers.length, 100);
  assert.equal(messages[0]!.length, 27 + 1600);
});

test('TCP session: a length below a DNS header destroys the stream', async () => {
  const s = server({ lookup: fakeLookup({ 'ok.test': { 4: ['1.2.3.4'] } }).lookup });
  const session = s.tcpSession();
  const done = collect(session);
  let errored = false;
  session.on('error', () => {
    errored = true;
  });
  session.write(Buffer.concat([Buffer.from([0, 5]), Buffer.alloc(5)]));
  const { messages, ended } = await done;
  assert.equal(session.destroyed, true);
  assert.equal(ended, false);
  assert.equal(errored, false);
  assert.equal(messages.length, 0);
});

test('TCP session: at most 32 queries of one session resolve at once; the rest wait, then all are answered', async () => {
  const waiting: Array<() => void> = [];
  const s = server({
    lookup: (name) =>
      new Promise<string[]>((resolve) => {
        waiting.push(() => resolve(['10.0.0.' + name.split('.')[0]!.slice(1)]));
      }),
  });
  const session = s.tcpSession();
  const done = collect(session);
  const wire = Buffer.concat(Array.from({ length: 40 }, (_, i) => framed(query(`q${i}.test`, DnsType.A, { id: 100 + i }))));
  session.end(wire);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(waiting.length, 32);
  assert.equal(s.inFlightCount, 32);
  while (waiting.length > 0) {
    waiting.shift()!();
    await new Promise((r) => setImmediate(r));
  }
  const { messages, ended } = await done;
  assert.equal(ended, true);
  assert.deepEqual(
    messages.map((m) => parsed(m).header.id),
    Array.from({ length: 40 }, (_, i) => 100 + i),
  );
  assert.deepEqual(parsed(messages[39]).answers[0]!.rdata, Buffer.from([10, 0, 0, 39]));
});

test('TCP session: the server ends an idle session', async () => {
  const s = server({ tcpIdleMs: 30 });
  const session = s.tcpSession();
  let ended = false;
  session.on('end', () => {
    ended = true;
  });
  session.resume();
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(ended, true);
  session.destroy();
});

/** A UDP and a TCP DNS server on the same 127.0.0.1 port. */
async function upstream(handlers: { udp: (q: Buffer, reply: (b: Buffer) => void) => void; tcp?: (q: Buffer) => Buffer }) {
  for (let attempt = 0; ; attempt++) {
    const tcpServer = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const q = buf.subarray(2, 2 + buf.readUInt16BE(0));
          tcpQueries.push(Buffer.from(q));
          sock.end(framed(handlers.tcp!(q)));
        }
      });
    });
    const tcpQueries: Buffer[] = [];
    const udpQueries: Buffer[] = [];
    await new Promise<void>((r) => tcpServer.listen(0, '127.0.0.1', r));
    const port = (tcpServer.address() as net.AddressInfo).port;
    const udp = dgram.createSocket('udp4');
    const bound = await new Promise<boolean>((r) => {
      udp.once('error', () => r(false));
      udp.bind(port, '127.0.0.1', () => r(true));
    });
    if (!bound) {
      tcpServer.close();
      udp.close();
      if (attempt > 5) throw new Error('no free port pair');
      continue;
    }
    udp.on('message', (msg, rinfo) => {
      udpQueries.push(msg);
      handlers.udp(msg, (b) => udp.send(b, rinfo.port, rinfo.address));
    });
    const close = (): void => {
      tcpServer.close();
      udp.close();
    };
    return { port, tcpQueries, udpQueries, close };
  }
}

test('default forwarder: UDP answer with TC is retried over TCP; stray answers are ignored', async () => {
  const answerTxt = (q: Buffer, tc: boolean): Buffer => {
    const m = parsed(q);
    const out = buildResponse(m, Rcode.NOERROR, tc ? [] : [{ type: DnsType.TXT, ttl: 30, rdata: Buffer.from('\x05hello') }]);
    if (tc) out[2] = out[2]! | 0x02;
    return out;
  };
  const up = await upstream({
    udp: (q, reply) => {
      const wrong = Buffer.from(answerTxt(q, false));
      wrong.writeUInt16BE(wrong.readUInt16BE(0) ^ 0xffff, 0); // another id: must be ignored
      reply(wrong);
      reply(answerTxt(q, true));
    },
    tcp: (q) => answerTxt(q, false),
  });
  try {
    const s = new DnsServer({ localNames: LOCAL, servers: () => [`127.0.0.1:${up.port}`], lookup: async () => [] });
    const q = query('Example.com', DnsType.TXT, { id: 0x4242 });
    const m = parsed(await s.answer(q, 'udp'));
    assert.equal(m.header.id, 0x4242);
    assert.equal(m.header.tc, false);
    assert.equal(m.answers.length, 1);
    assert.equal(m.answers[0]!.rdata.toString(), '\x05hello');
    assert.deepEqual(up.udpQueries, [q]);
    assert.deepEqual(up.tcpQueries, [q]);
  } finally {
    up.close();
  }
});

test('default forwarder: a silent server and a SERVFAIL move on to the next server', async () => {
  const silent = dgram.createSocket('udp4');
  await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
  const failing = await upstream({ udp: (q, reply) => reply(buildResponse(parsed(q), Rcode.SERVFAIL)) });
  const good = await upstream({ udp: (q, reply) => reply(buildResponse(parsed(q), Rcode.NOERROR, [{ type: DnsType.MX, ttl: 5, rdata: hex('000a 00') }])) });
  try {
    const forward = createForwarder({ servers: () => [`127.0.0.1:${silent.address().port}`, `127.0.0.1:${failing.port}`, `127.0.0.1:${good.port}`], timeoutMs: 100 });
    const q = query('example.com', DnsType.MX, { id: 31 });
    const ans = parsed(await forward(q));
    assert.equal(ans.header.rcode, Rcode.NOERROR);
    assert.equal(ans.answers[0]!.rdata.toString('hex'), '000a00');
    assert.equal(failing.udpQueries.length, 1);
    // Only a SERVFAIL anywhere: it is returned as the answer; no server at all: rejected.
    const onlyFail = createForwarder({ servers: () => [`127.0.0.1:${failing.port}`], timeoutMs: 100 });
    assert.equal(parsed(await onlyFail(q)).header.rcode, Rcode.SERVFAIL);
    await assert.rejects(createForwarder({ servers: () => [`127.0.0.1:${silent.address().port}`], timeoutMs: 50 })(q), /timed out/);
    await assert.rejects(createForwarder({ servers: () => ['not-an-address'] })(q), /no name servers/);
  } finally {
    silent.close();
    failing.close();
    good.close();
  }
});

test('readHostResolvConf: servers (at most 3), last of search/domain wins, comments ignored', () => {
  const text = [
    '# generated',
    '; also a comment',
    'nameserver 127.0.0.53',
    'nameserver fe80::1%eth0   # inline comment',
    'nameserver bogus',
    'nameserver ::1',
    'nameserver 10.0.0.1',
    'search corp.example. lab.example',
    'options edns0 trust-ad',
  ].join('\n');
  assert.deepEqual(readHostResolvConf(text), { servers: ['127.0.0.53', 'fe80::1%eth0', '::1'], search: ['corp.example', 'lab.example'] });
  assert.deepEqual(readHostResolvConf('search a.example b.example\ndomain c.example\n'), { servers: [], search: ['c.example'] });
  assert.deepEqual(readHostResolvConf('domain c.example\nsearch a.example\n'), { servers: [], search: ['a.example'] });
  assert.deepEqual(readHostResolvConf(''), { servers: [], search: [] });
});

test('parseIp6 and parseServerAddress', () => {
  assert.equal(parseIp6('::')?.toString('hex'), '0'.repeat(32));
  assert.equal(parseIp6('::1')?.toString('hex'), '0'.repeat(31) + '1');
  assert.equal(parseIp6('2001:DB8:0:0:1::2')?.toString('hex'), '20010db8000000000001000000000002');
  assert.equal(parseIp6('::ffff:192.0.2.1')?.toString('hex'), '00000000000000000000ffffc0000201');
  assert.equal(parseIp6('1:2:3:4:5:6:7:8')?.toString('hex'), '00010002000300040005000600070008');
  for (const bad of ['fe80::1%eth0', '1.2.3.4', '1::2::3', '12345::', 'x']) assert.equal(parseIp6(bad), undefined, bad);
  assert.deepEqual(parseServerAddress('10.0.0.1'), { host: '10.0.0.1', port: 53 });
  assert.deepEqual(parseServerAddress('10.0.0.1:5353'), { host: '10.0.0.1', port: 5353 });
  assert.deepEqual(parseServerAddress('[::1]:5353'), { host: '::1', port: 5353 });
  assert.deepEqual(parseServerAddress('2001:db8::53'), { host: '2001:db8::53', port: 53 });
  assert.equal(parseServerAddress('example.com'), undefined);
  assert.equal(parseServerAddress('10.0.0.1:0'), undefined);
});

test('host loopback answers become the host alias; IPv6 loopback is left out', async () => {
  const server = new DnsServer({
    localNames: new Map(),
    loopbackAlias: '198.19.248.254',
    lookup: fakeLookup({ 'api.test': { 4: ['127.0.0.1', '10.1.2.3'], 6: ['::1'] } }).lookup,
  });
  const a = parsed(await server.answer(query('api.test', DnsType.A), 'udp'));
  assert.deepEqual(a.answers.map((r) => [...r.rdata].join('.')), ['198.19.248.254', '10.1.2.3']);
  const aaaa = parsed(await server.answer(query('api.test', DnsType.AAAA), 'udp'));
  assert.equal(aaaa.header.rcode, Rcode.NOERROR, 'the name exists (it has A records): NODATA');
  assert.equal(aaaa.answers.length, 0);
});
