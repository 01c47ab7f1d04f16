import type { Ip4 } from './address.js';
import { checksum } from './checksum.js';
import { allocFrame, ETHERTYPE_IPV4 } from './ethernet.js';
import { IPV4_HEADER, PROTO_ICMP, writeIpv4Header, type Ipv4Packet } from './ipv4.js';

/** ICMP (RFC 792): echo request in, echo reply and destination-unreachable out. */

export const ICMP_ECHO_REPLY = 0;
export const ICMP_UNREACHABLE = 3;
export const ICMP_ECHO_REQUEST = 8;
/** Destination-unreachable codes. */
export const UNREACH_PORT = 3;
export const UNREACH_ADMIN = 13;

export interface IcmpEcho {
  id: number;
  seq: number;
  /** View into the frame. */
  data: Buffer;
}

/** An echo request, or undefined for anything else or a bad checksum. */
export function parseEchoRequest(ip: Ipv4Packet): IcmpEcho | undefined {
  const p = ip.payload;
  if (p.length < 8 || p[0] !== ICMP_ECHO_REQUEST || p[1] !== 0) return undefined;
  if (checksum(p, 0, p.length) !== 0) return undefined;
  return { id: p.readUInt16BE(4), seq: p.readUInt16BE(6), data: p.subarray(8) };
}

export interface IcmpOut {
  srcMac: Buffer;
  dstMac: Buffer;
  src: Ip4;
  dst: Ip4;
}

function icmpFrame(o: IcmpOut, type: number, code: number, rest: number, body: Buffer): Buffer {
  const len = 8 + body.length;
  const { buf, off } = allocFrame(o.dstMac, o.srcMac, ETHERTYPE_IPV4, IPV4_HEADER + len);
  writeIpv4Header(buf, off, o.src, o.dst, PROTO_ICMP, len);
  const i = off + IPV4_HEADER;
  buf[i] = type;
  buf[i + 1] = code;
  buf.writeUInt16BE(0, i + 2);
  buf.writeUInt32BE(rest >>> 0, i + 4);
  body.copy(buf, i + 8);
  buf.writeUInt16BE(checksum(buf, i, len), i + 2);
  return buf;
}

export function buildEchoReply(o: IcmpOut, echo: IcmpEcho): Buffer {
  return icmpFrame(o, ICMP_ECHO_REPLY, 0, (echo.id << 16) | echo.seq, echo.data);
}

/** Destination unreachable quoting the offending packet's header and first 8 payload bytes (RFC 792). */
export function buildUnreachable(o: IcmpOut, code: number, offending: Ipv4Packet): Buffer {
  const quote = Buffer.concat([offending.header, offending.payload.subarray(0, 8)]);
  return icmpFrame(o, ICMP_UNREACHABLE, code, 0, quote);
}
