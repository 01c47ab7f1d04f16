import net from 'node:net';
import { Duplex } from 'node:stream';
import { parseIp4, parseMac, formatIp4, type Ip4 } from '../../src/net/address.js';
import { FRAME_PREFIX } from '../../src/net/ethernet.js';
import type { Pinger } from '../../src/net/icmp-service.js';
import { planFor, type NetPlan } from '../../src/net/policy.js';
import { Stack, type DhcpResponder, type DnsResponder, type StackTuning } from '../../src/net/stack.js';

/**
 * Test harness for the translator (not a test file): a fake guest that builds frames byte by byte
 * (Ethernet, IPv4, TCP with options, UDP, ICMP echo, ARP) with its own checksum code, feeds them to
 * a real `Stack`, and parses what the stack emits, again independently of the stack's own wire
 * modules, so a bug shared by a builder and a parser cannot hide itself.
 *
 * Every emitted frame is checked on arrival (prefix, Ethernet addresses, IPv4 header and checksum,
 * TCP/UDP/ICMP checksums, and "every TCP segment but a SYN or an RST carries ACK", podman#22146);
 * what fails lands in `violations`, which each test asserts empty at the end (`assertClean`).
 */

export const SUBNET = '198.19.248.0/24';
export const PLAN: NetPlan = planFor(SUBNET);
export const GATEWAY: Ip4 = PLAN.gateway;
export const HOST_ALIAS: Ip4 = PLAN.hostAlias;
export const GUEST_IP: Ip4 = PLAN.guest;
export const TRANSLATOR_MAC = parseMac('02:b3:27:00:00:01')!;
export const GUEST_MAC = parseMac('02:b3:27:00:00:02')!;
export const BROADCAST_MAC = Buffer.alloc(6, 0xff);
export const EMPTY = Buffer.alloc(0);

export const ip = (text: string): Ip4 => {
  const v = parseIp4(text);
  if (v === undefined) throw new Error(`bad IPv4 literal ${text}`);
  return v;
};

// TCP flags, spelled out here rather than imported so the tests do not share constants with the code.
export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;
export const URG = 0x20;
export const ECE = 0x40;
export const CWR = 0x80;

export const ETH_IPV4 = 0x0800;
export const ETH_ARP = 0x0806;
export const ETH_IPV6 = 0x86dd;
export const ETH_VLAN = 0x8100;
export const P_ICMP = 1;
export const P_TCP = 6;
export const P_UDP = 17;

export function flagNames(f: number): string {
  const names: string[] = [];
  const all: Array<[number, string]> = [
    [SYN, 'SYN'],
    [FIN, 'FIN'],
    [RST, 'RST'],
    [PSH, 'PSH'],
    [ACK, 'ACK'],
    [URG, 'URG'],
    [ECE, 'ECE'],
    [CWR, 'CWR'],
  ];
  for (const [bit, n] of all) if (f & bit) names.push(n);
  return names.join('|') || 'none';
}

// ------------------------------------------------------------------------------------------------
// Sequence arithmetic (mod 2^32)

export const sadd = (a: number, n: number): number => (a + n) >>> 0;
export const sdiff = (a: number, b: number): number => (a - b) | 0;
export const slt = (a: number, b: number): boolean => sdiff(a, b) < 0;
export const sleq = (a: number, b: number): boolean => sdiff(a, b) <= 0;

// ------------------------------------------------------------------------------------------------
// Checksums: a straightforward RFC 1071 implementation, independent of src/net/checksum.ts.

