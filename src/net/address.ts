/**
 * IPv4 and MAC addresses as the translator uses them: an IPv4 address is a uint32 (host order)
 * everywhere inside the stack, converted to and from dotted text only at the edges (settings,
 * sockets, logs). A MAC is a 6-byte Buffer.
 */

export type Ip4 = number;

/** Parses dotted-quad text; undefined if it is not exactly four decimal octets. */
export function parseIp4(text: string): Ip4 | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let v = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    v = v * 256 + n;
  }
  return v >>> 0;
}

export function formatIp4(ip: Ip4): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

export function readIp4(buf: Buffer, off: number): Ip4 {
  return buf.readUInt32BE(off);
}

export function writeIp4(buf: Buffer, off: number, ip: Ip4): void {
  buf.writeUInt32BE(ip >>> 0, off);
}

/** A network in CIDR form. */
export interface Subnet {
  network: Ip4;
  prefix: number;
  mask: Ip4;
}

/** The netmask of a prefix length from 0 to 32 (24 → 255.255.255.0). */
export function prefixMask(prefix: number): Ip4 {
  return prefix <= 0 ? 0 : (0xffffffff << (32 - Math.min(prefix, 32))) >>> 0;
}

/** Parses "a.b.c.d/n" (n from 0 to 32) as written, host bits and all; undefined if malformed. */
export function parseCidr(text: string): { ip: Ip4; prefix: number } | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(text);
  if (!m) return undefined;
  const ip = parseIp4(m[1]!);
  const prefix = Number(m[2]);
  if (ip === undefined || prefix > 32) return undefined;
  return { ip, prefix };
}

/** Parses "a.b.c.d/n"; undefined if malformed or if host bits are set. */
export function parseSubnet(text: string): Subnet | undefined {
  const c = parseCidr(text);
  if (!c) return undefined;
  const mask = prefixMask(c.prefix);
  if ((c.ip & ~mask) >>> 0 !== 0) return undefined;
  return { network: c.ip, prefix: c.prefix, mask };
}

export function inSubnet(ip: Ip4, s: Subnet): boolean {
  return ((ip & s.mask) >>> 0) === s.network;
}

export const BROADCAST_IP4: Ip4 = 0xffffffff;

export function isMulticastIp4(ip: Ip4): boolean {
  return ip >>> 28 === 0xe;
}

export function parseMac(text: string): Buffer | undefined {
  const parts = text.split(':');
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) return undefined;
  return Buffer.from(parts.map((p) => Number.parseInt(p, 16)));
}

export function formatMac(mac: Buffer): string {
  return [...mac.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export const BROADCAST_MAC = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
