/**
 * The DNS wire format (RFC 1035 §4, EDNS0 from RFC 6891). This is the only code that reads DNS
 * bytes: an untrusted Buffer in, typed values or a reason out. Parsers never throw on input; every
 * read is bounded by the buffer, names by RFC 1035 §2.3.4 (63-byte labels, 255-byte names) and
 * compression pointers must point strictly backwards (so they cannot loop).
 *
 * Names are given in presentation form without the trailing dot (the root is ''): label bytes
 * outside 0x21–0x7e are written `\DDD` and a dot or backslash inside a label `\.` / `\\`
 * (RFC 4343 §2.1), so that `encodeName(name)` gives back the same wire labels, case preserved.
 */

export const HEADER_SIZE = 12;
/** Largest DNS message (the TCP length prefix is 16 bits, RFC 1035 §4.2.2). */
export const MAX_MESSAGE = 65535;
/** Classic UDP limit without EDNS (RFC 1035 §4.2.1). */
export const UDP_CLASSIC_LIMIT = 512;
/** Largest UDP answer we send, whatever the client's EDNS size (the common 4096 of resolvers). */
export const MAX_UDP_PAYLOAD = 4096;
export const MAX_NAME_WIRE = 255;
export const MAX_LABEL = 63;
export const MAX_POINTER_HOPS = 128;

export const DnsType = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  TKEY: 249,
  TSIG: 250,
  IXFR: 251,
  AXFR: 252,
  ANY: 255,
} as const;

export const DnsClass = { IN: 1 } as const;

export const Rcode = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  /** Extended rcode 16 (RFC 6891 §9): needs an OPT record to carry its upper bits. */
  BADVERS: 16,
} as const;

export const Opcode = { QUERY: 0 } as const;

export interface DnsHeader {
  id: number;
  qr: boolean;
  opcode: number;
  aa: boolean;
  tc: boolean;
  rd: boolean;
  ra: boolean;
  /** The reserved Z bit (RFC 1035); should be 0. */
  z: boolean;
  /** Authentic data and checking disabled (RFC 4035 §3.2). */
  ad: boolean;
  cd: boolean;
  /** The 4-bit header rcode (extended rcodes live in the OPT record). */
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
}

export interface DnsQuestion {
  name: string;
  type: number;
  class: number;
}

export interface DnsRecord {
  name: string;
  type: number;
  class: number;
  /** Unsigned 32-bit, as on the wire. */
  ttl: number;
  /** A view into the parsed message (shares its memory). Names inside rdata may be compressed. */
  rdata: Buffer;
}

export interface DnsMessage {
  header: DnsHeader;
  questions: DnsQuestion[];
  answers: DnsRecord[];
  authorities: DnsRecord[];
  additionals: DnsRecord[];
}

export type HeaderParse = { ok: true; header: DnsHeader } | { ok: false; reason: string };
export type MessageParse = { ok: true; message: DnsMessage } | { ok: false; reason: string };
export type NameParse = { ok: true; name: string; end: number } | { ok: false; reason: string };

export function parseHeader(buf: Buffer): HeaderParse {
  if (buf.length < HEADER_SIZE) return { ok: false, reason: `message of ${buf.length} bytes is shorter than a header` };
  const f1 = buf[2]!;
  const f2 = buf[3]!;
  return {
    ok: true,
    header: {
      id: buf.readUInt16BE(0),
      qr: (f1 & 0x80) !== 0,
      opcode: (f1 >> 3) & 0x0f,
      aa: (f1 & 0x04) !== 0,
      tc: (f1 & 0x02) !== 0,
      rd: (f1 & 0x01) !== 0,
      ra: (f2 & 0x80) !== 0,
      z: (f2 & 0x40) !== 0,
      ad: (f2 & 0x20) !== 0,
      cd: (f2 & 0x10) !== 0,
      rcode: f2 & 0x0f,
      qdcount: buf.readUInt16BE(4),
      ancount: buf.readUInt16BE(6),
      nscount: buf.readUInt16BE(8),
      arcount: buf.readUInt16BE(10),
    },
  };
}

