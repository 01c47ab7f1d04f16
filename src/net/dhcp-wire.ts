/**
 * The DHCP wire format (RFC 2131 message layout, RFC 2132 options) as the translator's DHCP server
 * needs it. This is the only code that reads or writes DHCP/BOOTP bytes: untrusted UDP payloads in,
 * typed messages or a reason out; typed replies in, bytes out. Parsing never throws on input.
 *
 * Layout of a message (RFC 2131 §2, figure 1), offsets in bytes:
 *   0 op, 1 htype, 2 hlen, 3 hops, 4 xid(4), 8 secs(2), 10 flags(2), 12 ciaddr, 16 yiaddr,
 *   20 siaddr, 24 giaddr, 28 chaddr(16), 44 sname(64), 108 file(128), 236 magic cookie(4),
 *   240 options (variable, up to END).
 */

import { readIp4, writeIp4, type Ip4 } from './address.js';

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;

/** RFC 2131 §3: the first four octets of the options field, 99.130.83.99. */
export const DHCP_MAGIC_COOKIE = 0x63825363;

/** Offset of the magic cookie: the fixed BOOTP header is 236 bytes (RFC 2131 §2). */
export const DHCP_COOKIE_OFFSET = 236;
/** Offset of the first option, just after the cookie. */
export const DHCP_OPTIONS_OFFSET = 240;

/**
 * Replies are padded to the 300-byte BOOTP minimum (236-byte header + 64-byte vendor area,
 * RFC 951; RFC 1542 §3.2 lets relays and clients drop anything shorter), as passt does.
 */
export const BOOTP_MIN_SIZE = 300;

/**
 * Largest payload parsed. DHCP messages are at most a few hundred bytes (RFC 2131 §2: clients must
 * accept 576-byte datagrams; option 57 rarely exceeds an Ethernet MTU); anything above this is
 * rejected, which also bounds the total of the options parsed from it.
 */
export const MAX_DHCP_PAYLOAD = 8192;

/** RFC 2131 §2: the leftmost bit of `flags` is the BROADCAST flag. */
export const BROADCAST_FLAG = 0x8000;

/** Option 53 values (RFC 2132 §9.6). */
export enum DhcpMessageType {
  Discover = 1,
  Offer = 2,
  Request = 3,
  Decline = 4,
  Ack = 5,
  Nak = 6,
  Release = 7,
  Inform = 8,
}

/** Option tags this code names (RFC 2132, RFC 3397 for 119). */
export enum DhcpOption {
  Pad = 0,
  SubnetMask = 1,
  Router = 3,
  DnsServers = 6,
  HostName = 12,
  DomainName = 15,
  InterfaceMtu = 26,
  BroadcastAddress = 28,
  RequestedIp = 50,
  LeaseTime = 51,
  Overload = 52,
  MessageType = 53,
  ServerId = 54,
  ParameterRequestList = 55,
  Message = 56,
  MaxMessageSize = 57,
  RenewalTime = 58,
  RebindingTime = 59,
  ClientId = 61,
  DomainSearch = 119,
  End = 255,
}

/** A parsed DHCP/BOOTP message. Every Buffer is a copy: nothing shares memory with the payload. */
export interface DhcpMessage {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  /** The raw flags field; `broadcast` is its BROADCAST bit. */
  flags: number;
  broadcast: boolean;
  ciaddr: Ip4;
  yiaddr: Ip4;
  siaddr: Ip4;
  giaddr: Ip4;
  /** The client's hardware address: the first `hlen` (6) bytes of the chaddr field. */
  chaddr: Buffer;
  /**
   * Options by tag, in the order first seen. Repeated instances of a tag are concatenated into one
   * value (RFC 3396 §7). PAD and END never appear here. Options in overloaded sname/file fields
   * (option 52) are not read.
   */
  options: Map<number, Buffer>;
}

export type DhcpParseResult = { ok: true; msg: DhcpMessage } | { ok: false; reason: string };