function onesSum(bufs: Uint8Array[], initial = 0): number {
  let sum = initial;
  let odd: number | undefined;
  for (const b of bufs) {
    for (let i = 0; i < b.length; i++) {
      if (odd === undefined) odd = b[i]!;
      else {
        sum += (odd << 8) | b[i]!;
        odd = undefined;
      }
    }
  }
  if (odd !== undefined) sum += odd << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

export function inetChecksum(...bufs: Uint8Array[]): number {
  return ~onesSum(bufs) & 0xffff;
}

function pseudo(src: Ip4, dst: Ip4, proto: number, length: number): Buffer {
  const p = Buffer.alloc(12);
  p.writeUInt32BE(src >>> 0, 0);
  p.writeUInt32BE(dst >>> 0, 4);
  p[9] = proto;
  p.writeUInt16BE(length, 10);
  return p;
}

// ------------------------------------------------------------------------------------------------
// Frame builders (guest → translator)

export interface L2 {
  srcMac?: Buffer;
  dstMac?: Buffer;
}

export function ethFrame(type: number, payload: Buffer, l2: L2 = {}): Buffer {
  const f = Buffer.alloc(14 + payload.length);
  (l2.dstMac ?? TRANSLATOR_MAC).copy(f, 0);
  (l2.srcMac ?? GUEST_MAC).copy(f, 6);
  f.writeUInt16BE(type, 12);
  payload.copy(f, 14);
  return f;
}

export interface IpOpts {
  src?: Ip4;
  dst: Ip4;
  proto: number;
  ttl?: number;
  id?: number;
  /** The whole flags + fragment offset field; default DF (0x4000). */
  frag?: number;
  /** Header options (padded by the caller to a multiple of 4). */
  options?: Buffer;
  /** Overrides (for malformed packets). */
  version?: number;
  ihl?: number;
  totalLength?: number;
  checksum?: number;
}

export function ipPacket(o: IpOpts, payload: Buffer): Buffer {
  const opt = o.options ?? EMPTY;
  const hl = 20 + opt.length;
  const p = Buffer.alloc(hl + payload.length);
  p[0] = ((o.version ?? 4) << 4) | (o.ihl ?? hl / 4);
  p[1] = 0;
  p.writeUInt16BE(o.totalLength ?? hl + payload.length, 2);
  p.writeUInt16BE(o.id ?? 0x1234, 4);
  p.writeUInt16BE(o.frag ?? 0x4000, 6);
  p[8] = o.ttl ?? 64;
  p[9] = o.proto;
  p.writeUInt32BE((o.src ?? GUEST_IP) >>> 0, 12);
  p.writeUInt32BE(o.dst >>> 0, 16);
  opt.copy(p, 20);
  p.writeUInt16BE(o.checksum ?? inetChecksum(p.subarray(0, hl)), 10);
  payload.copy(p, hl);
  return p;
}

/** TCP options in the order Linux sends them on a SYN: MSS, SACK-permitted, timestamps, NOP, WS. */
export function tcpOptions(o: { mss?: number; wscale?: number; sackOk?: boolean; ts?: [number, number] }): Buffer {
  const b: number[] = [];
  if (o.mss !== undefined) b.push(2, 4, o.mss >> 8, o.mss & 0xff);
  if (o.sackOk) b.push(4, 2);
  if (o.ts) {
    const t = Buffer.alloc(8);
    t.writeUInt32BE(o.ts[0] >>> 0, 0);
    t.writeUInt32BE(o.ts[1] >>> 0, 4);
    b.push(8, 10, ...t);
  }
  if (o.wscale !== undefined) b.push(1, 3, 3, o.wscale);
  while (b.length % 4) b.push(0);
  return Buffer.from(b);
}

export interface TcpOpts {
  src?: Ip4;
  dst: Ip4;
  sport: number;
  dport: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  options?: Buffer;
  /** Override of the data offset field, in bytes (malformed segments). */
  dataOffset?: number;
  checksum?: number;
}

export function tcpSegment(o: TcpOpts, payload: Buffer = EMPTY): Buffer {
  const opt = o.options ?? EMPTY;
  const hl = 20 + opt.length;
  const t = Buffer.alloc(hl + payload.length);
  t.writeUInt16BE(o.sport, 0);
  t.writeUInt16BE(o.dport, 2);
  t.writeUInt32BE(o.seq >>> 0, 4);
  t.writeUInt32BE((o.ack ?? 0) >>> 0, 8);
  t[12] = ((o.dataOffset ?? hl) / 4) << 4;
  t[13] = o.flags;
  t.writeUInt16BE(o.window ?? 65535, 14);
  opt.copy(t, 20);
  payload.copy(t, hl);
  const src = o.src ?? GUEST_IP;
  t.writeUInt16BE(o.checksum ?? inetChecksum(pseudo(src, o.dst, P_TCP, t.length), t), 16);
  return t;
}

export function tcpFrame(o: TcpOpts & L2 & { ip?: Partial<IpOpts> }, payload: Buffer = EMPTY): Buffer {
  const seg = tcpSegment(o, payload);
  return ethFrame(ETH_IPV4, ipPacket({ dst: o.dst, proto: P_TCP, ...(o.src !== undefined ? { src: o.src } : {}), ...o.ip }, seg), o);
}

export interface UdpOpts {
  src?: Ip4;
  dst: Ip4;
  sport: number;
  dport: number;
  /** A value, or 'none' for the RFC 768 "no checksum" zero. */
  checksum?: number | 'none';
  length?: number;
}

export function udpDatagram(o: UdpOpts, payload: Buffer): Buffer {
  const u = Buffer.alloc(8 + payload.length);
  u.writeUInt16BE(o.sport, 0);
  u.writeUInt16BE(o.dport, 2);
  u.writeUInt16BE(o.length ?? u.length, 4);
  payload.copy(u, 8);
  let sum: number;
  if (o.checksum === 'none') sum = 0;
  else if (o.checksum !== undefined) sum = o.checksum;
  else {
    sum = inetChecksum(pseudo(o.src ?? GUEST_IP, o.dst, P_UDP, u.length), u);
    if (sum === 0) sum = 0xffff;
  }
  u.writeUInt16BE(sum, 6);
  return u;
}

export function udpFrame(o: UdpOpts & L2 & { ip?: Partial<IpOpts> }, payload: Buffer): Buffer {
  return ethFrame(ETH_IPV4, ipPacket({ dst: o.dst, proto: P_UDP, ...(o.src !== undefined ? { src: o.src } : {}), ...o.ip }, udpDatagram(o, payload)), o);
}

export function icmpFrame(o: { src?: Ip4; dst: Ip4; type?: number; code?: number; id: number; seq: number; checksum?: number } & L2 & { ip?: Partial<IpOpts> }, data: Buffer): Buffer {
  const m = Buffer.alloc(8 + data.length);
  m[0] = o.type ?? 8;
  m[1] = o.code ?? 0;
  m.writeUInt16BE(o.id, 4);
  m.writeUInt16BE(o.seq, 6);
  data.copy(m, 8);
  m.writeUInt16BE(o.checksum ?? inetChecksum(m), 2);
  return ethFrame(ETH_IPV4, ipPacket({ dst: o.dst, proto: P_ICMP, ...(o.src !== undefined ? { src: o.src } : {}), ...o.ip }, m), o);
}

export function arpFrame(o: { op?: number; senderMac?: Buffer; senderIp?: Ip4; targetMac?: Buffer; targetIp: Ip4 } & L2): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0);
  a.writeUInt16BE(0x0800, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(o.op ?? 1, 6);
  (o.senderMac ?? GUEST_MAC).copy(a, 8);
  a.writeUInt32BE((o.senderIp ?? GUEST_IP) >>> 0, 14);
  (o.targetMac ?? Buffer.alloc(6)).copy(a, 18);
  a.writeUInt32BE(o.targetIp >>> 0, 24);
  return ethFrame(ETH_ARP, a, { dstMac: BROADCAST_MAC, ...o });
}

