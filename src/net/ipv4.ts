import { readIp4, writeIp4, type Ip4 } from './address.js';
import { checksum } from './checksum.js';

/** IPv4 (RFC 791): parsing with bounds, and the header writer for what the translator sends. */

export const IPV4_HEADER = 20;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
const DEFAULT_TTL = 64;

export interface Ipv4Packet {
  src: Ip4;
  dst: Ip4;
  proto: number;
  ttl: number;
  /** The whole header, options included, for ICMP errors that quote it. */
  header: Buffer;
  /** Exactly totalLength − header length bytes (Ethernet padding removed). View, not a copy. */
  payload: Buffer;
}

export type Ipv4Parse = { ok: true; pkt: Ipv4Packet } | { ok: false; reason: string };

/**
 * Parses an IPv4 packet. Refuses: other versions, bad header length or checksum, a total length
 * beyond the frame, and fragments (MF set or an offset: the translator does not reassemble, as
 * passt does not; the guest's MTU makes them unnecessary).
 */
export function parseIpv4(p: Buffer): Ipv4Parse {
  if (p.length < IPV4_HEADER) return { ok: false, reason: 'truncated IPv4 header' };
  const version = p[0]! >> 4;
  const ihl = (p[0]! & 0x0f) * 4;
  if (version !== 4) return { ok: false, reason: `IP version ${version}` };
  if (ihl < IPV4_HEADER || ihl > p.length) return { ok: false, reason: `bad IPv4 header length ${ihl}` };
  const total = p.readUInt16BE(2);
  if (total < ihl || total > p.length) return { ok: false, reason: `IPv4 total length ${total} outside the frame (${p.length})` };
  if (checksum(p, 0, ihl) !== 0) return { ok: false, reason: 'bad IPv4 header checksum' };
  const frag = p.readUInt16BE(6);
  if ((frag & 0x2000) !== 0 || (frag & 0x1fff) !== 0) return { ok: false, reason: 'IPv4 fragment' };
  return {
    ok: true,
    pkt: { src: readIp4(p, 12), dst: readIp4(p, 16), proto: p[9]!, ttl: p[8]!, header: p.subarray(0, ihl), payload: p.subarray(ihl, total) },
  };
}

let nextId = 1;

/** Writes a 20-byte IPv4 header (DF set, no options) with its checksum at buf[off]. */
export function writeIpv4Header(buf: Buffer, off: number, src: Ip4, dst: Ip4, proto: number, payloadLength: number): void {
  buf[off] = 0x45;
  buf[off + 1] = 0;
  buf.writeUInt16BE(IPV4_HEADER + payloadLength, off + 2);
  buf.writeUInt16BE(nextId, off + 4);
  nextId = (nextId + 1) & 0xffff;
  buf.writeUInt16BE(0x4000, off + 6); // DF: we never fragment, and the guest's MTU is ours
  buf[off + 8] = DEFAULT_TTL;
  buf[off + 9] = proto;
  buf.writeUInt16BE(0, off + 10);
  writeIp4(buf, off + 12, src);
  writeIp4(buf, off + 16, dst);
  buf.writeUInt16BE(checksum(buf, off, IPV4_HEADER), off + 10);
}