/** Appends one label in presentation form (RFC 4343 §2.1 escaping). */
function labelText(buf: Buffer, start: number, len: number): string {
  let s = '';
  for (let i = start; i < start + len; i++) {
    const b = buf[i]!;
    if (b === 0x2e || b === 0x5c) s += `\\${String.fromCharCode(b)}`;
    else if (b >= 0x21 && b <= 0x7e) s += String.fromCharCode(b);
    else s += `\\${b.toString().padStart(3, '0')}`;
  }
  return s;
}

/**
 * Reads a possibly compressed name at `off` (RFC 1035 §4.1.4). `end` is the offset just after the
 * name's bytes at `off` (after the first pointer if there is one). A pointer must point strictly
 * before the label sequence it ends, which real compressors always do ("a prior occurrence") and
 * which rules out loops; the hop limit is a second bound.
 */
export function readName(buf: Buffer, off: number): NameParse {
  const labels: string[] = [];
  let pos = off;
  let segmentStart = off;
  let end = -1;
  let hops = 0;
  let wire = 1; // the terminating zero
  for (;;) {
    if (pos >= buf.length) return { ok: false, reason: 'name runs past the end of the message' };
    const len = buf[pos]!;
    if (len === 0) {
      if (end < 0) end = pos + 1;
      return { ok: true, name: labels.join('.'), end };
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) return { ok: false, reason: 'compression pointer runs past the end of the message' };
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      if (end < 0) end = pos + 2;
      if (++hops > MAX_POINTER_HOPS) return { ok: false, reason: 'too many compression pointers' };
      if (target >= segmentStart) return { ok: false, reason: `compression pointer to ${target} does not point backwards` };
      pos = target;
      segmentStart = target;
      continue;
    }
    // 0x40 and 0x80 are the extended and reserved label types (RFC 6891 §5); a plain label is ≤ 63.
    if (kind !== 0) return { ok: false, reason: `unsupported label type 0x${len.toString(16)}` };
    wire += 1 + len;
    if (wire > MAX_NAME_WIRE) return { ok: false, reason: 'name longer than 255 bytes' };
    if (pos + 1 + len > buf.length) return { ok: false, reason: 'label runs past the end of the message' };
    labels.push(labelText(buf, pos + 1, len));
    pos += 1 + len;
  }
}

/** Byte range of one resource record inside the message, for the truncation code. */
interface RecordSpan {
  start: number;
  end: number;
}

interface Layout {
  message: DnsMessage;
  /** Offset just after the question section. */
  questionEnd: number;
  /** Spans of answer, authority and additional records, in wire order. */
  spans: RecordSpan[];
}

type LayoutParse = { ok: true; layout: Layout } | { ok: false; reason: string };

function parseLayout(buf: Buffer, questionsOnly: boolean): LayoutParse {
  if (buf.length > MAX_MESSAGE) return { ok: false, reason: `message of ${buf.length} bytes exceeds ${MAX_MESSAGE}` };
  const h = parseHeader(buf);
  if (!h.ok) return h;
  const header = h.header;
  const message: DnsMessage = { header, questions: [], answers: [], authorities: [], additionals: [] };
  let off = HEADER_SIZE;
  for (let i = 0; i < header.qdcount; i++) {
    const n = readName(buf, off);
    if (!n.ok) return { ok: false, reason: `question ${i}: ${n.reason}` };
    if (n.end + 4 > buf.length) return { ok: false, reason: `question ${i} is truncated` };
    message.questions.push({ name: n.name, type: buf.readUInt16BE(n.end), class: buf.readUInt16BE(n.end + 2) });
    off = n.end + 4;
  }
  const layout: Layout = { message, questionEnd: off, spans: [] };
  if (questionsOnly) return { ok: true, layout };
  const sections: Array<[DnsRecord[], number, string]> = [
    [message.answers, header.ancount, 'answer'],
    [message.authorities, header.nscount, 'authority'],
    [message.additionals, header.arcount, 'additional'],
  ];
  for (const [list, count, what] of sections) {
    for (let i = 0; i < count; i++) {
      const r = readRecord(buf, off);
      if (!r.ok) return { ok: false, reason: `${what} record ${i}: ${r.reason}` };
      list.push(r.record);
      layout.spans.push({ start: off, end: r.end });
      off = r.end;
    }
  }
  // Bytes after the last record are ignored (RFC 1035 does not define them).
  return { ok: true, layout };
}