// ------------------------------------------------------------------------------------------------
// Parsing what the translator emits

export interface OutTcp {
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  dataOffset: number;
  options: Buffer;
  mss?: number;
  wscale?: number;
  payload: Buffer;
}

export interface OutFrame {
  /** From the Ethernet header on (the FRAME_PREFIX bytes removed). */
  raw: Buffer;
  dstMac: Buffer;
  srcMac: Buffer;
  type: number;
  ip?: { src: Ip4; dst: Ip4; proto: number; ttl: number; frag: number; header: Buffer; payload: Buffer };
  tcp?: OutTcp;
  udp?: { sport: number; dport: number; checksum: number; payload: Buffer };
  icmp?: { type: number; code: number; id: number; seq: number; data: Buffer };
  arp?: { op: number; senderMac: Buffer; senderIp: Ip4; targetMac: Buffer; targetIp: Ip4 };
  /** Everything malformed about the frame (empty when it is well formed). */
  problems: string[];
}

/** Parses an emitted frame (with the FRAME_PREFIX reserved in front) and checks every checksum. */
export function parseOut(buf: Buffer): OutFrame {
  const problems: string[] = [];
  const raw = buf.subarray(FRAME_PREFIX);
  const f: OutFrame = { raw, dstMac: raw.subarray(0, 6), srcMac: raw.subarray(6, 12), type: raw.length >= 14 ? raw.readUInt16BE(12) : -1, problems };
  if (raw.length < 14) {
    problems.push('frame shorter than an Ethernet header');
    return f;
  }
  const p = raw.subarray(14);
  if (f.type === ETH_ARP) {
    if (p.length !== 28) problems.push(`ARP of ${p.length} bytes`);
    else f.arp = { op: p.readUInt16BE(6), senderMac: p.subarray(8, 14), senderIp: p.readUInt32BE(14), targetMac: p.subarray(18, 24), targetIp: p.readUInt32BE(24) };
    return f;
  }
  if (f.type !== ETH_IPV4) {
    problems.push(`ethertype 0x${f.type.toString(16)}`);
    return f;
  }
  if (p.length < 20 || p[0] !== 0x45) {
    problems.push('not a 20-byte IPv4 header');
    return f;
  }
  const total = p.readUInt16BE(2);
  if (total !== p.length) problems.push(`IPv4 total length ${total} but ${p.length} bytes follow the Ethernet header`);
  if (inetChecksum(p.subarray(0, 20)) !== 0) problems.push('bad IPv4 header checksum');
  const frag = p.readUInt16BE(6);
  if ((frag & 0x3fff) !== 0) problems.push('emitted a fragment');
  const payload = p.subarray(20, Math.min(total, p.length));
  const src = p.readUInt32BE(12);
  const dst = p.readUInt32BE(16);
  f.ip = { src, dst, proto: p[9]!, ttl: p[8]!, frag, header: p.subarray(0, 20), payload };
  if (f.ip.proto === P_TCP) {
    if (payload.length < 20) {
      problems.push('truncated TCP header');
      return f;
    }
    const doff = (payload[12]! >> 4) * 4;
    if (doff < 20 || doff > payload.length) problems.push(`bad TCP data offset ${doff}`);
    if (inetChecksum(pseudo(src, dst, P_TCP, payload.length), payload) !== 0) problems.push('bad TCP checksum');
    const options = payload.subarray(20, Math.max(20, doff));
    const t: OutTcp = {
      sport: payload.readUInt16BE(0),
      dport: payload.readUInt16BE(2),
      seq: payload.readUInt32BE(4),
      ack: payload.readUInt32BE(8),
      flags: payload[13]!,
      window: payload.readUInt16BE(14),
      dataOffset: doff,
      options,
      payload: payload.subarray(Math.max(20, doff)),
    };
    for (let i = 0; i < options.length; ) {
      const kind = options[i]!;
      if (kind === 0) break;
      if (kind === 1) {
        i++;
        continue;
      }
      const len = options[i + 1] ?? 0;
      if (len < 2 || i + len > options.length) {
        problems.push('malformed TCP option');
        break;
      }
      if (kind === 2 && len === 4) t.mss = options.readUInt16BE(i + 2);
      if (kind === 3 && len === 3) t.wscale = options[i + 2]!;
      i += len;
    }
    f.tcp = t;
  } else if (f.ip.proto === P_UDP) {
    if (payload.length < 8) {
      problems.push('truncated UDP header');
      return f;
    }
    const len = payload.readUInt16BE(4);
    if (len !== payload.length) problems.push(`UDP length ${len} for ${payload.length} bytes`);
    const sum = payload.readUInt16BE(6);
    if (sum === 0) problems.push('UDP without checksum');
    else if (inetChecksum(pseudo(src, dst, P_UDP, payload.length), payload) !== 0) problems.push('bad UDP checksum');
    f.udp = { sport: payload.readUInt16BE(0), dport: payload.readUInt16BE(2), checksum: sum, payload: payload.subarray(8) };
  } else if (f.ip.proto === P_ICMP) {
    if (payload.length < 8) {
      problems.push('truncated ICMP');
      return f;
    }
    if (inetChecksum(payload) !== 0) problems.push('bad ICMP checksum');
    f.icmp = { type: payload[0]!, code: payload[1]!, id: payload.readUInt16BE(4), seq: payload.readUInt16BE(6), data: payload.subarray(8) };
  }
  return f;
}

