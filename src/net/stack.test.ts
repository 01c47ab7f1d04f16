import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { DhcpServer } from './dhcp-server.js';
import {
  ACK,
  arpFrame,
  BROADCAST_MAC,
  EMPTY,
  ethFrame,
  ETH_ARP,
  ETH_IPV4,
  ETH_IPV6,
  ETH_VLAN,
  FakeGuest,
  fakeDnsAnswer,
  GATEWAY,
  GUEST_IP,
  GUEST_MAC,
  HOST_ALIAS,
  icmpFrame,
  inetChecksum,
  ip,
  ipPacket,
  P_ICMP,
  P_TCP,
  P_UDP,
  pattern,
  PLAN,
  SYN,
  tcpFrame,
  tcpSegment,
  TRANSLATOR_MAC,
  udpDatagram,
  udpFrame,
  tick,
  waitUntil,
  within,
  type OutFrame,
} from '../../test/support/fake-guest.js';

/**
 * The stack below TCP (docs/network.md, dataplane notes §5): ARP for the translator's own
 * addresses only, Ethernet filtering, ICMP echo, UDP to the host, DNS and DHCP on the gateway, and
 * the drop path: every malformed or foreign frame is counted in stats().dropped and answered with
 * nothing, never thrown.
 */

const ipBytes = (v: number): number[] => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
const dropped = (g: FakeGuest): number => Object.values(g.stack.stats().dropped).reduce((a, b) => a + b, 0);

function guest(t: { after: (fn: () => unknown) => void }, o: ConstructorParameters<typeof FakeGuest>[0] = {}): FakeGuest {
  const g = new FakeGuest(o);
  t.after(() => g.close());
  return g;
}

// ------------------------------------------------------------------------------------------------
// ARP and Ethernet

test('ARP: the gateway and the host alias are answered with the translator MAC, byte for byte', (t) => {
  const g = guest(t);
  for (const target of [GATEWAY, HOST_ALIAS]) {
    g.input(arpFrame({ targetIp: target }));
    const out = g.take();
    assert.equal(out.length, 1);
    const f = out[0]!;
    assert.equal(f.type, ETH_ARP);
    assert.deepEqual(f.dstMac, GUEST_MAC, 'unicast back to the asker');
    assert.deepEqual(f.srcMac, TRANSLATOR_MAC);
    assert.deepEqual(
      [...f.raw.subarray(14)],
      [0, 1, 8, 0, 6, 4, 0, 2, ...TRANSLATOR_MAC, ...ipBytes(target), ...GUEST_MAC, ...ipBytes(GUEST_IP)],
      'RFC 826 reply: sender = translator, target = asker',
    );
  }
  // A unicast ARP request (Linux re-checks neighbours that way) is answered too.
  g.input(arpFrame({ targetIp: GATEWAY, dstMac: TRANSLATOR_MAC }));
  assert.equal(g.take().length, 1);
  g.assertClean();
});

test('ARP: nothing else is claimed (guest itself, other subnet addresses, outside addresses, replies, gratuitous ARP)', (t) => {
  const g = guest(t);
  // Answering for these would hijack traffic: the guest's own address (duplicate detection), the
  // subnet broadcast, a container address, loopback, link-local metadata.
  for (const target of ['198.19.248.2', '198.19.248.3', '198.19.248.0', '198.19.248.255', '198.19.248.253', '8.8.8.8', '127.0.0.1', '169.254.169.254']) {
    g.input(arpFrame({ targetIp: ip(target) }));
  }
  g.input(arpFrame({ op: 2, targetIp: GATEWAY, targetMac: TRANSLATOR_MAC }));
  g.input(arpFrame({ senderIp: GUEST_IP, targetIp: GUEST_IP })); // gratuitous
  assert.equal(g.take().length, 0);
  // Malformed ARP (hardware type 6, IEEE 802): dropped and counted.
  const bad = arpFrame({ targetIp: GATEWAY });
  bad.writeUInt16BE(6, 14);
  g.input(bad);
  g.input(ethFrame(ETH_ARP, Buffer.alloc(20), { dstMac: BROADCAST_MAC }));
  assert.equal(g.take().length, 0);
  assert.equal(g.stack.stats().dropped['malformed ARP'], 2);
  g.assertClean();
});