function readRecord(buf: Buffer, off: number): { ok: true; record: DnsRecord; end: number } | { ok: false; reason: string } {
  const n = readName(buf, off);
  if (!n.ok) return n;
  const p = n.end;
  if (p + 10 > buf.length) return { ok: false, reason: 'record header is truncated' };
  const rdlength = buf.readUInt16BE(p + 8);
  const end = p + 10 + rdlength;
  if (end > buf.length) return { ok: false, reason: `rdata of ${rdlength} bytes runs past the end of the message` };
  const record: DnsRecord = {
    name: n.name,
    type: buf.readUInt16BE(p),
    class: buf.readUInt16BE(p + 2),
    ttl: buf.readUInt32BE(p + 4),
    rdata: buf.subarray(p + 10, end),
  };
  return { ok: true, record, end };
}

/**
 * Parses a whole message. With `questionsOnly` the record sections are not read (their lists are
 * empty whatever the counts say): enough to match an answer to a query even when it was cut.
 */
export function parseMessage(buf: Buffer, opts: { questionsOnly?: boolean } = {}): MessageParse {
  const r = parseLayout(buf, opts.questionsOnly === true);
  return r.ok ? { ok: true, message: r.layout.message } : r;
}

/** The EDNS0 pseudo-record of a message (RFC 6891 §6.1). */
export interface EdnsInfo {
  /** The sender's UDP payload size, as sent (the CLASS field). */
  udpPayloadSize: number;
  /** Upper 8 bits of the 12-bit rcode. */
  extendedRcode: number;
  version: number;
  /** The DNSSEC OK bit (RFC 3225). */
  dnssecOk: boolean;
  /** The raw options (RDATA). */
  options: Buffer;
}

export type EdnsParse = { ok: true; edns: EdnsInfo | undefined } | { ok: false; reason: string };

/** Finds the OPT record; more than one, or one not owned by the root, is a FORMERR (RFC 6891 §6.1.1). */
export function readEdns(message: DnsMessage): EdnsParse {
  const opts = message.additionals.filter((r) => r.type === DnsType.OPT);
  if (opts.length === 0) return { ok: true, edns: undefined };
  if (opts.length > 1) return { ok: false, reason: 'more than one OPT record' };
  const o = opts[0]!;
  if (o.name !== '') return { ok: false, reason: 'OPT record not owned by the root' };
  return {
    ok: true,
    edns: {
      udpPayloadSize: o.class,
      extendedRcode: o.ttl >>> 24,
      version: (o.ttl >>> 16) & 0xff,
      dnssecOk: (o.ttl & 0x8000) !== 0,
      options: o.rdata,
    },
  };
}

/**
 * The largest UDP answer a client accepts: 512 without EDNS, else its payload size, where values
 * below 512 count as 512 (RFC 6891 §6.2.3, §6.2.5), capped at MAX_UDP_PAYLOAD.
 */
export function udpPayloadLimit(edns: EdnsInfo | undefined): number {
  if (!edns) return UDP_CLASSIC_LIMIT;
  return Math.min(MAX_UDP_PAYLOAD, Math.max(UDP_CLASSIC_LIMIT, edns.udpPayloadSize));
}

/**
 * Encodes a presentation-form name (see the top of this file; a trailing dot is allowed) into
 * uncompressed wire labels. Throws RangeError on names that cannot be encoded: empty labels,
 * labels over 63 bytes, names over 255 bytes, characters outside printable ASCII unless escaped.
 * Callers pass parsed names or configuration, never raw input.
 */