export function describe(f: OutFrame): string {
  if (f.tcp) {
    const t = f.tcp;
    return `TCP ${formatIp4(f.ip!.src)}:${t.sport} > ${formatIp4(f.ip!.dst)}:${t.dport} ${flagNames(t.flags)} seq=${t.seq} ack=${t.ack} win=${t.window} len=${t.payload.length}`;
  }
  if (f.udp) return `UDP ${formatIp4(f.ip!.src)}:${f.udp.sport} > ${formatIp4(f.ip!.dst)}:${f.udp.dport} len=${f.udp.payload.length}`;
  if (f.icmp) return `ICMP type ${f.icmp.type} id=${f.icmp.id} seq=${f.icmp.seq}`;
  if (f.arp) return `ARP op ${f.arp.op} ${formatIp4(f.arp.senderIp)} → ${formatIp4(f.arp.targetIp)}`;
  return `ethertype 0x${f.type.toString(16)}`;
}

// ------------------------------------------------------------------------------------------------
// A controllable host side: the Duplex a flow talks to instead of a net.Socket

/**
 * Stands in for a host socket (the stack hands it to a flow through the DNS-over-TCP route, see
 * FakeGuest). Writes from the flow are recorded; `hold()` stops completing them, so the flow's
 * `writableLength` grows exactly by what it wrote, as when the host application stops reading.
 */
