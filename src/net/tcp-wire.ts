import type { Ip4 } from './address.js';
import { checksum, pseudoHeaderSum, sumWords, fold } from './checksum.js';
import { allocFrame, ETHERTYPE_IPV4 } from './ethernet.js';
import { IPV4_HEADER, PROTO_TCP, writeIpv4Header, type Ipv4Packet } from './ipv4.js';

/**
 * TCP segments (RFC 9293): the only code that reads TCP headers. Options understood: MSS and
 * window scale (RFC 7323); timestamps and SACK are skipped, never negotiated (docs/network.md).
 */

export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;
export const URG = 0x20;
export const ECE = 0x40;
export const CWR = 0x80;

const TCP_HEADER = 20;

export interface TcpSegment {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  /** The raw 16-bit window field (unscaled). */
  window: number;
  /** MSS option, when present (SYN only). */
  mss?: number;
  /** Window-scale shift, when present (SYN only), capped at 14 (RFC 7323 §2.3). */
  wscale?: number;
  /** View into the frame. */
  payload: Buffer;
}

export type TcpParse = { ok: true; seg: TcpSegment } | { ok: false; reason: string };

export function parseTcp(ip: Ipv4Packet): TcpParse {
  const p = ip.payload;
  if (p.length < TCP_HEADER) return { ok: false, reason: 'truncated TCP header' };
  const dataOff = (p[12]! >> 4) * 4;
  if (dataOff < TCP_HEADER || dataOff > p.length) return { ok: false, reason: `bad TCP data offset ${dataOff}` };
  if (checksum(p, 0, p.length, pseudoHeaderSum(ip.src, ip.dst, PROTO_TCP, p.length)) !== 0) return { ok: false, reason: 'bad TCP checksum' };
  const seg: TcpSegment = {
    srcPort: p.readUInt16BE(0),
    dstPort: p.readUInt16BE(2),
    seq: p.readUInt32BE(4),
    ack: p.readUInt32BE(8),
    flags: p[13]!,
    window: p.readUInt16BE(14),
    payload: p.subarray(dataOff),
  };
  if (dataOff > TCP_HEADER && (seg.flags & SYN) !== 0) parseOptions(p, TCP_HEADER, dataOff, seg);
  return { ok: true, seg };
}

/** Reads MSS and window scale; stops at the end-of-list option or at anything malformed. */
function parseOptions(p: Buffer, from: number, to: number, seg: TcpSegment): void {
  let i = from;
  while (i < to) {
    const kind = p[i]!;
    if (kind === 0) return;
    if (kind === 1) {
      i++;
      continue;
    }
    if (i + 1 >= to) return;
    const len = p[i + 1]!;
    if (len < 2 || i + len > to) return;
    if (kind === 2 && len === 4) seg.mss = p.readUInt16BE(i + 2);
    if (kind === 3 && len === 3) seg.wscale = Math.min(p[i + 2]!, 14);
    i += len;
  }
}

export interface TcpOut {
  srcMac: Buffer;
  dstMac: Buffer;
  src: Ip4;
  dst: Ip4;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** SYN options. */
  mss?: number;
  wscale?: number;
}

/**
 * Builds a complete frame (prefix reserved, Ethernet, IPv4, TCP) carrying `payloadLength` bytes
 * that `fill(buf, off)` writes at `off` (so a payload spread over several queued chunks is copied
 * once, straight into the frame).
 */
export function buildTcpFrame(o: TcpOut, payloadLength = 0, fill?: (buf: Buffer, off: number) => void): Buffer {
  const optLen = (o.mss !== undefined ? 4 : 0) + (o.wscale !== undefined ? 4 : 0);
  const tcpLen = TCP_HEADER + optLen + payloadLength;
  const { buf, off: ipOff } = allocFrame(o.dstMac, o.srcMac, ETHERTYPE_IPV4, IPV4_HEADER + tcpLen);
  writeIpv4Header(buf, ipOff, o.src, o.dst, PROTO_TCP, tcpLen);
  const t = ipOff + IPV4_HEADER;
  buf.writeUInt16BE(o.srcPort, t);
  buf.writeUInt16BE(o.dstPort, t + 2);
  buf.writeUInt32BE(o.seq >>> 0, t + 4);
  buf.writeUInt32BE(o.ack >>> 0, t + 8);
  buf[t + 12] = ((TCP_HEADER + optLen) / 4) << 4;
  buf[t + 13] = o.flags;
  buf.writeUInt16BE(o.window, t + 14);
  buf.writeUInt32BE(0, t + 16); // checksum + urgent pointer
  let i = t + TCP_HEADER;
  if (o.mss !== undefined) {
    buf[i] = 2;
    buf[i + 1] = 4;
    buf.writeUInt16BE(o.mss, i + 2);
    i += 4;
  }
  if (o.wscale !== undefined) {
    buf[i] = 1; // NOP, to keep the header 32-bit aligned
    buf[i + 1] = 3;
    buf[i + 2] = 3;
    buf[i + 3] = o.wscale;
    i += 4;
  }
  if (payloadLength > 0 && fill) fill(buf, i);
  const sum = sumWords(buf, t, tcpLen, pseudoHeaderSum(o.src, o.dst, PROTO_TCP, tcpLen));
  buf.writeUInt16BE(~fold(sum) & 0xffff, t + 16);
  return buf;
}

/** Sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4). */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}
export function seqLt(a: number, b: number): boolean {
  return seqDiff(a, b) < 0;
}
export function seqLeq(a: number, b: number): boolean {
  return seqDiff(a, b) <= 0;
}
export function seqAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}