export function encodeName(name: string): Buffer {
  const out: number[] = [];
  if (name === '.' || name === '') return Buffer.from([0]);
  let label: number[] = [];
  const flush = (): void => {
    if (label.length === 0) throw new RangeError(`empty label in name ${JSON.stringify(name)}`);
    if (label.length > MAX_LABEL) throw new RangeError(`label longer than ${MAX_LABEL} bytes in ${JSON.stringify(name)}`);
    out.push(label.length, ...label);
    label = [];
  };
  let i = 0;
  let endedWithDot = false;
  while (i < name.length) {
    const c = name.charCodeAt(i);
    endedWithDot = false;
    if (c === 0x2e) {
      flush();
      endedWithDot = true;
      i += 1;
    } else if (c === 0x5c) {
      const digits = /^\d{3}/.exec(name.slice(i + 1, i + 4));
      if (digits) {
        const v = Number(digits[0]);
        if (v > 255) throw new RangeError(`bad escape \\${digits[0]} in ${JSON.stringify(name)}`);
        label.push(v);
        i += 4;
      } else {
        const n = name.charCodeAt(i + 1);
        if (!(n >= 0x20 && n <= 0x7e)) throw new RangeError(`bad escape in ${JSON.stringify(name)}`);
        label.push(n);
        i += 2;
      }
    } else {
      if (c < 0x21 || c > 0x7e) throw new RangeError(`character 0x${c.toString(16)} in name ${JSON.stringify(name)}`);
      label.push(c);
      i += 1;
    }
  }
  if (!endedWithDot) flush();
  out.push(0);
  if (out.length > MAX_NAME_WIRE) throw new RangeError(`name longer than ${MAX_NAME_WIRE} bytes`);
  return Buffer.from(out);
}

/** ASCII-only case folding (RFC 4343: DNS names compare case-insensitively in ASCII only). */
export function foldName(name: string): string {
  return name.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
}

/** One record to write into an answer section. */
export interface AnswerRecord {
  /** Owner name; omitted (or equal to the question name) means the question name, written as 0xC00C. */
  name?: string;
  type: number;
  /** Default IN. */
  class?: number;
  ttl: number;
  /** Written verbatim (A: 4 bytes, AAAA: 16 bytes). */
  rdata: Buffer;
}

export interface ResponseOptions {
  /** Authoritative answer bit; default false. */
  aa?: boolean;
  /** Include an OPT record (when the query had one, RFC 6891 §7) advertising this UDP payload size. */
  edns?: { udpPayloadSize: number };
}

/** What buildResponse needs of the query: a parsed DnsMessage fits. */
export interface QueryInfo {
  header: Pick<DnsHeader, 'id' | 'opcode' | 'rd' | 'cd'>;
  questions: readonly DnsQuestion[];
}

/** Pointer to offset 12, where the first question name starts (RFC 1035 §4.1.4). */
const QUESTION_POINTER = Buffer.from([0xc0, 0x0c]);

/**
 * Writes a response to `query`: same id, opcode, RD and CD (RFC 6840 §5.9), QR and RA set, the
 * query's questions echoed, then `answers`. An rcode above 15 needs `options.edns` (its upper bits
 * go in the OPT TTL, RFC 6891 §6.1.3). Throws RangeError if the message would exceed 65535 bytes or
 * a name cannot be encoded; it never sees untrusted bytes.
 */
export function buildResponse(query: QueryInfo, rcode: number, answers: readonly AnswerRecord[] = [], options: ResponseOptions = {}): Buffer {
  if (rcode > 15 && !options.edns) throw new RangeError(`rcode ${rcode} needs an OPT record`);
  const parts: Buffer[] = [];
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt16BE(query.header.id, 0);
  header[2] = 0x80 | ((query.header.opcode & 0x0f) << 3) | (options.aa ? 0x04 : 0) | (query.header.rd ? 0x01 : 0);
  header[3] = 0x80 | (query.header.cd ? 0x10 : 0) | (rcode & 0x0f);
  header.writeUInt16BE(query.questions.length, 4);
  header.writeUInt16BE(answers.length, 6);
  header.writeUInt16BE(options.edns ? 1 : 0, 10);
  parts.push(header);
  for (const q of query.questions) {
    const fixed = Buffer.alloc(4);
    fixed.writeUInt16BE(q.type, 0);
    fixed.writeUInt16BE(q.class, 2);
    parts.push(encodeName(q.name), fixed);
  }
  const first = query.questions[0];
  const firstFolded = first ? foldName(first.name) : undefined;
  for (const a of answers) {
    const toQuestion = first !== undefined && (a.name === undefined || foldName(a.name) === firstFolded);
    if (!toQuestion && a.name === undefined) throw new RangeError('answer without a name and no question to point to');
    parts.push(toQuestion ? QUESTION_POINTER : encodeName(a.name ?? ''), recordFixed(a.type, a.class ?? DnsClass.IN, a.ttl, a.rdata.length), a.rdata);
  }
  if (options.edns) parts.push(optRecord(options.edns.udpPayloadSize, rcode >> 4));
  const out = Buffer.concat(parts);
  if (out.length > MAX_MESSAGE) throw new RangeError(`response of ${out.length} bytes exceeds ${MAX_MESSAGE}`);
  return out;
}