export class FakeHost extends Duplex {
  readonly written: Buffer[] = [];
  /** True once the flow ended its writing side (the guest's FIN). */
  gotEnd = false;
  private holding = false;
  private held: ((error?: Error | null) => void) | undefined;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.written.push(Buffer.from(chunk));
    if (this.holding) this.held = cb;
    else cb();
  }

  override _final(cb: (error?: Error | null) => void): void {
    this.gotEnd = true;
    cb();
  }

  override _read(): void {}

  /** Everything the flow wrote so far (completed or held). */
  get bytes(): Buffer {
    return Buffer.concat(this.written);
  }

  /** Stop completing writes: the host "does not read". */
  hold(): void {
    this.holding = true;
  }

  /** Completes the write in progress only (the next buffered chunk is then held in turn). */
  releaseOne(): void {
    const cb = this.held;
    this.held = undefined;
    cb?.();
  }

  /** Reads everything again. */
  release(): void {
    this.holding = false;
    this.releaseOne();
  }

  /** Host → guest bytes. */
  send(data: Buffer): void {
    this.push(data);
  }

  /** The host ends its writing side (EOF toward the guest). */
  finish(): void {
    this.push(null);
  }
}

// ------------------------------------------------------------------------------------------------
// The fake guest

export interface GuestOptions {
  mtu?: number;
  tuning?: Partial<StackTuning>;
  denied?: Iterable<number>;
  allowLinkLocal?: boolean;
  dns?: DnsResponder;
  dhcp?: DhcpResponder;
  pinger?: Pinger;
  isLinkBlocked?: () => boolean;
  /**
   * Expect every TCP segment to go to GUEST_MAC (default). The stack learns the guest's MAC from
   * its frames, so a fuzz test that mangles source MACs checks against the learned one instead.
   */
  strictMac?: boolean;
  /** The file server's Unix socket (gateway:564 is routed to it). */
  fileServerSocket?: string;
}

interface Waiter {
  pred: (f: OutFrame) => boolean;
  resolve: (f: OutFrame) => void;
  timer: NodeJS.Timeout;
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FakeGuest {
  readonly stack: Stack;
  /** Host sides handed out for guest connections to the gateway's port 53 (the in-process route). */
  readonly sessions: FakeHost[] = [];
  readonly dnsQueries: Buffer[] = [];
  readonly logs: string[] = [];
  readonly violations: string[] = [];
  readonly mtu: number;
  private readonly strictMac: boolean;
  /** Number of frames the stack emitted. */
  emitted = 0;
  private inbox: OutFrame[] = [];
  private waiters: Waiter[] = [];
  private nextPort = 40000;
  private closed = false;

  constructor(o: GuestOptions = {}) {
    this.mtu = o.mtu ?? 1500;
    this.strictMac = o.strictMac ?? true;
    const denied = new Set(o.denied ?? []);
    const dns: DnsResponder = o.dns ?? {
      answer: async (query) => {
        this.dnsQueries.push(Buffer.from(query));
        return fakeDnsAnswer(query);
      },
      tcpSession: () => {
        const h = new FakeHost();
        this.sessions.push(h);
        return h;
      },
    };
    this.stack = new Stack({
      plan: PLAN,
      mtu: this.mtu,
      mac: TRANSLATOR_MAC,
      allowLinkLocal: o.allowLinkLocal ?? false,
      deniedHostPorts: () => denied,
      dns,
      dhcp: o.dhcp ?? { handle: () => undefined },
      emit: (frame) => this.onEmit(frame),
      isLinkBlocked: o.isLinkBlocked ?? (() => false),
      log: (level, msg, fields) => {
        if (this.logs.length < 1000) this.logs.push(`${level} ${msg} ${fields ? JSON.stringify(fields) : ''}`);
      },
      pinger: o.pinger ?? (async () => false),
      ...(o.tuning ? { tuning: o.tuning } : {}),
      ...(o.fileServerSocket ? { fileServerSocket: o.fileServerSocket } : {}),
    });
  }

  /** A fresh guest source port. */
  port(): number {
    return this.nextPort++;
  }

  /** One batch of frames, as one read from QEMU: input() each, then endBatch(). */
  input(...frames: Buffer[]): void {
    for (const f of frames) this.stack.input(f);
    this.stack.endBatch();
  }

  private onEmit(buf: Buffer): boolean {
    this.emitted++;
    const f = parseOut(buf);
    for (const p of f.problems) this.violation(`${p}: ${describe(f)}`);
    if (f.type === ETH_IPV4 && !f.srcMac.equals(TRANSLATOR_MAC)) this.violation(`source MAC is not the translator's: ${describe(f)}`);
    if (f.tcp) {
      if (!f.dstMac.equals(this.strictMac ? GUEST_MAC : (this.stack.guestMac ?? BROADCAST_MAC))) this.violation(`TCP segment not sent to the guest's MAC: ${describe(f)}`);
      const fl = f.tcp.flags;
      // podman#22146: a segment without ACK (a bare window update, say) is dropped by current
      // kernels. Only SYNs and the RFC 9293 resets for ACK-bearing segments may lack it.
      if (!(fl & ACK) && !(fl & SYN) && !(fl & RST)) this.violation(`segment without ACK: ${describe(f)}`);
      if (fl & (ECE | CWR | URG)) this.violation(`unexpected ECN/URG flag: ${describe(f)}`);
    }
    const i = this.waiters.findIndex((w) => w.pred(f));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      clearTimeout(w!.timer);
      w!.resolve(f);
    } else {
      this.inbox.push(f);
    }
    return true;
  }

