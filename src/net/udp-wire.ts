import type { Ip4 } from './address.js';
import { checksum, fold, pseudoHeaderSum, sumWords } from './checksum.js';
import { allocFrame, ETHERTYPE_IPV4 } from './ethernet.js';
import { IPV4_HEADER, PROTO_UDP, writeIpv4Header, type Ipv4Packet } from './ipv4.js';

/** UDP datagrams (RFC 768): parsing with bounds, and building complete frames. */

const UDP_HEADER = 8;

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  /** View into the frame. */
  payload: Buffer;
}

export type UdpParse = { ok: true; dgram: UdpDatagram } | { ok: false; reason: string };

export function parseUdp(ip: Ipv4Packet): UdpParse {
  const p = ip.payload;
  if (p.length < UDP_HEADER) return { ok: false, reason: 'truncated UDP header' };
  const len = p.readUInt16BE(4);
  if (len < UDP_HEADER || len > p.length) return { ok: false, reason: `bad UDP length ${len}` };
  // A zero checksum means "none" over IPv4 (RFC 768).
  if (p.readUInt16BE(6) !== 0 && checksum(p, 0, len, pseudoHeaderSum(ip.src, ip.dst, PROTO_UDP, len)) !== 0) {
    return { ok: false, reason: 'bad UDP checksum' };
  }
  return { ok: true, dgram: { srcPort: p.readUInt16BE(0), dstPort: p.readUInt16BE(2), payload: p.subarray(UDP_HEADER, len) } };
}

export interface UdpOut {
  srcMac: Buffer;
  dstMac: Buffer;
  src: Ip4;
  dst: Ip4;
  srcPort: number;
  dstPort: number;
}

/** The largest UDP payload that fits an IPv4 packet. */
export const MAX_UDP_PAYLOAD = 65535 - IPV4_HEADER - UDP_HEADER;

export function buildUdpFrame(o: UdpOut, payload: Buffer): Buffer {
  const udpLen = UDP_HEADER + payload.length;
  const { buf, off } = allocFrame(o.dstMac, o.srcMac, ETHERTYPE_IPV4, IPV4_HEADER + udpLen);
  writeIpv4Header(buf, off, o.src, o.dst, PROTO_UDP, udpLen);
  const u = off + IPV4_HEADER;
  buf.writeUInt16BE(o.srcPort, u);
  buf.writeUInt16BE(o.dstPort, u + 2);
  buf.writeUInt16BE(udpLen, u + 4);
  buf.writeUInt16BE(0, u + 6);
  payload.copy(buf, u + UDP_HEADER);
  const sum = ~fold(sumWords(buf, u, udpLen, pseudoHeaderSum(o.src, o.dst, PROTO_UDP, udpLen))) & 0xffff;
  buf.writeUInt16BE(sum === 0 ? 0xffff : sum, u + 6); // 0 would mean "no checksum"
  return buf;
}