/**
 * Parses one UDP payload. Requires: 240 ≤ length ≤ MAX_DHCP_PAYLOAD, op BOOTREQUEST or BOOTREPLY,
 * htype 1 (Ethernet) with hlen 6, the magic cookie, and a well-formed option area: every option's
 * length byte and data inside the payload. The option area ends at END; bytes after END are
 * padding and ignored. A payload that ends right after a complete option without END is accepted
 * (some clients omit END).
 */
export function parseDhcpMessage(payload: Buffer): DhcpParseResult {
  if (payload.length < DHCP_OPTIONS_OFFSET) return { ok: false, reason: `too short (${payload.length} bytes)` };
  if (payload.length > MAX_DHCP_PAYLOAD) return { ok: false, reason: `too large (${payload.length} bytes)` };
  const op = payload[0]!;
  if (op !== BOOTREQUEST && op !== BOOTREPLY) return { ok: false, reason: `bad op ${op}` };
  const htype = payload[1]!;
  const hlen = payload[2]!;
  if (htype !== 1 || hlen !== 6) return { ok: false, reason: `unsupported hardware type ${htype}/length ${hlen}` };
  const cookie = payload.readUInt32BE(DHCP_COOKIE_OFFSET);
  if (cookie !== DHCP_MAGIC_COOKIE) return { ok: false, reason: `bad magic cookie 0x${cookie.toString(16)}` };

  const parts = new Map<number, Buffer[]>();
  let off = DHCP_OPTIONS_OFFSET;
  while (off < payload.length) {
    const tag = payload[off]!;
    if (tag === DhcpOption.Pad) {
      off += 1;
      continue;
    }
    if (tag === DhcpOption.End) break;
    if (off + 1 >= payload.length) return { ok: false, reason: `option ${tag} truncated (no length)` };
    const len = payload[off + 1]!;
    const end = off + 2 + len;
    if (end > payload.length) return { ok: false, reason: `option ${tag} truncated (${len} bytes announced, ${payload.length - off - 2} present)` };
    const list = parts.get(tag);
    const value = Buffer.from(payload.subarray(off + 2, end));
    if (list) list.push(value);
    else parts.set(tag, [value]);
    off = end;
  }
  const options = new Map<number, Buffer>();
  for (const [tag, list] of parts) options.set(tag, list.length === 1 ? list[0]! : Buffer.concat(list));

  const flags = payload.readUInt16BE(10);
  return {
    ok: true,
    msg: {
      op,
      htype,
      hlen,
      hops: payload[3]!,
      xid: payload.readUInt32BE(4),
      secs: payload.readUInt16BE(8),
      flags,
      broadcast: (flags & BROADCAST_FLAG) !== 0,
      ciaddr: readIp4(payload, 12),
      yiaddr: readIp4(payload, 16),
      siaddr: readIp4(payload, 20),
      giaddr: readIp4(payload, 24),
      chaddr: Buffer.from(payload.subarray(28, 28 + hlen)),
      options,
    },
  };
}

// ---- typed accessors: undefined when the option is absent or has an invalid length ----

/** Option 53 (RFC 2132 §9.6): exactly one byte, 1..8. */
export function dhcpMessageType(msg: DhcpMessage): DhcpMessageType | undefined {
  const v = msg.options.get(DhcpOption.MessageType);
  if (!v || v.length !== 1) return undefined;
  const t = v[0]!;
  return t >= DhcpMessageType.Discover && t <= DhcpMessageType.Inform ? (t as DhcpMessageType) : undefined;
}

function ip4Option(msg: DhcpMessage, tag: DhcpOption): Ip4 | undefined {
  const v = msg.options.get(tag);
  return v && v.length === 4 ? readIp4(v, 0) : undefined;
}

/** Option 50 (RFC 2132 §9.1): exactly 4 bytes. */
export function requestedIp(msg: DhcpMessage): Ip4 | undefined {
  return ip4Option(msg, DhcpOption.RequestedIp);
}

/** Option 54 (RFC 2132 §9.7): exactly 4 bytes. */
export function serverId(msg: DhcpMessage): Ip4 | undefined {
  return ip4Option(msg, DhcpOption.ServerId);
}

