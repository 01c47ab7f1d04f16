import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { FrameStreamDecoder, LENGTH_PREFIX, MAX_FRAME, type LinkRead } from './qemu-link.js';
import { DhcpServer } from './dhcp-server.js';
import {
  ACK,
  arpFrame,
  BROADCAST_MAC,
  ETH_VLAN,
  FakeGuest,
  FIN,
  GATEWAY,
  GUEST_MAC,
  GUEST_IP,
  HOST_ALIAS,
  hostServer,
  icmpFrame,
  inetChecksum,
  PLAN,
  PSH,
  RST,
  Rng,
  SYN,
  tcpFrame,
  tcpOptions,
  udpFrame,
  waitUntil,
  type GuestConn,
  type OutFrame,
} from '../../test/support/fake-guest.js';

/**
 * QEMU's `-netdev stream` framing (4-byte big-endian length + frame) and fuzzing of everything a
 * guest or a broken link can put on the wire. The decoder's output is compared with a one-line
 * reference model for every chunking; the stack must survive any frame without throwing and with
 * its tables bounded.
 */

function prefixed(frames: Buffer[]): Buffer {
  return Buffer.concat(frames.flatMap((f) => [Buffer.from([f.length >>> 24, (f.length >>> 16) & 255, (f.length >>> 8) & 255, f.length & 255]), f]));
}

type Out = { frames: Buffer[]; error: string | undefined };

function decode(chunks: Buffer[], d = new FrameStreamDecoder()): Out {
  const frames: Buffer[] = [];
  let error: string | undefined;
  const sink = (r: LinkRead) => {
    if (error !== undefined) throw new Error('output after a framing error');
    if (r.kind === 'frame') frames.push(Buffer.from(r.frame));
    else error = r.reason;
  };
  for (const c of chunks) d.push(c, sink);
  return { frames, error };
}

/** Reference model: walk the whole stream at once. */
function reference(stream: Buffer): Out {
  const frames: Buffer[] = [];
  let off = 0;
  while (stream.length - off >= LENGTH_PREFIX) {
    const len = stream.readUInt32BE(off);
    if (len === 0 || len > MAX_FRAME) return { frames, error: `frame length ${len} outside 1..${MAX_FRAME}` };
    if (stream.length - off - LENGTH_PREFIX < len) break;
    frames.push(stream.subarray(off + LENGTH_PREFIX, off + LENGTH_PREFIX + len));
    off += LENGTH_PREFIX + len;
  }
  return { frames, error: undefined };
}

function sameOut(a: Out, b: Out, what: string): void {
  assert.equal(a.error, b.error, `${what}: error`);
  assert.equal(a.frames.length, b.frames.length, `${what}: frame count`);
  for (let i = 0; i < a.frames.length; i++) assert.ok(a.frames[i]!.equals(b.frames[i]!), `${what}: frame ${i}`);
}

const F1 = Buffer.from([0xaa]);
const F2 = Buffer.alloc(60, 0x5c);
const F3 = Buffer.from(Array.from({ length: 1514 }, (_, i) => i & 0xff));

test('frames split at every byte boundary are reassembled exactly', () => {
  const stream = prefixed([F1, F2, F3]);
  for (let cut = 0; cut <= stream.length; cut++) {
    sameOut(decode([stream.subarray(0, cut), stream.subarray(cut)]), { frames: [F1, F2, F3], error: undefined }, `cut at ${cut}`);
  }
});

test('frames split at every pair of boundaries (three chunks, small frames)', () => {
  const frames = [F1, Buffer.alloc(14, 1), Buffer.alloc(40, 2), Buffer.from([7, 8, 9])];
  const stream = prefixed(frames);
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      sameOut(decode([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]), { frames, error: undefined }, `cuts ${a},${b}`);
    }
  }
});