test('frames not addressed to the translator MAC are dropped, even for the gateway', (t) => {
  const g = guest(t);
  const other = Buffer.from([0x02, 0x42, 0xac, 0x11, 0x00, 0x09]);
  const multicast = Buffer.from([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
  g.input(icmpFrame({ dst: GATEWAY, id: 1, seq: 1, dstMac: other }, Buffer.from('x')));
  g.input(icmpFrame({ dst: GATEWAY, id: 1, seq: 1, dstMac: multicast }, Buffer.from('x')));
  g.input(arpFrame({ targetIp: GATEWAY, dstMac: other }));
  g.input(tcpFrame({ dst: HOST_ALIAS, sport: 1000, dport: 80, seq: 1, flags: SYN, dstMac: other }));
  assert.equal(g.take().length, 0);
  assert.equal(g.stack.stats().dropped['not addressed to the translator'], 4);
  // A multicast source MAC is never a real sender.
  g.input(icmpFrame({ dst: GATEWAY, id: 1, seq: 1, srcMac: multicast }, Buffer.from('x')));
  assert.equal(g.stack.stats().dropped['multicast source MAC'], 1);
  // Broadcast-addressed TCP and ICMP are not for us either (no RST, no echo).
  g.input(tcpFrame({ dst: HOST_ALIAS, sport: 1000, dport: 80, seq: 1, flags: SYN, dstMac: BROADCAST_MAC }));
  g.input(icmpFrame({ dst: GATEWAY, id: 1, seq: 1, dstMac: BROADCAST_MAC }, Buffer.from('x')));
  assert.equal(g.take().length, 0);
  assert.equal(dropped(g), 7);
  assert.equal(g.stack.stats().tcp.flows, 0);
  g.assertClean();
});

// ------------------------------------------------------------------------------------------------
// ICMP

test('ICMP echo to the gateway and the host alias: id, seq and payload echoed, checksum valid', (t) => {
  const g = guest(t, { mtu: 65520 });
  const cases: Array<[number, number, number, Buffer]> = [
    [GATEWAY, 0x1234, 1, pattern(56, 1)],
    [HOST_ALIAS, 0xbeef, 65535, pattern(57, 2)], // odd length: the checksum's trailing byte
    [GATEWAY, 0, 0, EMPTY],
    [GATEWAY, 7, 9, pattern(60000, 3)],
  ];
  for (const [dst, id, seq, data] of cases) {
    g.input(icmpFrame({ dst, id, seq }, data));
    const out = g.take();
    assert.equal(out.length, 1);
    const f = out[0]!;
    assert.equal(f.ip!.src, dst);
    assert.equal(f.ip!.dst, GUEST_IP);
    assert.equal(f.ip!.proto, P_ICMP);
    assert.deepEqual(f.dstMac, GUEST_MAC);
    assert.equal(f.icmp!.type, 0, 'echo reply');
    assert.equal(f.icmp!.code, 0);
    assert.equal(f.icmp!.id, id);
    assert.equal(f.icmp!.seq, seq);
    assert.ok(f.icmp!.data.equals(data), 'payload echoed');
    assert.equal(inetChecksum(f.ip!.payload), 0);
  }
  assert.equal(g.stack.stats().icmp.answered, 4);
  g.assertClean();
});

test('ICMP echo elsewhere goes through the pinger; answered only if the host ping was', async (t) => {
  const asked: string[] = [];
  const g = guest(t, { pinger: async (host) => (asked.push(host), host === '1.1.1.1') });
  g.input(icmpFrame({ dst: ip('1.1.1.1'), id: 5, seq: 6 }, Buffer.from('abc')));
  g.input(icmpFrame({ dst: ip('192.0.2.1'), id: 5, seq: 7 }, Buffer.from('abc')));
  const f = await g.next((x) => x.icmp !== undefined);
  assert.equal(f.ip!.src, ip('1.1.1.1'));
  assert.equal(f.icmp!.seq, 6);
  assert.equal(f.icmp!.data.toString(), 'abc');
  await waitUntil(() => g.stack.stats().icmp.dropped === 1, 1000, 'the unanswered ping');
  assert.deepEqual(asked, ['1.1.1.1', '192.0.2.1']);
  assert.equal(g.take().length, 0);
  // Not an echo request (timestamp request), or a bad ICMP checksum: dropped.
  g.input(icmpFrame({ dst: GATEWAY, type: 13, id: 1, seq: 1 }, Buffer.alloc(12)));
  g.input(icmpFrame({ dst: GATEWAY, id: 1, seq: 1, checksum: 0x1234 }, Buffer.from('x')));
  assert.equal(g.take().length, 0);
  assert.equal(g.stack.stats().dropped['ICMP other than echo request'], 2);
  g.assertClean();
});

// ------------------------------------------------------------------------------------------------
// UDP, DNS, DHCP

test('UDP to the host alias reaches a host socket on 127.0.0.1; the reply comes back to the guest port; other senders are filtered', async (t) => {
  const g = guest(t);
  const server = dgram.createSocket('udp4');
  const stranger = dgram.createSocket('udp4');
  t.after(() => {
    server.close();
    stranger.close();
  });
  await new Promise<void>((r) => server.bind(0, '127.0.0.1', r));
  const port = server.address().port;
  const seen = new Promise<dgram.RemoteInfo>((resolve) =>
    server.once('message', (msg, rinfo) => {
      assert.equal(msg.toString(), 'ping');
      server.send(Buffer.from('pong'), rinfo.port, rinfo.address);
      resolve(rinfo);
    }),
  );
  g.input(udpFrame({ dst: HOST_ALIAS, sport: 5555, dport: port }, Buffer.from('ping')));
  const rinfo = await within(seen, 2000, 'the datagram at the host');
  assert.equal(rinfo.address, '127.0.0.1');
  const f = await g.next((x) => x.udp !== undefined);
  assert.equal(f.ip!.src, HOST_ALIAS, 'from where the guest sent it');
  assert.equal(f.ip!.dst, GUEST_IP);
  assert.equal(f.udp!.sport, port);
  assert.equal(f.udp!.dport, 5555);
  assert.equal(f.udp!.payload.toString(), 'pong');
  // A NAT admits answers only from the destination: another host socket writing to the flow's
  // port is dropped.
  stranger.send(Buffer.from('spoof'), rinfo.port, '127.0.0.1');
  await waitUntil(() => g.stack.stats().udp.dropped === 1, 1000, 'the stranger datagram to be dropped');
  assert.equal(g.take().length, 0);
  assert.equal(g.stack.stats().udp.flows, 1);
  g.assertClean();
});

test('DNS over UDP on the gateway is answered by the responder, from gateway:53 to the guest port', async (t) => {
  const seen: Buffer[] = [];
  // A responder that reads the query only after the frame's turn is over (as a real resolver does).
  const g = guest(t, {
    dns: {
      answer: async (q) => {
        await tick();
        seen.push(Buffer.from(q));
        return fakeDnsAnswer(q);
      },
      tcpSession: () => {
        throw new Error('no TCP in this test');
      },
    },
  });
  const query = Buffer.from('abcd0100000100000000000007example03com0000010001', 'hex');
  const frame = udpFrame({ dst: GATEWAY, sport: 41000, dport: 53 }, query);
  g.input(frame);
  // The query must have been copied out of the frame: the link may reuse the frame's memory.
  frame.fill(0);
  const f = await g.next((x) => x.udp !== undefined);
  assert.equal(f.ip!.src, GATEWAY);
  assert.equal(f.udp!.sport, 53);
  assert.equal(f.ip!.dst, GUEST_IP);
  assert.equal(f.udp!.dport, 41000);
  assert.ok(f.udp!.payload.equals(fakeDnsAnswer(query)));
  assert.ok(seen[0]!.equals(query));
  assert.equal(g.stack.stats().dns.udp, 1);
  // RFC 768: checksum 0 means "none" over IPv4 and is accepted.
  g.input(udpFrame({ dst: GATEWAY, sport: 41001, dport: 53, checksum: 'none' }, query));
  const f2 = await g.next((x) => x.udp !== undefined);
  assert.equal(f2.udp!.dport, 41001);
  g.assertClean();
});

/** A DHCP message as busybox udhcpc sends it (fields byte by byte, independent of dhcp-wire.ts). */
function dhcpRequest(type: number, xid: number, extra: Array<[number, number[]]> = []): Buffer {
  const opts: Array<[number, number[]]> = [[53, [type]], ...extra, [55, [1, 3, 6, 12, 15, 26, 28, 42]]];
  const body = opts.flatMap(([tag, v]) => [tag, v.length, ...v]);
  const b = Buffer.alloc(300);
  b[0] = 1;
  b[1] = 1;
  b[2] = 6;
  b.writeUInt32BE(xid, 4);
  GUEST_MAC.copy(b, 28);
  b.writeUInt32BE(0x63825363, 236);
  Buffer.from([...body, 255]).copy(b, 240);
  return b;
}

function dhcpOptions(p: Buffer): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (let i = 240; i < p.length; ) {
    const tag = p[i]!;
    if (tag === 255) break;
    if (tag === 0) {
      i++;
      continue;
    }
    const len = p[i + 1]!;
    m.set(tag, p.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  return m;
}

test('DHCP DISCOVER → OFFER and REQUEST → ACK from the gateway (real DhcpServer), broadcast to the unconfigured guest', (t) => {
  const dhcp = new DhcpServer({
    serverIp: GATEWAY,
    subnetMask: PLAN.subnet.mask,
    router: GATEWAY,
    dnsServers: [GATEWAY],
    clientIp: GUEST_IP,
    mtu: 65520,
    searchList: [],
    leaseSeconds: 0xffffffff,
    clientMac: GUEST_MAC,
  });
  const g = guest(t, { dhcp, mtu: 65520 });
  const from0 = { src: 0, dst: 0xffffffff, sport: 68, dport: 67, dstMac: BROADCAST_MAC };
  g.input(udpFrame(from0, dhcpRequest(1, 0x11223344)));
  const out = g.take();
  assert.equal(out.length, 1);
  const f: OutFrame = out[0]!;
  assert.deepEqual(f.dstMac, BROADCAST_MAC);
  assert.equal(f.ip!.src, GATEWAY);
  assert.equal(f.ip!.dst, 0xffffffff);
  assert.equal(f.udp!.sport, 67);
  assert.equal(f.udp!.dport, 68);
  const p = f.udp!.payload;
  assert.equal(p[0], 2, 'BOOTREPLY');
  assert.equal(p.readUInt32BE(4), 0x11223344, 'xid echoed');
  assert.equal(p.readUInt32BE(16), GUEST_IP, 'yiaddr = the VM address');
  assert.deepEqual(p.subarray(28, 34), GUEST_MAC);
  const o = dhcpOptions(p);
  assert.deepEqual([...o.get(53)!], [2], 'OFFER');
  assert.deepEqual([...o.get(54)!], ipBytes(GATEWAY), 'server id');
  assert.deepEqual([...o.get(1)!], [255, 255, 255, 0]);
  assert.deepEqual([...o.get(3)!], ipBytes(GATEWAY), 'router');
  assert.deepEqual([...o.get(6)!], ipBytes(GATEWAY), 'DNS = gateway');
  assert.deepEqual([...o.get(26)!], [0xff, 0xf0], 'MTU 65520');

  g.input(udpFrame(from0, dhcpRequest(3, 0x11223345, [[50, ipBytes(GUEST_IP)], [54, ipBytes(GATEWAY)]])));
  const ack = g.take();
  assert.equal(ack.length, 1);
  assert.deepEqual([...dhcpOptions(ack[0]!.udp!.payload).get(53)!], [5], 'ACK');
  // DHCP must come from the client port.
  g.input(udpFrame({ ...from0, sport: 1234 }, dhcpRequest(1, 1)));
  assert.equal(g.take().length, 0);
  assert.equal(g.stack.stats().dropped['DHCP from a port other than N'], 1);
  g.assertClean();
});

// ------------------------------------------------------------------------------------------------
// The drop path

test('malformed, foreign and unsupported frames are dropped and counted, never answered, never thrown', (t) => {
  const g = guest(t);
  const echo = (o: { ip?: Partial<Parameters<typeof ipPacket>[0]> } = {}): Buffer => icmpFrame({ dst: GATEWAY, id: 1, seq: 1, ...o }, Buffer.from('hello'));
  const withIp = (mut: (ipHdr: Buffer) => void, base = echo()): Buffer => {
    const f = Buffer.from(base);
    mut(f.subarray(14));
    return f;
  };
  const fixIpSum = (h: Buffer): void => {
    const hl = (h[0]! & 15) * 4;
    h.writeUInt16BE(0, 10);
    h.writeUInt16BE(inetChecksum(h.subarray(0, Math.min(hl, h.length))), 10);
  };
  const ipv4Of = (proto: number, l4: Buffer, o: Partial<Parameters<typeof ipPacket>[0]> = {}): Buffer => ethFrame(ETH_IPV4, ipPacket({ dst: HOST_ALIAS, proto, ...o }, l4));
  const syn = { dst: HOST_ALIAS, sport: 1000, dport: 80, seq: 1, flags: SYN };

  const cases: Array<[string, Buffer, RegExp]> = [
    ['runt Ethernet frame', Buffer.alloc(10), /^short frame$/],
    ['empty frame', EMPTY, /^short frame$/],
    ['IPv6', ethFrame(ETH_IPV6, Buffer.from('6000000000083a40', 'hex')), /^ethertype N$/],
    ['VLAN-tagged IPv4', ethFrame(ETH_VLAN, Buffer.concat([Buffer.from([0, 5, 8, 0]), echo().subarray(14)])), /^ethertype N$/],
    ['truncated IPv4 header', ethFrame(ETH_IPV4, Buffer.alloc(19, 0x45)), /^truncated IPv4 header$/],
    ['IP version 6 inside an IPv4 ethertype', withIp((h) => ((h[0] = 0x65), fixIpSum(h))), /^IP version N$/],
    ['IHL below 5', withIp((h) => ((h[0] = 0x44), fixIpSum(h))), /^bad IPv4 header length N$/],
    ['IHL beyond the packet', ethFrame(ETH_IPV4, Buffer.concat([Buffer.from([0x4f]), Buffer.alloc(30)])), /^bad IPv4 header length N$/],
    ['bad IPv4 header checksum', withIp((h) => (h[10] = h[10]! ^ 0xff)), /^bad IPv4 header checksum$/],
    ['total length beyond the frame', echo({ ip: { totalLength: 1500 } }), /^IPv4 total length N outside the frame/],
    ['total length below the header', echo({ ip: { totalLength: 12 } }), /^IPv4 total length N outside the frame/],
    ['fragment (MF)', echo({ ip: { frag: 0x2000 } }), /^IPv4 fragment$/],
    ['fragment (offset)', echo({ ip: { frag: 0x0010 } }), /^IPv4 fragment$/],
    ['TCP with a bad checksum', tcpFrame({ ...syn, checksum: 0xdead }), /^bad TCP checksum$/],
    ['truncated TCP header', ipv4Of(P_TCP, Buffer.alloc(12)), /^truncated TCP header$/],
    ['TCP data offset below 20', ipv4Of(P_TCP, tcpSegment({ ...syn, dataOffset: 16 })), /^bad TCP data offset N$/],
    ['TCP data offset beyond the segment', ipv4Of(P_TCP, tcpSegment({ ...syn, dataOffset: 60 })), /^bad TCP data offset N$/],
    ['truncated UDP header', ipv4Of(P_UDP, Buffer.alloc(6)), /^truncated UDP header$/],
    ['UDP length beyond the packet', ipv4Of(P_UDP, udpDatagram({ dst: HOST_ALIAS, sport: 1, dport: 9, length: 100 }, Buffer.alloc(10))), /^bad UDP length N$/],
    ['UDP length below 8', ipv4Of(P_UDP, udpDatagram({ dst: HOST_ALIAS, sport: 1, dport: 9, length: 4 }, Buffer.alloc(10))), /^bad UDP length N$/],
    ['UDP with a bad checksum', udpFrame({ dst: GATEWAY, sport: 1, dport: 53, checksum: 0x1234 }, Buffer.alloc(20)), /^bad UDP checksum$/],
    ['IP protocol 47 (GRE)', ipv4Of(47, Buffer.alloc(8)), /^IP protocol N$/],
    ['truncated ICMP', ipv4Of(P_ICMP, Buffer.from([8, 0, 0xf7, 0xff]), { dst: GATEWAY }), /^ICMP other than echo request$/],
    ['UDP to a refused address (loopback)', udpFrame({ dst: ip('127.0.0.1'), sport: 1, dport: 9 }, Buffer.alloc(4)), /^UDP to N\.N\.N\.N:N refused/],
  ];
  let frames = g.stack.stats().frames;
  for (const [name, frame, key] of cases) {
    const before = g.stack.stats().dropped;
    assert.doesNotThrow(() => g.input(frame), name);
    const after = g.stack.stats();
    assert.equal(after.frames, ++frames, `${name}: counted as a frame`);
    const grew = Object.keys(after.dropped).filter((k) => (after.dropped[k] ?? 0) !== (before[k] ?? 0));
    assert.equal(grew.length, 1, `${name}: exactly one drop counter moved (${grew.join(', ')})`);
    assert.match(grew[0]!, key, name);
    assert.equal(after.dropped[grew[0]!]! - (before[grew[0]!] ?? 0), 1, `${name}: counted once`);
    assert.deepEqual(g.take().map((f) => f.type), [], `${name}: nothing sent back (no RST, no echo)`);
  }
  assert.equal(g.stack.stats().tcp.flows, 0);
  assert.equal(g.stack.stats().tcp.resetsSent, 0);
  g.assertClean();
});

test('Ethernet padding and IPv4 options are handled: a padded short echo is answered without the padding', (t) => {
  const g = guest(t);
  // Minimum Ethernet frames are padded to 60 bytes; the IPv4 total length tells the real size.
  const f = Buffer.concat([icmpFrame({ dst: GATEWAY, id: 3, seq: 4 }, Buffer.from('hi')), Buffer.alloc(20, 0xee)]);
  g.input(f);
  let out = g.take();
  assert.equal(out.length, 1);
  assert.equal(out[0]!.icmp!.data.toString(), 'hi');
  // An IPv4 header with options (IHL 6: NOP NOP NOP EOL).
  g.input(icmpFrame({ dst: GATEWAY, id: 3, seq: 5, ip: { options: Buffer.from([1, 1, 1, 0]) } }, Buffer.from('opt')));
  out = g.take();
  assert.equal(out.length, 1);
  assert.equal(out[0]!.icmp!.data.toString(), 'opt');
  assert.equal(out[0]!.ip!.header.length, 20, 'no options echoed');
  g.assertClean();
});

test('TCP data segments from a guest with a bad checksum are not delivered nor acknowledged', async (t) => {
  const g = guest(t);
  const c = g.conn({ dst: GATEWAY, dport: 53 });
  await c.connect();
  const h = g.sessions[0]!;
  g.input(c.frame({ flags: ACK, seq: c.sndNxt }, Buffer.from('good')));
  c.sndNxt += 4;
  const corrupt = c.frame({ flags: ACK, seq: c.sndNxt }, Buffer.from('evil'));
  corrupt[corrupt.length - 1] = corrupt[corrupt.length - 1]! ^ 1;
  g.take();
  g.input(corrupt);
  assert.equal(g.take().length, 0);
  assert.equal(h.bytes.toString(), 'good');
  assert.equal(g.stack.stats().dropped['bad TCP checksum'], 1);
  g.assertClean();
});