/** Option 55 (RFC 2132 §9.8): the requested tags in the client's order of preference (≥ 1). */
export function parameterRequestList(msg: DhcpMessage): number[] | undefined {
  const v = msg.options.get(DhcpOption.ParameterRequestList);
  return v && v.length >= 1 ? [...v] : undefined;
}

/** Option 61 (RFC 2132 §9.14): type byte + identifier, at least 2 bytes. */
export function clientId(msg: DhcpMessage): Buffer | undefined {
  const v = msg.options.get(DhcpOption.ClientId);
  return v && v.length >= 2 ? v : undefined;
}

/** Option 57 (RFC 2132 §9.10): the largest DHCP message (IP datagram) the client accepts. */
export function maxMessageSize(msg: DhcpMessage): number | undefined {
  const v = msg.options.get(DhcpOption.MaxMessageSize);
  return v && v.length === 2 ? v.readUInt16BE(0) : undefined;
}

// ---- building replies ----

export interface DhcpReplyFields {
  xid: number;
  /** Copied from the request (RFC 2131 table 3): the BROADCAST bit tells relays how to deliver. */
  flags: number;
  ciaddr: Ip4;
  yiaddr: Ip4;
  siaddr: Ip4;
  giaddr: Ip4;
  /** 6 bytes (htype 1 / hlen 6). */
  chaddr: Buffer;
  /** Written in this order. Values longer than 255 bytes are split (RFC 3396). Never 0 or 255. */
  options: ReadonlyArray<readonly [tag: number, value: Buffer]>;
}

/**
 * Builds a BOOTREPLY: htype 1, hlen 6, hops 0, secs 0, empty sname and file, the cookie, the
 * options, END, then zeros up to BOOTP_MIN_SIZE. Throws RangeError on invalid fields (a bug in the
 * caller, not untrusted input).
 */
export function buildDhcpReply(f: DhcpReplyFields): Buffer {
  if (f.chaddr.length !== 6) throw new RangeError(`chaddr must be 6 bytes, got ${f.chaddr.length}`);
  let optLen = 1; // END
  for (const [tag, value] of f.options) {
    if (!Number.isInteger(tag) || tag <= DhcpOption.Pad || tag >= DhcpOption.End) throw new RangeError(`invalid option tag ${tag}`);
    optLen += encodedOptionLength(value.length);
  }
  const size = Math.max(BOOTP_MIN_SIZE, DHCP_OPTIONS_OFFSET + optLen);
  const out = Buffer.alloc(size); // zero-filled: sname, file and the trailing padding stay 0
  out[0] = BOOTREPLY;
  out[1] = 1;
  out[2] = 6;
  out.writeUInt32BE(f.xid >>> 0, 4);
  out.writeUInt16BE(f.flags & 0xffff, 10);
  writeIp4(out, 12, f.ciaddr);
  writeIp4(out, 16, f.yiaddr);
  writeIp4(out, 20, f.siaddr);
  writeIp4(out, 24, f.giaddr);
  f.chaddr.copy(out, 28);
  out.writeUInt32BE(DHCP_MAGIC_COOKIE, DHCP_COOKIE_OFFSET);
  let off = DHCP_OPTIONS_OFFSET;
  for (const [tag, value] of f.options) off = writeOption(out, off, tag, value);
  out[off] = DhcpOption.End;
  return out;
}

/** Bytes an option of `len` data bytes takes once split into ≤ 255-byte instances (RFC 3396). */
function encodedOptionLength(len: number): number {
  if (len === 0) return 2;
  return len + 2 * Math.ceil(len / 255);
}

/**
 * RFC 3396 §5: a value longer than 255 bytes is sent as consecutive instances of the same tag,
 * which the receiver concatenates in order. An empty value is one instance with length 0.
 */
function writeOption(out: Buffer, off: number, tag: number, value: Buffer): number {
  let pos = 0;
  do {
    const n = Math.min(255, value.length - pos);
    out[off] = tag;
    out[off + 1] = n;
    value.copy(out, off + 2, pos, pos + n);
    off += 2 + n;
    pos += n;
  } while (pos < value.length);
  return off;
}

