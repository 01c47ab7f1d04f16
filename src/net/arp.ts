import { readIp4, writeIp4, type Ip4 } from './address.js';
import { allocFrame, ETHERTYPE_ARP } from './ethernet.js';

/** ARP for IPv4 over Ethernet (RFC 826): the only kind the translator answers. */
export const ARP_REQUEST = 1;
export const ARP_REPLY = 2;
const ARP_LENGTH = 28;

export interface ArpPacket {
  op: number;
  senderMac: Buffer;
  senderIp: Ip4;
  targetMac: Buffer;
  targetIp: Ip4;
}

/** Undefined unless it is Ethernet/IPv4 ARP with the right sizes. */
export function parseArp(p: Buffer): ArpPacket | undefined {
  if (p.length < ARP_LENGTH) return undefined;
  if (p.readUInt16BE(0) !== 1 || p.readUInt16BE(2) !== 0x0800 || p[4] !== 6 || p[5] !== 4) return undefined;
  return {
    op: p.readUInt16BE(6),
    senderMac: p.subarray(8, 14),
    senderIp: readIp4(p, 14),
    targetMac: p.subarray(18, 24),
    targetIp: readIp4(p, 24),
  };
}

/** The reply to `req` saying that `ip` is at `mac`. */
export function buildArpReply(req: ArpPacket, mac: Buffer, ip: Ip4): Buffer {
  const { buf, off } = allocFrame(req.senderMac, mac, ETHERTYPE_ARP, ARP_LENGTH);
  buf.writeUInt16BE(1, off);
  buf.writeUInt16BE(0x0800, off + 2);
  buf[off + 4] = 6;
  buf[off + 5] = 4;
  buf.writeUInt16BE(ARP_REPLY, off + 6);
  mac.copy(buf, off + 8, 0, 6);
  writeIp4(buf, off + 14, ip);
  req.senderMac.copy(buf, off + 18, 0, 6);
  writeIp4(buf, off + 24, req.senderIp);
  return buf;
}