test('one byte at a time, including a 64 KiB frame, in linear time', () => {
  const big = Buffer.alloc(MAX_FRAME, 0x3c);
  const stream = prefixed([F2, big, F1]);
  const chunks: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) chunks.push(stream.subarray(i, i + 1));
  const t0 = performance.now();
  const out = decode(chunks);
  const ms = performance.now() - t0;
  sameOut(out, { frames: [F2, big, F1], error: undefined }, 'bytewise');
  // A quadratic re-copy of the buffered bytes per chunk takes tens of seconds here.
  assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

test('many frames in one chunk are delivered as views of it, without copies', () => {
  const frames = Array.from({ length: 1000 }, (_, i) => Buffer.alloc(1 + (i % 100), i & 0xff));
  const stream = prefixed(frames);
  const got: Buffer[] = [];
  new FrameStreamDecoder().push(stream, (r) => {
    if (r.kind === 'frame') got.push(r.frame);
  });
  assert.equal(got.length, 1000);
  for (let i = 0; i < 1000; i++) {
    assert.ok(got[i]!.equals(frames[i]!));
    assert.equal(got[i]!.buffer, stream.buffer);
  }
});

test('a zero length or one above MAX_FRAME is a framing error; nothing after it is delivered until reset()', () => {
  for (const bad of [0, MAX_FRAME + 1, 0x10000000, 0xffffffff]) {
    const head = prefixed([F1, F2]);
    const badLen = Buffer.alloc(4);
    badLen.writeUInt32BE(bad >>> 0);
    const tail = prefixed([F3, F1]);
    for (const chunks of [[Buffer.concat([head, badLen, tail])], [head, badLen.subarray(0, 2), badLen.subarray(2), tail], [head, Buffer.concat([badLen, tail])]]) {
      const d = new FrameStreamDecoder();
      const out = decode(chunks, d);
      assert.equal(out.frames.length, 2, `frames before the bad length ${bad} are delivered`);
      assert.match(out.error ?? '', new RegExp(`frame length ${bad >>> 0} outside`));
      // Later input on the failed decoder is ignored.
      const after = decode([prefixed([F2])], d);
      assert.deepEqual(after, { frames: [], error: undefined });
      d.reset();
      sameOut(decode([prefixed([F2])], d), { frames: [F2], error: undefined }, 'after reset');
    }
  }
  // MAX_FRAME itself is allowed.
  const max = Buffer.alloc(MAX_FRAME, 1);
  sameOut(decode([prefixed([max])]), { frames: [max], error: undefined }, 'MAX_FRAME');
});

test('fuzz: 20,000 random and mutated chunk streams decode like the reference model, never throwing', () => {
  const rng = new Rng(0xdecaf);
  for (let iter = 0; iter < 20_000; iter++) {
    let stream: Buffer;
    const mode = rng.int(4);
    if (mode === 0) {
      stream = rng.bytes(rng.int(200)); // pure noise
    } else {
      const frames = Array.from({ length: 1 + rng.int(6) }, () => rng.bytes(1 + (rng.int(10) === 0 ? rng.int(3000) : rng.int(80))));
      stream = prefixed(frames);
      if (mode >= 2) {
        // Flip bytes (often inside a length prefix), truncate, or splice in garbage.
        const flips = 1 + rng.int(3);
        for (let k = 0; k < flips && stream.length > 0; k++) stream[rng.int(stream.length)] = rng.int(256);
        if (rng.int(3) === 0) stream = stream.subarray(0, rng.int(stream.length + 1));
        if (rng.int(4) === 0) {
          const at = rng.int(stream.length + 1);
          stream = Buffer.concat([stream.subarray(0, at), rng.bytes(1 + rng.int(6)), stream.subarray(at)]);
        }
      }
    }
    const chunks: Buffer[] = [];
    for (let off = 0; off < stream.length; ) {
      const n = rng.int(4) === 0 ? rng.int(4) : 1 + rng.int(stream.length);
      chunks.push(stream.subarray(off, off + n));
      off += n;
    }
    let out: Out | undefined;
    assert.doesNotThrow(() => {
      out = decode(chunks);
    }, `iteration ${iter}`);
    sameOut(out!, reference(stream), `iteration ${iter}`);
  }
});

// ------------------------------------------------------------------------------------------------
// Stack fuzz

const TUNING = { maxTcpFlows: 64, maxConnecting: 8, maxUdpFlows: 16, connectTimeoutMs: 500 };

/** Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of a frame, where it parses. */
function fixChecksums(f: Buffer): void {
  if (f.length < 34 || f.readUInt16BE(12) !== 0x0800) return;
  const p = f.subarray(14);
  const hl = (p[0]! & 15) * 4;
  if (hl < 20 || hl > p.length) return;
  p.writeUInt16BE(0, 10);
  p.writeUInt16BE(inetChecksum(p.subarray(0, hl)), 10);
  const total = Math.min(p.readUInt16BE(2), p.length);
  if (total < hl) return;
  const l4 = p.subarray(hl, total);
  const pseudo = Buffer.alloc(12);
  p.copy(pseudo, 0, 12, 20);
  pseudo[9] = p[9]!;
  pseudo.writeUInt16BE(l4.length, 10);
  if (p[9] === 6 && l4.length >= 20) {
    l4.writeUInt16BE(0, 16);
    l4.writeUInt16BE(inetChecksum(pseudo, l4), 16);
  } else if (p[9] === 17 && l4.length >= 8 && l4.readUInt16BE(6) !== 0) {
    l4.writeUInt16BE(0, 6);
    l4.writeUInt16BE(inetChecksum(pseudo, l4) || 0xffff, 6);
  } else if (p[9] === 1 && l4.length >= 4) {
    l4.writeUInt16BE(0, 2);
    l4.writeUInt16BE(inetChecksum(l4), 2);
  }
}

test('fuzz: 20,000 random and mutated frames into Stack.input() never throw, tables stay bounded, the stack still works after', async (t) => {
  const srv = await hostServer();
  const udpSink = dgram.createSocket('udp4');
  await new Promise<void>((r) => udpSink.bind(0, '127.0.0.1', r));
  const udpPort = udpSink.address().port;
  // Whatever address or port a mutation produces, host connects go to our own server only.
  const realConnect = net.connect;
  const m = mock.method(net, 'connect', () => realConnect({ host: '127.0.0.1', port: srv.port, allowHalfOpen: true }));
  const dhcp = new DhcpServer({ serverIp: GATEWAY, subnetMask: PLAN.subnet.mask, router: GATEWAY, dnsServers: [GATEWAY], clientIp: GUEST_IP, mtu: 1500, searchList: ['example.com'], leaseSeconds: 0xffffffff, clientMac: GUEST_MAC });
  const g = new FakeGuest({ tuning: TUNING, dhcp, strictMac: false });
  t.after(async () => {
    g.close();
    m.mock.restore();
    udpSink.close();
    await srv.close();
  });

  // Some established flows, so mutated segments reach the per-flow code: three to the in-process
  // route (gateway:53) and two to the host server.
  const conns: GuestConn[] = [];
  for (let i = 0; i < 3; i++) {
    const c = g.conn({ dst: GATEWAY, dport: 53, wscale: i, mss: 536 + i * 500 });
    await c.connect();
    conns.push(c);
  }
  for (let i = 0; i < 2; i++) {
    const c = g.conn({ dport: srv.port });
    await c.connect();
    conns.push(c);
  }
  for (const h of g.sessions) h.send(Buffer.alloc(20000, 0x61)); // host → guest data in flight

  const rng = new Rng(0xf00d);
  const dhcpDiscover = Buffer.alloc(300);
  dhcpDiscover[0] = 1;
  dhcpDiscover[1] = 1;
  dhcpDiscover[2] = 6;
  GUEST_MAC.copy(dhcpDiscover, 28);
  dhcpDiscover.writeUInt32BE(0x63825363, 236);
  Buffer.from([53, 1, 1, 255]).copy(dhcpDiscover, 240);
  const templates: Array<() => Buffer> = [
    () => arpFrame({ targetIp: GATEWAY }),
    () => icmpFrame({ dst: GATEWAY, id: rng.int(65536), seq: rng.int(65536) }, rng.bytes(rng.int(100))),
    () => icmpFrame({ dst: HOST_ALIAS, id: 1, seq: 2 }, rng.bytes(8)),
    () => udpFrame({ dst: GATEWAY, sport: 1024 + rng.int(1000), dport: 53 }, rng.bytes(12 + rng.int(60))),
    () => udpFrame({ dst: GATEWAY, sport: 1024 + rng.int(1000), dport: 53, checksum: 'none' }, rng.bytes(12 + rng.int(60))),
    () => udpFrame({ src: 0, dst: 0xffffffff, sport: 68, dport: 67, dstMac: BROADCAST_MAC }, dhcpDiscover),
    () => udpFrame({ dst: HOST_ALIAS, sport: 2000 + rng.int(100), dport: udpPort, checksum: 'none' }, rng.bytes(rng.int(50))),
    () => tcpFrame({ dst: HOST_ALIAS, sport: 3000 + rng.int(200), dport: srv.port, seq: rng.u32(), flags: SYN, options: tcpOptions({ mss: rng.int(65536), wscale: rng.int(20) }) }),
    () => tcpFrame({ dst: GATEWAY, sport: 5000 + rng.int(200), dport: 53, seq: rng.u32(), flags: SYN }),
    () => tcpFrame({ dst: HOST_ALIAS, sport: rng.int(65536), dport: rng.int(65536), seq: rng.u32(), ack: rng.u32(), flags: rng.int(256) }, rng.bytes(rng.int(40))),
    () => {
      // A segment of an established flow with random flags, sequence numbers near the real ones,
      // random window and options: the interesting state machine paths.
      const c = rng.pick(conns);
      const near = (v: number): number => (v + rng.int(200000) - 100000) >>> 0;
      const seq = rng.int(3) === 0 ? rng.u32() : near(c.sndNxt);
      const ack = rng.int(3) === 0 ? rng.u32() : near(c.rcvNxt);
      const flags = rng.pick([ACK, ACK | PSH, ACK | FIN, FIN, RST, RST | ACK, SYN, SYN | ACK, ACK, ACK, rng.int(256)]);
      const opts = rng.int(4) === 0 ? tcpOptions({ mss: rng.int(65536), wscale: rng.int(256), sackOk: true, ts: [rng.u32(), rng.u32()] }) : undefined;
      return c.frame({ flags, seq, ack, window: rng.int(65536), ...(opts ? { options: opts } : {}) }, rng.bytes(rng.int(3) === 0 ? rng.int(1500) : 0));
    },
  ];

  let thrown = 0;
  const synAcks = new Map<string, OutFrame>();
  const framesBefore = g.stack.stats().frames;
  for (let iter = 0; iter < 20_000; iter++) {
    let f = rng.pick(templates)();
    switch (rng.int(8)) {
      case 0:
        break; // valid
      case 1:
        for (let k = 1 + rng.int(4); k > 0; k--) f[rng.int(f.length)] = rng.int(256);
        break;
      case 2:
        // Header fields hit with valid checksums recomputed, so the damage gets past the checks.
        for (let k = 1 + rng.int(3); k > 0; k--) f[14 + rng.int(Math.max(1, Math.min(60, f.length - 14)))] = rng.int(256);
        fixChecksums(f);
        break;
      case 3:
        f = f.subarray(0, rng.int(f.length + 1));
        break;
      case 4:
        f = Buffer.concat([f, rng.bytes(1 + rng.int(100))]);
        break;
      case 5:
        f = rng.bytes(rng.int(120));
        break;
      case 6: {
        // IPv4 total length, UDP length or TCP data offset set to edge values, checksums fixed.
        const at = rng.pick([16, 17, 38, 39, 46]);
        if (f.length > at) f[at] = rng.pick([0, 1, 0x7f, 0x80, 0xff, rng.int(256)]);
        fixChecksums(f);
        break;
      }
      case 7:
        if (f.length >= 14) f.writeUInt16BE(rng.pick([0x86dd, ETH_VLAN, 0x88a8, 0x0806, 0x0800, rng.int(65536)]), 12);
        break;
    }
    try {
      g.stack.input(f);
      if (rng.int(4) === 0) g.stack.endBatch();
    } catch (err) {
      thrown++;
      if (thrown === 1) console.error('first throw at iteration', iter, err);
    }
    if (iter % 2000 === 0) {
      await new Promise((r) => setImmediate(r)); // let host sockets and timers run
      const s = g.stack.stats();
      assert.ok(s.tcp.flows <= TUNING.maxTcpFlows, `tcp flows ${s.tcp.flows}`);
      assert.ok(s.tcp.connecting <= TUNING.maxConnecting, `connecting ${s.tcp.connecting}`);
      assert.ok(s.udp.flows <= TUNING.maxUdpFlows, `udp flows ${s.udp.flows}`);
    }
    // The fuzz checks survival and bounds, not answers; SYN-ACKs are kept to reset them at the end.
    for (const o of g.take()) if (o.tcp && o.tcp.flags === (SYN | ACK)) synAcks.set(`${o.ip!.src}:${o.tcp.sport}:${o.tcp.dport}`, o);
  }
  g.stack.endBatch();
  assert.equal(thrown, 0, 'Stack.input() threw');
  const s = g.stack.stats();
  assert.ok(s.tcp.flows <= TUNING.maxTcpFlows);
  assert.ok(s.udp.flows <= TUNING.maxUdpFlows);
  assert.ok(s.tcp.queuedBytes <= TUNING.maxTcpFlows * 4 * 1024 * 1024, `queued ${s.tcp.queuedBytes}`);
  // The fuzz reached past the parsers: flows opened and refused, resets sent, answers given.
  assert.ok(s.tcp.opened > 10 && s.tcp.refused > 10 && s.tcp.resetsSent > 100, `tcp ${JSON.stringify(s.tcp)}`);
  assert.ok(s.icmp.answered > 100 && s.dns.udp > 100 && s.udp.sent > 100, 'icmp, dns and udp paths exercised');
  // The drop counters are grouped by reason so the table stays small whatever the guest sends.
  assert.ok(Object.keys(s.dropped).length <= 40, `drop table has ${Object.keys(s.dropped).length} keys: ${Object.keys(s.dropped).join(' | ')}`);
  assert.equal(s.frames, framesBefore + 20_000, 'every frame counted');

  // Still working. The fuzz SYNs left half-open flows (the table may well be full: that is the
  // bound at work); a real guest kernel answers SYN-ACKs it does not know with RST (seq = their
  // ack), which frees them.
  await waitUntil(() => g.stack.stats().tcp.connecting === 0, 2000, 'pending connects');
  for (const f of g.take((x) => x.tcp !== undefined && x.tcp.flags === (SYN | ACK))) synAcks.set(`${f.ip!.src}:${f.tcp!.sport}:${f.tcp!.dport}`, f);
  for (const f of synAcks.values()) g.input(tcpFrame({ dst: f.ip!.src, sport: f.tcp!.dport, dport: f.tcp!.sport, seq: f.tcp!.ack, flags: RST }));
  assert.ok(g.stack.stats().tcp.flows <= conns.length, `flows left: ${g.stack.stats().tcp.flows}`);
  m.mock.restore();
  const c = g.conn({ dst: GATEWAY, dport: 53, sport: 60001 });
  await c.connect();
  const h = g.sessions[g.sessions.length - 1]!;
  c.send(Buffer.from('still alive'));
  await c.next((x) => x.ack === c.sndNxt);
  assert.equal(h.bytes.toString(), 'still alive');
  g.input(icmpFrame({ dst: GATEWAY, id: 9, seq: 9 }, Buffer.from('ping')));
  const echo = await g.next((x) => x.icmp !== undefined && x.icmp.id === 9);
  assert.equal(echo.icmp!.data.toString(), 'ping');
  assert.deepEqual(g.violations, [], 'every frame the stack emitted under fuzzing was well formed');
});