  private violation(what: string): void {
    if (this.violations.length < 50) this.violations.push(what);
  }

  /** Removes and returns every frame received so far that matches. */
  take(pred: (f: OutFrame) => boolean = () => true): OutFrame[] {
    const got = this.inbox.filter(pred);
    this.inbox = this.inbox.filter((f) => !pred(f));
    return got;
  }

  /** The next frame that matches (already received, or the next one to come). */
  next(pred: (f: OutFrame) => boolean = () => true, timeoutMs = 3000, what = 'a frame'): Promise<OutFrame> {
    const i = this.inbox.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        pred,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; unclaimed: ${this.inbox.map(describe).slice(0, 10).join('; ') || 'none'}`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Frames received so far and not yet claimed. */
  pending(pred: (f: OutFrame) => boolean = () => true): OutFrame[] {
    return this.inbox.filter(pred);
  }

  /** A TCP connection from the guest. */
  conn(o: ConnOptions): GuestConn {
    return new GuestConn(this, o);
  }

  assertClean(): void {
    if (this.violations.length) throw new Error(`malformed or forbidden frames from the translator:\n  ${this.violations.join('\n  ')}`);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stack.close();
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters = [];
  }
}

/** A DNS "answer" for the fake responder: the query with QR set. */
export function fakeDnsAnswer(query: Buffer): Buffer {
  const a = Buffer.from(query);
  if (a.length >= 3) a[2] = a[2]! | 0x80;
  return a;
}

// ------------------------------------------------------------------------------------------------
// The guest side of one TCP connection

export interface ConnOptions {
  dport: number;
  /** Default: the host alias. */
  dst?: Ip4;
  sport?: number;
  iss?: number;
  /** MSS option of the SYN; null for none. Default 1460. */
  mss?: number | null;
  /** Window-scale option of the SYN; undefined for none. */
  wscale?: number;
  /** The window field the guest advertises (the SYN's is unscaled, later ones are shifted by wscale). */
  window?: number;
  /** Extra flags on the SYN (ECE|CWR). */
  synFlags?: number;
}

export class GuestConn {
  readonly sport: number;
  readonly dst: Ip4;
  readonly dport: number;
  readonly iss: number;
  readonly mss: number | null;
  readonly offeredScale: number | undefined;
  /** The guest's next sequence number. */
  sndNxt: number;
  /** The next byte the guest expects from the translator. */
  rcvNxt = 0;
  /** The translator's ISS (from its SYN-ACK). */
  peerIss = 0;
  /** Shift applied to the translator's window fields (0 unless both SYNs had WS). */
  peerScale = 0;
  /** Shift the translator applies to our window fields. */
  ourScale = 0;
  /** The translator's last acknowledgment and (scaled) window. */
  peerAck = 0;
  peerWindow = 0;
  /** Field value the guest advertises. */
  windowField: number;
  /** The right edge the guest has advertised (the translator must never send beyond it). */
  maxEdge = 0;
  readonly chunks: Buffer[] = [];
  received = 0;
  finReceived = false;
  private ackScheduled = false;
  readonly synFlags: number;

  constructor(
    readonly g: FakeGuest,
    o: ConnOptions,
  ) {
    this.sport = o.sport ?? g.port();
    this.dst = o.dst ?? HOST_ALIAS;
    this.dport = o.dport;
    // Deterministic per port, far from the 2^32 wrap for the sizes the tests send.
    this.iss = (o.iss ?? 0x10000000 + ((this.sport * 0x9e37) % 0x40000000)) >>> 0;
    this.sndNxt = this.iss;
    this.mss = o.mss === undefined ? 1460 : o.mss;
    this.offeredScale = o.wscale;
    this.windowField = o.window ?? 65535;
    this.synFlags = o.synFlags ?? 0;
  }

  /** Is `f` a segment of this connection (translator → guest)? */
  mine = (f: OutFrame): boolean =>
    f.tcp !== undefined && f.ip!.src === this.dst && f.ip!.dst === GUEST_IP && f.tcp.sport === this.dport && f.tcp.dport === this.sport;

  /** The next segment of this connection that matches. */
  async next(pred: (t: OutTcp) => boolean = () => true, timeoutMs = 3000, what = 'a segment'): Promise<OutTcp> {
    const f = await this.g.next((x) => this.mine(x) && pred(x.tcp!), timeoutMs, `${what} on port ${this.sport}`);
    return f.tcp!;
  }

  /** Segments of this connection received and not yet claimed (removes them). */
  take(): OutTcp[] {
    return this.g.take(this.mine).map((f) => f.tcp!);
  }

  /** A frame of this connection; seq defaults to sndNxt, ack (when ACK is set) to rcvNxt. */
  frame(o: { flags: number; seq?: number; ack?: number; window?: number; options?: Buffer; srcMac?: Buffer }, payload: Buffer = EMPTY): Buffer {
    return tcpFrame(
      {
        dst: this.dst,
        sport: this.sport,
        dport: this.dport,
        seq: o.seq ?? this.sndNxt,
        ack: o.ack ?? (o.flags & ACK ? this.rcvNxt : 0),
        flags: o.flags,
        window: o.window ?? this.windowField,
        ...(o.options ? { options: o.options } : {}),
        ...(o.srcMac ? { srcMac: o.srcMac } : {}),
      },
      payload,
    );
  }

  synFrame(): Buffer {
    const opts = tcpOptions({ ...(this.mss !== null ? { mss: this.mss } : {}), ...(this.offeredScale !== undefined ? { wscale: this.offeredScale } : {}) });
    return this.frame({ flags: SYN | this.synFlags, seq: this.iss, ack: 0, options: opts });
  }

  /** Sends the SYN only. */
  syn(): void {
    this.g.input(this.synFrame());
  }

  /** Records the translator's SYN-ACK. */
  acceptSynAck(t: OutTcp): void {
    this.sndNxt = sadd(this.iss, 1);
    this.peerIss = t.seq;
    this.rcvNxt = sadd(t.seq, 1);
    const scaling = this.offeredScale !== undefined && t.wscale !== undefined;
    this.peerScale = scaling ? t.wscale! : 0;
    this.ourScale = scaling ? this.offeredScale! : 0;
    this.peerAck = t.ack;
    this.peerWindow = t.window; // a SYN-ACK's window is never scaled (RFC 7323 §2.2)
    this.maxEdge = sadd(this.rcvNxt, this.windowField << this.ourScale);
  }

  /** SYN, SYN-ACK (asserted), ACK. Returns the SYN-ACK. */
  async connect(timeoutMs = 3000): Promise<OutTcp> {
    this.syn();
    const t = await this.next((x) => (x.flags & (SYN | RST)) !== 0, timeoutMs, 'a SYN-ACK');
    if (t.flags !== (SYN | ACK)) throw new Error(`expected SYN|ACK, got ${flagNames(t.flags)}`);
    if (t.ack !== sadd(this.iss, 1)) throw new Error(`SYN-ACK acknowledges ${t.ack}, not ${sadd(this.iss, 1)}`);
    this.acceptSynAck(t);
    this.ack();
    return t;
  }

  /** Sends one segment carrying `data` (ACK|PSH unless told) at sndNxt, and advances sndNxt. */
  send(data: Buffer, flags = ACK | PSH): void {
    const f = this.frame({ flags }, data);
    this.sndNxt = sadd(this.sndNxt, data.length);
    this.g.input(f);
  }

  /** Frames for `data` cut into `size`-byte segments at sndNxt (advances sndNxt; not sent). */
  segments(data: Buffer, size: number, flags = ACK): Buffer[] {
    const out: Buffer[] = [];
    for (let off = 0; off < data.length; off += size) {
      const part = data.subarray(off, Math.min(off + size, data.length));
      out.push(this.frame({ flags }, part));
      this.sndNxt = sadd(this.sndNxt, part.length);
    }
    return out;
  }

  /** A pure ACK of everything received so far, advertising `windowField`. */
  ack(window = this.windowField): void {
    this.windowField = window;
    const edge = sadd(this.rcvNxt, window << this.ourScale);
    if (slt(this.maxEdge, edge)) this.maxEdge = edge;
    this.g.input(this.frame({ flags: ACK, window }));
  }

  fin(flags = FIN | ACK): void {
    const f = this.frame({ flags });
    this.sndNxt = sadd(this.sndNxt, 1);
    this.g.input(f);
  }

  rst(seq = this.sndNxt): void {
    this.g.input(this.frame({ flags: RST, seq, ack: 0 }));
  }

  /** Takes in a segment from the translator: its ACK and window, in-order data, FIN. */
  absorb(t: OutTcp): void {
    if (t.flags & ACK && sleq(this.peerAck, t.ack)) {
      this.peerAck = t.ack;
      this.peerWindow = t.window << this.peerScale;
    }
    if (t.payload.length > 0 && slt(this.maxEdge, sadd(t.seq, t.payload.length))) {
      this.g.violations.push(`data beyond the guest's window: seq=${t.seq} len=${t.payload.length} edge=${this.maxEdge}`);
    }
    if (t.payload.length > 0 && t.seq === this.rcvNxt) {
      this.chunks.push(Buffer.from(t.payload));
      this.received += t.payload.length;
      this.rcvNxt = sadd(this.rcvNxt, t.payload.length);
    }
    if (t.flags & FIN && sadd(t.seq, t.payload.length) === this.rcvNxt && !this.finReceived) {
      this.finReceived = true;
      this.rcvNxt = sadd(this.rcvNxt, 1);
    }
  }

  /** Everything received in order so far. */
  data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  private scheduleAck(): void {
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    setImmediate(() => {
      this.ackScheduled = false;
      this.ack();
    });
  }

  /**
   * Receives until `n` bytes arrived in order (or a FIN), ACKing once per burst like a guest
   * kernel, and checking that no segment goes beyond the window the guest advertised.
   */
  async receive(n: number, timeoutMs = 5000): Promise<void> {
    while (this.received < n && !this.finReceived) {
      const t = await this.next(() => true, timeoutMs, `data (have ${this.received} of ${n} bytes)`);
      this.absorb(t);
      if (t.payload.length > 0 || t.flags & FIN) this.scheduleAck();
    }
  }

  /** Waits for the FIN (absorbing data before it) and ACKs it. */
  async receiveFin(timeoutMs = 5000): Promise<void> {
    while (!this.finReceived) {
      const t = await this.next(() => true, timeoutMs, 'a FIN');
      this.absorb(t);
    }
    this.ack();
  }

  /**
   * Sends `data` in `segSize` segments within the window the translator advertises, waiting for
   * its ACKs (and window updates), until everything is acknowledged.
   */
  async sendAll(data: Buffer, segSize: number, timeoutMs = 5000): Promise<void> {
    let off = 0;
    while (off < data.length || slt(this.peerAck, this.sndNxt)) {
      const frames: Buffer[] = [];
      const edge = sadd(this.peerAck, this.peerWindow);
      while (off < data.length && sdiff(edge, this.sndNxt) > 0) {
        const n = Math.min(segSize, data.length - off, sdiff(edge, this.sndNxt));
        frames.push(this.frame({ flags: ACK | PSH }, data.subarray(off, off + n)));
        this.sndNxt = sadd(this.sndNxt, n);
        off += n;
      }
      if (frames.length) this.g.input(...frames);
      const t = await this.next((x) => (x.flags & ACK) !== 0, timeoutMs, `an ACK (sent ${off} of ${data.length})`);
      this.absorb(t);
      if (t.payload.length > 0) this.scheduleAck();
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host-side helpers

export interface HostServer {
  port: number;
  server: net.Server;
  /** The next accepted connection. */
  accepted(timeoutMs?: number): Promise<net.Socket>;
  acceptedCount(): number;
  close(): Promise<void>;
}

/** A TCP server on 127.0.0.1 (port 0), half-open allowed, that hands its connections to the test. */
export async function hostServer(): Promise<HostServer> {
  const queue: net.Socket[] = [];
  const waiting: Array<(s: net.Socket) => void> = [];
  const all: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    all.push(s);
    s.on('error', () => {});
    const w = waiting.shift();
    if (w) w(s);
    else queue.push(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    server,
    acceptedCount: () => all.length,
    accepted: (timeoutMs = 3000) => {
      const s = queue.shift();
      if (s) return Promise.resolve(s);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no connection accepted')), timeoutMs);
        waiting.push((x) => {
          clearTimeout(timer);
          resolve(x);
        });
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of all) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port on 127.0.0.1 that nothing listens on (bound once, then released). */
export async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Collects what a socket reads; `ended` resolves on 'end'. */
export function collect(sock: net.Socket): { data: () => Buffer; ended: Promise<void>; length: () => number } {
  const chunks: Buffer[] = [];
  let n = 0;
  sock.on('data', (c: Buffer) => {
    chunks.push(c);
    n += c.length;
  });
  const ended = new Promise<void>((resolve) => sock.once('end', () => resolve()));
  return { data: () => Buffer.concat(chunks), ended, length: () => n };
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** A small seeded PRNG for fuzzing. */
export class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.x;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.x = x;
    return x;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** Polls `cond` (every few ms) until it holds; throws after `timeoutMs`. */
export async function waitUntil(cond: () => boolean, timeoutMs = 3000, what = 'a condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** `p`, or a rejection naming `what` after `timeoutMs` (so a missing event fails the test instead of hanging it). */
export function within<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}