/** TYPE, CLASS, TTL and RDLENGTH of a record. */
function recordFixed(type: number, klass: number, ttl: number, rdlength: number): Buffer {
  if (rdlength > 0xffff) throw new RangeError(`rdata of ${rdlength} bytes`);
  const b = Buffer.alloc(10);
  b.writeUInt16BE(type, 0);
  b.writeUInt16BE(klass, 2);
  b.writeUInt32BE(ttl >>> 0, 4);
  b.writeUInt16BE(rdlength, 8);
  return b;
}

/** An OPT record: root owner, our UDP size, extended rcode, version 0, no flags (RFC 6891 §6.1.2). */
function optRecord(udpPayloadSize: number, extendedRcode: number, options: Buffer = Buffer.alloc(0)): Buffer {
  const fixed = recordFixed(DnsType.OPT, udpPayloadSize & 0xffff, ((extendedRcode & 0xff) << 24) >>> 0, options.length);
  return Buffer.concat([Buffer.from([0]), fixed, options]);
}

/** Re-encodes a parsed OPT record with a root owner (never compressed), keeping TTL and options. */
function copyOpt(r: DnsRecord): Buffer {
  return Buffer.concat([Buffer.from([0]), recordFixed(DnsType.OPT, r.class, r.ttl, r.rdata.length), r.rdata]);
}

/**
 * Cuts an encoded response to at most `limit` bytes for UDP (RFC 1035 §4.2.1): a response that fits
 * is returned unchanged; otherwise the header and question are kept with the longest prefix of
 * whole records that fits (a prefix keeps every compression pointer valid), plus the OPT record if
 * there was one (RFC 6891 §7: it must survive truncation). TC is set when answer or authority
 * records were dropped, not when only additional ones were (RFC 2181 §9). A response that cannot
 * be parsed, or whose question alone does not fit, is reduced to its header with TC and no
 * sections. Limits below 12 count as 12.
 */
export function truncateResponse(response: Buffer, limit: number): Buffer {
  if (response.length <= limit) return response;
  limit = Math.max(limit, HEADER_SIZE);
  const p = parseLayout(response, false);
  if (!p.ok) return bareHeader(response);
  const { message, questionEnd, spans } = p.layout;
  const { ancount, nscount } = message.header;
  const optIndex = message.additionals.findIndex((r) => r.type === DnsType.OPT);
  const optSpan = optIndex >= 0 ? ancount + nscount + optIndex : -1;
  const opt = optIndex >= 0 ? copyOpt(message.additionals[optIndex]!) : undefined;
  if (questionEnd + (opt?.length ?? 0) > limit) return bareHeader(response);
  // keep = number of records in the prefix; reserve room for the OPT record while it is not in it.
  let keep = 0;
  while (keep < spans.length) {
    const next = keep + 1;
    const reserve = opt && optSpan >= next ? opt.length : 0;
    if (spans[keep]!.end + reserve > limit) break;
    keep = next;
  }
  const prefixEnd = keep === 0 ? questionEnd : spans[keep - 1]!.end;
  const appendOpt = opt !== undefined && optSpan >= keep;
  const out = Buffer.concat(appendOpt ? [response.subarray(0, prefixEnd), opt] : [response.subarray(0, prefixEnd)]);
  const an = Math.min(ancount, keep);
  const ns = Math.min(nscount, Math.max(0, keep - ancount));
  const ar = Math.max(0, keep - ancount - nscount) + (appendOpt ? 1 : 0);
  out.writeUInt16BE(an, 6);
  out.writeUInt16BE(ns, 8);
  out.writeUInt16BE(ar, 10);
  if (an + ns < ancount + nscount) out[2] = out[2]! | 0x02;
  return out;
}

/** The header alone, counts zeroed, TC set. */
function bareHeader(response: Buffer): Buffer {
  const out = Buffer.alloc(HEADER_SIZE);
  response.copy(out, 0, 0, Math.min(4, response.length));
  out[2] = out[2]! | 0x02;
  return out;
}