// ---- option value encoders ----

export function ip4Value(...ips: Ip4[]): Buffer {
  const b = Buffer.alloc(4 * ips.length);
  ips.forEach((ip, i) => writeIp4(b, 4 * i, ip));
  return b;
}

export function u16Value(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v & 0xffff, 0);
  return b;
}

export function u32Value(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

/**
 * True when `name` can be sent as a DNS name (RFC 1035 §2.3.4): printable ASCII without spaces,
 * labels of 1..63 bytes, at most 253 characters (255 encoded). One trailing dot is allowed; the
 * root name alone ("" or ".") is not a useful domain and is rejected.
 */
export function isValidDomainName(name: string): boolean {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n.length === 0 || n.length > 253) return false;
  if (!/^[\x21-\x7e]+$/.test(n)) return false;
  return n.split('.').every((l) => l.length >= 1 && l.length <= 63);
}

/**
 * Encodes option 119 (RFC 3397 §2): the names in DNS wire format (RFC 1035 §3.1), concatenated,
 * with RFC 1035 §4.1.4 compression. A repeated suffix becomes a pointer (0xC0 | offset) to its
 * first occurrence; offsets count from the start of the option data taken as a whole (after RFC
 * 3396 concatenation), so the result may be split freely. Suffixes are compared case-insensitively.
 * Throws RangeError if a name fails isValidDomainName.
 */
export function encodeDomainSearch(names: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const seen = new Map<string, number>(); // lower-cased suffix → offset of its encoding
  let size = 0;
  for (const name of names) {
    if (!isValidDomainName(name)) throw new RangeError(`invalid domain name ${JSON.stringify(name)}`);
    const labels = (name.endsWith('.') ? name.slice(0, -1) : name).split('.');
    let i = 0;
    for (; i < labels.length; i++) {
      const suffix = labels.slice(i).join('.').toLowerCase();
      const at = seen.get(suffix);
      if (at !== undefined) {
        parts.push(Buffer.from([0xc0 | (at >> 8), at & 0xff]));
        size += 2;
        break;
      }
      // Pointers carry 14 bits: only suffixes that start below 0x4000 can be targets.
      if (size < 0x4000) seen.set(suffix, size);
      const label = Buffer.from(labels[i]!, 'latin1');
      parts.push(Buffer.from([label.length]), label);
      size += 1 + label.length;
    }
    if (i === labels.length) {
      parts.push(Buffer.from([0]));
      size += 1;
    }
  }
  return Buffer.concat(parts, size);
}

/**
 * Decodes option 119 data (the inverse of encodeDomainSearch, for any RFC 3397 encoder); undefined
 * if malformed. A pointer must point before the name it belongs to, so decoding always ends.
 * Never throws.
 */
export function decodeDomainSearch(data: Buffer): string[] | undefined {
  const names: string[] = [];
  let off = 0;
  while (off < data.length) {
    const start = off;
    const labels: string[] = [];
    let pos = off;
    let jumped = false;
    for (;;) {
      if (pos >= data.length) return undefined;
      const len = data[pos]!;
      if (len === 0) {
        if (!jumped) off = pos + 1;
        break;
      }
      if ((len & 0xc0) === 0xc0) {
        if (pos + 1 >= data.length) return undefined;
        const target = ((len & 0x3f) << 8) | data[pos + 1]!;
        if (!jumped) off = pos + 2;
        // Strictly backwards, and before the start of the current name: no loops.
        if (target >= Math.min(pos, start)) return undefined;
        pos = target;
        jumped = true;
        continue;
      }
      if ((len & 0xc0) !== 0 || pos + 1 + len > data.length) return undefined;
      labels.push(data.toString('latin1', pos + 1, pos + 1 + len));
      if (labels.length > 127) return undefined;
      pos += 1 + len;
    }
    names.push(labels.join('.'));
  }
  return names;
}
