import * as dgram from 'node:dgram';
import * as dns from 'node:dns';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { errnoCode } from '../util/errors.js';
import { parseIp4 } from './address.js';
import {
  DnsClass,
  DnsType,
  HEADER_SIZE,
  MAX_MESSAGE,
  MAX_UDP_PAYLOAD,
  Opcode,
  Rcode,
  buildResponse,
  encodeName,
  foldName,
  parseHeader,
  parseMessage,
  readEdns,
  truncateResponse,
  udpPayloadLimit,
  type AnswerRecord,
  type DnsMessage,
  type DnsQuestion,
  type EdnsInfo,
} from './dns-wire.js';

/**
 * The translator's DNS server (docs/network.md, "DNS"), on the gateway's port 53. Local names first;
 * A and AAAA through the host's getaddrinfo, so /etc/hosts, split DNS and search rules apply as for
 * host programs; other types forwarded as raw queries to the host's name servers. Every answer is
 * built here from typed values (dns-wire.ts) except forwarded ones, which are checked to answer the
 * query before they are passed on. Bounds: `maxInFlight` queries resolving, 1024 negative-cache
 * entries, a per-query deadline, and per TCP session a bounded pipeline and output buffer.
 */

export type DnsLog = (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;

export interface DnsServerOptions {
  /** Names answered locally (lowercase, no trailing dot) → IPv4 dotted text, e.g. host.docker.internal → 198.19.248.254. */
  localNames: Map<string, string>;
  /** getaddrinfo-style lookup; default wraps node:dns lookup(name, { all: true, family, verbatim: true }). Rejects with an error carrying a `code` (ENOTFOUND, ENODATA, EAI_AGAIN, ...). */
  lookup?: (name: string, family: 4 | 6) => Promise<string[]>;
  /** Forwards a raw query for non-A/AAAA types to the host's name servers and resolves with the raw answer; default: UDP to each server of `servers()` in turn (2 s timeout each), retried over TCP when the UDP answer has TC set. */
  forward?: (query: Buffer) => Promise<Buffer>;
  /** The host's name servers (default: parsed from /etc/resolv.conf, falling back to node:dns getServers()). */
  servers?: () => string[];
  /** Max concurrent queries being resolved (default 256); beyond it answer SERVFAIL at once. */
  maxInFlight?: number;
  log?: DnsLog;
  /** Deadline for resolving one query (default 10 s, when stub resolvers have given up); then SERVFAIL. */
  timeoutMs?: number;
  /** A TCP session with nothing pending for this long is ended by the server (default 30 s, RFC 7766 §6.2.3). */
  tcpIdleMs?: number;
  /** Clock for the negative cache (default Date.now); for tests. */
  now?: () => number;
  /**
   * IPv4 address that stands for the host's loopback in the guest (the host alias). A host
   * resolver answer in 127.0.0.0/8 (say an /etc/hosts line "127.0.0.1 api.test") would mean the
   * container's own loopback; it is answered with this address instead, so the name reaches the
   * host as it does for host programs. IPv6 loopback answers are left out (the guest has no IPv6).
   */
  loopbackAlias?: string;
}

/** How long a failed lookup is remembered. */
export const NEGATIVE_TTL_MS = 5000;
export const NEGATIVE_CACHE_MAX = 1024;
/** Answer records per A/AAAA answer; far above what fits 64 KiB of AAAA records anyway. */
const MAX_ADDRESSES = 1000;
/** Queries of one TCP session resolving at once; beyond it the session stops reading input. */
const TCP_MAX_PIPELINE = 32;
/** Answers queued for the client of a TCP session before the session stops reading input. */
const TCP_MAX_QUEUED_OUT = 256 * 1024;
/** The UDP size we advertise in our own OPT records. */
const OUR_UDP_SIZE = MAX_UDP_PAYLOAD;

const EMPTY = Buffer.alloc(0);

/** Lookup error codes meaning "no such name or no address of that family" (getaddrinfo EAI_NONAME, EAI_NODATA, EAI_ADDRFAMILY). */
const NEGATIVE_CODES = new Set(['ENOTFOUND', 'ENODATA', 'EAI_NONAME', 'EAI_NODATA', 'EAI_ADDRFAMILY']);

type LookupOutcome = { kind: 'found'; addresses: string[] } | { kind: 'negative' } | { kind: 'error'; code: string };

/** What one query is answered with, before encoding. */
interface Reply {
  rcode: number;
  answers?: AnswerRecord[];
}

/** A query that passed the checks of `answer()`. */
interface QueryContext {
  message: DnsMessage;
  question: DnsQuestion;
  /** Lowercase question name. */
  key: string;
  edns: EdnsInfo | undefined;
  transport: 'udp' | 'tcp';
}

export class DnsServer {
  private readonly localA = new Map<string, Buffer>();
  private readonly localPtr = new Map<string, string>();
  private readonly lookupFn: (name: string, family: 4 | 6) => Promise<string[]>;
  private readonly forwardFn: (query: Buffer) => Promise<Buffer>;
  private readonly maxInFlight: number;
  private readonly timeoutMs: number;
  readonly tcpIdleMs: number;
  readonly log: DnsLog;
  private readonly now: () => number;
  private readonly loopbackAlias: string | undefined;
  private inFlight = 0;
  /** `${family}:${name}` → negative outcome and its expiry; insertion order is age order. */
  private readonly negative = new Map<string, { rcode: number; expires: number }>();
  /** Lookups under way, shared by concurrent queries for the same name and family. */
  private readonly lookups = new Map<string, Promise<LookupOutcome>>();

  /** Throws TypeError when a local name or address is invalid (configuration, not input). */
  constructor(opts: DnsServerOptions) {
    for (const [name, ip] of opts.localNames) {
      const v = parseIp4(ip);
      const key = foldName(name.replace(/\.$/, ''));
      if (v === undefined || !isHostname(key)) throw new TypeError(`bad local DNS name ${name} → ${ip}`);
      const rdata = Buffer.alloc(4);
      rdata.writeUInt32BE(v, 0);
      this.localA.set(key, rdata);
      const rev = `${[...rdata].reverse().join('.')}.in-addr.arpa`;
      if (!this.localPtr.has(rev)) this.localPtr.set(rev, key);
    }
    this.lookupFn = opts.lookup ?? defaultLookup;
    const servers = opts.servers ?? defaultServers;
    this.forwardFn = opts.forward ?? createForwarder({ servers });
    this.maxInFlight = opts.maxInFlight ?? 256;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.tcpIdleMs = opts.tcpIdleMs ?? 30_000;
    this.log = opts.log ?? (() => {});
    this.now = opts.now ?? Date.now;
    this.loopbackAlias = opts.loopbackAlias;
  }

  /** Queries being resolved now (bounded by maxInFlight). */
  get inFlightCount(): number {
    return this.inFlight;
  }

  /**
   * Answers one query. `transport` 'udp' applies the 512-byte / EDNS size limit with TC. Returns
   * undefined for input that deserves no answer (not a query, QR set, unparseable header). Never
   * throws or rejects.
   */
  async answer(query: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    try {
      return await this.answerChecked(query, transport);
    } catch (err) {
      this.log('warn', 'dns: internal error answering a query', { error: String(err) });
      return this.servfailFallback(query, transport);
    }
  }

  /** A DNS-over-TCP session for one client connection (RFC 7766); see DnsTcpSession. */
  tcpSession(): Duplex {
    return new DnsTcpSession(this);
  }

  private async answerChecked(query: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    const h = parseHeader(query);
    if (!h.ok || h.header.qr) return undefined;
    const parsed = parseMessage(query);
    const message: DnsMessage = parsed.ok ? parsed.message : { header: h.header, questions: [], answers: [], authorities: [], additionals: [] };
    const edns = parsed.ok ? readEdns(parsed.message) : undefined;
    const ednsInfo = edns?.ok ? edns.edns : undefined;
    const bare = (rcode: number, withQuestion: boolean): Buffer =>
      this.encode({ ...message, questions: withQuestion && message.questions.length === 1 ? message.questions : [] }, ednsInfo, transport, { rcode });
    // RFC 1035 §4.1.1: NOTIMP for kinds of query we do not support.
    if (h.header.opcode !== Opcode.QUERY) return bare(Rcode.NOTIMP, true);
    if (!parsed.ok) {
      this.log('debug', 'dns: malformed query', { reason: parsed.reason });
      return bare(Rcode.FORMERR, false);
    }
    if (message.questions.length !== 1 || !edns?.ok) return bare(Rcode.FORMERR, false);
    // RFC 6891 §6.1.3: an unsupported EDNS version is answered BADVERS, with our OPT record.
    if (ednsInfo && ednsInfo.version !== 0) return bare(Rcode.BADVERS, false);
    const question = message.questions[0]!;
    const ctx: QueryContext = { message, question, key: foldName(question.name), edns: ednsInfo, transport };
    return this.dispatch(ctx, query);
  }

  private dispatch(ctx: QueryContext, raw: Buffer): Buffer | Promise<Buffer> {
    const { question: q, key } = ctx;
    if (q.class !== DnsClass.IN) return this.reply(ctx, { rcode: Rcode.REFUSED });
    if (q.type === DnsType.OPT || q.type === DnsType.TSIG || q.type === DnsType.TKEY) return this.reply(ctx, { rcode: Rcode.FORMERR });
    if (q.type === DnsType.AXFR || q.type === DnsType.IXFR) return this.reply(ctx, { rcode: Rcode.NOTIMP });
    const local = this.localA.get(key);
    if (local) {
      // Local names have A records only: every other type gets NODATA (not forwarded, since the
      // host's servers would contradict us with NXDOMAIN).
      const a = q.type === DnsType.A || q.type === DnsType.ANY;
      return this.reply(ctx, { rcode: Rcode.NOERROR, answers: a ? [{ type: DnsType.A, ttl: 0, rdata: local }] : [] });
    }
    const ptr = q.type === DnsType.PTR ? this.localPtr.get(key) : undefined;
    if (ptr) return this.reply(ctx, { rcode: Rcode.NOERROR, answers: [{ type: DnsType.PTR, ttl: 0, rdata: encodeName(ptr) }] });
    if ((q.type === DnsType.A || q.type === DnsType.AAAA) && isLookupName(key)) {
      const family = q.type === DnsType.A ? 4 : 6;
      const cached = this.cachedNegative(family, key);
      if (cached !== undefined) return this.reply(ctx, { rcode: cached });
      return this.withSlot(ctx, () => this.resolveAddress(ctx, family));
    }
    return this.withSlot(ctx, () => this.forwardQuery(ctx, raw));
  }

  /** Runs `work` in one of the maxInFlight slots, held until `work` settles even past the deadline. */
  private withSlot(ctx: QueryContext, work: () => Promise<Buffer>): Buffer | Promise<Buffer> {
    if (this.inFlight >= this.maxInFlight) {
      this.log('debug', 'dns: too many queries in flight', { inFlight: this.inFlight });
      return this.reply(ctx, { rcode: Rcode.SERVFAIL });
    }
    this.inFlight++;
    const release = (): void => {
      this.inFlight--;
    };
    let p: Promise<Buffer>;
    try {
      p = work();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(release, release);
    return new Promise<Buffer>((resolve) => {
      let settled = false;
      const finish = (v: Buffer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(v);
      };
      const servfail = (why: string, err?: unknown): void => {
        if (settled) return;
        this.log('debug', `dns: ${why}`, { name: ctx.question.name, type: ctx.question.type, error: err === undefined ? undefined : String(err) });
        finish(this.reply(ctx, { rcode: Rcode.SERVFAIL }));
      };
      const timer = setTimeout(() => servfail('query timed out'), this.timeoutMs);
      p.then(finish, (err: unknown) => servfail('query failed', err));
    });
  }

  /** A/AAAA through `lookup`; a negative answer is NXDOMAIN unless the other family has addresses. */
  private async resolveAddress(ctx: QueryContext, family: 4 | 6): Promise<Buffer> {
    const r = await this.lookupOnce(ctx.key, family);
    if (r.kind === 'found') {
      const answers = addressRecords(this.unloop(r.addresses), family);
      if (answers.length > 0) return this.reply(ctx, { rcode: Rcode.NOERROR, answers });
    }
    if (r.kind === 'error') return this.reply(ctx, { rcode: Rcode.SERVFAIL });
    const other = await this.lookupOnce(ctx.key, family === 4 ? 6 : 4);
    if (other.kind === 'found' && addressRecords(this.unloop(other.addresses), family === 4 ? 6 : 4).length > 0) {
      this.remember(family, ctx.key, Rcode.NOERROR);
      return this.reply(ctx, { rcode: Rcode.NOERROR });
    }
    if (other.kind === 'error') return this.reply(ctx, { rcode: Rcode.NOERROR }); // the name may exist: NODATA, not cached
    this.remember(4, ctx.key, Rcode.NXDOMAIN);
    this.remember(6, ctx.key, Rcode.NXDOMAIN);
    return this.reply(ctx, { rcode: Rcode.NXDOMAIN });
  }

  /** Host-loopback answers as the guest must see them (see `loopbackAlias`). */
  private unloop(addresses: string[]): string[] {
    if (this.loopbackAlias === undefined) return addresses;
    const alias = this.loopbackAlias;
    return addresses.filter((a) => a !== '::1').map((a) => (/^127\./.test(a) ? alias : a));
  }

  /** One lookup per name and family at a time; concurrent queries share it. Never rejects. */
  private lookupOnce(name: string, family: 4 | 6): Promise<LookupOutcome> {
    const key = `${family}:${name}`;
    const running = this.lookups.get(key);
    if (running) return running;
    const p = (async (): Promise<LookupOutcome> => {
      try {
        return { kind: 'found', addresses: await this.lookupFn(name, family) };
      } catch (err) {
        const code = errnoCode(err) ?? 'EUNKNOWN';
        return NEGATIVE_CODES.has(code) ? { kind: 'negative' } : { kind: 'error', code };
      }
    })();
    this.lookups.set(key, p);
    // Removed only after set() (a lookup that throws synchronously settles before it).
    void p.then(() => {
      if (this.lookups.get(key) === p) this.lookups.delete(key);
    });
    return p;
  }

  private cachedNegative(family: 4 | 6, name: string): number | undefined {
    const key = `${family}:${name}`;
    const e = this.negative.get(key);
    if (!e) return undefined;
    if (e.expires > this.now()) return e.rcode;
    this.negative.delete(key);
    return undefined;
  }

  private remember(family: 4 | 6, name: string, rcode: number): void {
    const key = `${family}:${name}`;
    this.negative.delete(key);
    this.negative.set(key, { rcode, expires: this.now() + NEGATIVE_TTL_MS });
    while (this.negative.size > NEGATIVE_CACHE_MAX) {
      const oldest = this.negative.keys().next().value;
      if (oldest === undefined) break;
      this.negative.delete(oldest);
    }
  }

  /** Forwards the raw query; the answer must carry our id and question, or it is a SERVFAIL. */
  private async forwardQuery(ctx: QueryContext, raw: Buffer): Promise<Buffer> {
    const ans = await this.forwardFn(raw);
    if (!answersQuery(ctx.message, ans)) {
      this.log('warn', 'dns: forwarded answer does not match the query', { name: ctx.question.name, type: ctx.question.type });
      return this.reply(ctx, { rcode: Rcode.SERVFAIL });
    }
    if (ans.length > MAX_MESSAGE) return this.reply(ctx, { rcode: Rcode.SERVFAIL });
    return ctx.transport === 'udp' ? truncateResponse(ans, udpPayloadLimit(ctx.edns)) : ans;
  }

  private reply(ctx: QueryContext, r: Reply): Buffer {
    return this.encode(ctx.message, ctx.edns, ctx.transport, r);
  }

  /** Builds the answer (with an OPT record when the query had one) and applies the UDP limit. */
  private encode(query: DnsMessage, edns: EdnsInfo | undefined, transport: 'udp' | 'tcp', r: Reply): Buffer {
    const opts = edns ? { edns: { udpPayloadSize: OUR_UDP_SIZE } } : {};
    const out = buildResponse(query, r.rcode, r.answers ?? [], opts);
    return transport === 'udp' ? truncateResponse(out, udpPayloadLimit(edns)) : out;
  }

  /** After an internal error: SERVFAIL if the query can be answered at all, else nothing. */
  private servfailFallback(query: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined {
    try {
      const h = parseHeader(query);
      if (!h.ok || h.header.qr) return undefined;
      const p = parseMessage(query, { questionsOnly: true });
      const questions = p.ok && p.message.questions.length === 1 ? p.message.questions : [];
      const out = buildResponse({ header: h.header, questions }, Rcode.SERVFAIL);
      return transport === 'udp' ? truncateResponse(out, 512) : out;
    } catch {
      return undefined;
    }
  }
}

/** True if `answer` is a response to `query`: same id, QR set, the same single question (names compared case-insensitively). */
export function answersQuery(query: DnsMessage, answer: Buffer): boolean {
  const p = parseMessage(answer, { questionsOnly: true });
  if (!p.ok) return false;
  const { header, questions } = p.message;
  const q = query.questions[0];
  const a = questions[0];
  if (!header.qr || header.id !== query.header.id || questions.length !== 1 || !q || !a) return false;
  return a.type === q.type && a.class === q.class && foldName(a.name) === foldName(q.name);
}

/** A name we hand to getaddrinfo: letters, digits, '-' and '_' labels, not an address in any inet_aton form. */
function isLookupName(name: string): boolean {
  if (!isHostname(name) || net.isIP(name) !== 0) return false;
  const last = name.slice(name.lastIndexOf('.') + 1);
  // getaddrinfo would read "10.1", "2130706433" or "0x7f.1" as an IPv4 address (inet_aton).
  return !/^(?:\d+|0x[0-9a-f]*)$/.test(last);
}

function isHostname(name: string): boolean {
  return name.length > 0 && name.length <= 253 && /^[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*$/.test(name);
}

function addressRecords(addresses: string[], family: 4 | 6): AnswerRecord[] {
  const seen = new Set<string>();
  const out: AnswerRecord[] = [];
  for (const a of addresses) {
    const rdata = family === 4 ? ip4Bytes(a) : parseIp6(a);
    if (!rdata) continue;
    const k = rdata.toString('hex');
    if (seen.has(k)) continue;
    seen.add(k);
    // TTL 0: the host's resolver caches; the guest asks again each time (as gvproxy does).
    out.push({ type: family === 4 ? DnsType.A : DnsType.AAAA, ttl: 0, rdata });
    if (out.length >= MAX_ADDRESSES) break;
  }
  return out;
}

function ip4Bytes(text: string): Buffer | undefined {
  const v = parseIp4(text);
  if (v === undefined) return undefined;
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
}

/**
 * Parses IPv6 text (RFC 4291 §2.2, including `::` and a trailing dotted IPv4) into 16 bytes;
 * undefined for anything else, including scoped addresses ("fe80::1%eth0"), which mean nothing to
 * the guest.
 */
export function parseIp6(text: string): Buffer | undefined {
  if (text.includes('%') || net.isIPv6(text) === false) return undefined;
  const groups = (s: string): number[] | undefined => {
    if (s === '') return [];
    const out: number[] = [];
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const v = parseIp4(part);
        if (v === undefined) return undefined;
        out.push(v >>> 16, v & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(part)) return undefined;
        out.push(Number.parseInt(part, 16));
      }
    }
    return out;
  };
  const dbl = text.indexOf('::');
  let words: number[] | undefined;
  if (dbl >= 0) {
    const head = groups(text.slice(0, dbl));
    const tail = groups(text.slice(dbl + 2));
    if (!head || !tail || head.length + tail.length > 7) return undefined;
    words = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    words = groups(text);
  }
  if (!words || words.length !== 8) return undefined;
  const b = Buffer.alloc(16);
  words.forEach((w, i) => b.writeUInt16BE(w, i * 2));
  return b;
}

function defaultLookup(name: string, family: 4 | 6): Promise<string[]> {
  return new Promise((resolve, reject) => {
    dns.lookup(name, { all: true, family, verbatim: true }, (err, addresses) => {
      if (err) reject(err);
      else resolve(addresses.map((a) => a.address));
    });
  });
}

/** The host's name servers: /etc/resolv.conf, else what node:dns was configured with. */
function defaultServers(): string[] {
  const fromFile = readHostResolvConf().servers;
  return fromFile.length > 0 ? fromFile : dns.getServers();
}

/** glibc uses the first three name servers (MAXNS) and, in current versions, any number of search domains; we keep six. */
const MAX_SERVERS = 3;
const MAX_SEARCH = 6;

/**
 * Parses resolv.conf(5) text (default: /etc/resolv.conf; unreadable → empty): `nameserver` lines
 * (valid IPv4/IPv6 addresses, at most three), and `search` / `domain`, of which the last one wins
 * as in glibc. Comments start with '#' or ';'. Domains lose a trailing dot.
 */
export function readHostResolvConf(text?: string): { servers: string[]; search: string[] } {
  if (text === undefined) {
    try {
      text = readFileSync('/etc/resolv.conf', 'utf8');
    } catch {
      return { servers: [], search: [] };
    }
  }
  const servers: string[] = [];
  let search: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const [key, ...args] = line.split(/\s+/);
    if (key === 'nameserver' && args[0] !== undefined) {
      const addr = args[0];
      if (net.isIP(addr.replace(/%.*$/, '')) !== 0 && servers.length < MAX_SERVERS) servers.push(addr);
    } else if ((key === 'search' || key === 'domain') && args.length > 0) {
      const list = key === 'domain' ? args.slice(0, 1) : args;
      search = list.map((d) => d.replace(/\.$/, '')).filter((d) => d.length > 0 && d.length <= 253).slice(0, MAX_SEARCH);
    }
  }
  return { servers, search };
}

/** "1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353" (the forms of resolv.conf and dns.getServers()). */
export function parseServerAddress(text: string): { host: string; port: number } | undefined {
  let host = text;
  let port = 53;
  const bracket = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text);
  const v4port = /^([\d.]+):(\d{1,5})$/.exec(text);
  const m = bracket ?? v4port;
  if (m) {
    host = m[1]!;
    port = Number(m[2]);
  }
  if (port < 1 || port > 65535 || net.isIP(host.replace(/%.*$/, '')) === 0) return undefined;
  return { host, port };
}

export interface ForwarderOptions {
  servers: () => string[];
  /** Per server and per transport (default 2000 ms). */
  timeoutMs?: number;
}

/**
 * The default `forward`: asks each server in turn over UDP; a TC answer is asked again over TCP
 * (RFC 7766 §5), and if that fails the truncated answer is used. An answer must match the query
 * (id, question) or it is ignored. SERVFAIL, NOTIMP and REFUSED move on to the next server, as
 * glibc does; if no server answers better, the last such answer is returned.
 */
export function createForwarder(opts: ForwarderOptions): (query: Buffer) => Promise<Buffer> {
  const timeoutMs = opts.timeoutMs ?? 2000;
  return async (query: Buffer): Promise<Buffer> => {
    const parsed = parseMessage(query, { questionsOnly: true });
    if (!parsed.ok) throw new Error(`cannot forward a malformed query: ${parsed.reason}`);
    const servers = opts.servers().map(parseServerAddress).filter((s) => s !== undefined).slice(0, MAX_SERVERS);
    if (servers.length === 0) throw new Error('no name servers to forward to');
    let fallback: Buffer | undefined;
    let lastError: unknown;
    for (const s of servers) {
      try {
        let ans = await udpExchange(s.host, s.port, query, parsed.message, timeoutMs);
        if ((ans[2]! & 0x02) !== 0) ans = await tcpExchange(s.host, s.port, query, parsed.message, timeoutMs).catch(() => ans);
        const rcode = ans[3]! & 0x0f;
        if (rcode === Rcode.SERVFAIL || rcode === Rcode.NOTIMP || rcode === Rcode.REFUSED) {
          fallback = ans;
          continue;
        }
        return ans;
      } catch (err) {
        lastError = err;
      }
    }
    if (fallback) return fallback;
    throw lastError instanceof Error ? lastError : new Error('no name server answered');
  };
}

/** One query over a connected UDP socket; messages that do not answer it are ignored. */
function udpExchange(host: string, port: number, query: Buffer, q: DnsMessage, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket(net.isIPv6(host.replace(/%.*$/, '')) ? 'udp6' : 'udp4');
    let settled = false;
    const done = (err: Error | undefined, msg?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        sock.close();
      } catch {
        // already closed
      }
      if (err || !msg) reject(err ?? new Error('no answer'));
      else resolve(msg);
    };
    const timer = setTimeout(() => done(Object.assign(new Error(`DNS server ${host}:${port} timed out`), { code: 'ETIMEDOUT' })), timeoutMs);
    sock.on('error', (err) => done(err));
    sock.on('message', (msg) => {
      if (answersQuery(q, msg)) done(undefined, msg);
    });
    sock.connect(port, host, () => {
      sock.send(query, (err) => {
        if (err) done(err);
      });
    });
  });
}

/** One query over TCP (RFC 1035 §4.2.2 length prefix); reads exactly one answer. */
function tcpExchange(host: string, port: number, query: Buffer, q: DnsMessage, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = EMPTY;
    let settled = false;
    const done = (err: Error | undefined, msg?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err || !msg) reject(err ?? new Error('no answer'));
      else resolve(msg);
    };
    const timer = setTimeout(() => done(Object.assign(new Error(`DNS server ${host}:${port} timed out over TCP`), { code: 'ETIMEDOUT' })), timeoutMs);
    sock.on('error', (err) => done(err));
    sock.on('end', () => done(new Error(`DNS server ${host}:${port} closed the connection`)));
    sock.on('connect', () => sock.write(lengthPrefixed(query)));
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2) return;
      const len = buf.readUInt16BE(0);
      if (buf.length < 2 + len) return;
      const msg = Buffer.from(buf.subarray(2, 2 + len));
      done(answersQuery(q, msg) ? undefined : new Error(`DNS server ${host}:${port} sent an answer to another query`), msg);
    });
  });
}

function lengthPrefixed(msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(2 + msg.length);
  out.writeUInt16BE(msg.length, 0);
  msg.copy(out, 2);
  return out;
}

/**
 * DNS over TCP for one client connection (RFC 7766). Writes carry length-prefixed queries (RFC 1035
 * §4.2.2), several may be pipelined; they are resolved concurrently (at most TCP_MAX_PIPELINE at a
 * time) and answered in the order they came. Input is consumed only while the pipeline and the
 * unread output (TCP_MAX_QUEUED_OUT) have room; otherwise the write callback waits, so the writer
 * sees backpressure. Buffered input is at most one incomplete message (65537 bytes) plus the chunk
 * being processed. A length below a DNS header is a protocol violation: the session is destroyed
 * (without an error, so an owner without an 'error' listener is not crashed; it sees 'close'
 * before 'end'). After end() from the client the pending answers are sent and the readable side
 * ends. With nothing pending for `tcpIdleMs`, the server ends its side (RFC 7766 §6.2.3).
 */
class DnsTcpSession extends Duplex {
  private input: Buffer = EMPTY;
  private pending = 0;
  private order: Promise<void> = Promise.resolve();
  private writeCb: ((err?: Error | null) => void) | undefined;
  private finalCb: ((err?: Error | null) => void) | undefined;
  private readEnded = false;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly server: DnsServer) {
    super({ allowHalfOpen: true });
    this.armIdle();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.input = this.input.length === 0 ? chunk : Buffer.concat([this.input, chunk]);
    this.writeCb = callback;
    this.consume();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.finalCb = callback;
    this.maybeFinish();
  }

  override _read(): void {
    this.consume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.idleTimer);
    this.input = EMPTY;
    callback(err);
  }

  /** Starts the queries that are complete in `input` while there is room; then acknowledges the write. */
  private consume(): void {
    // After the server ended its side (idle), queries can no longer be answered: drop them.
    if (this.readEnded) this.input = EMPTY;
    while (!this.destroyed && this.pending < TCP_MAX_PIPELINE && this.readableLength < TCP_MAX_QUEUED_OUT) {
      if (this.input.length < 2) break;
      const len = this.input.readUInt16BE(0);
      if (len < HEADER_SIZE) {
        this.server.log('debug', 'dns: bad DNS-over-TCP length; closing the session', { length: len });
        this.destroy();
        return;
      }
      if (this.input.length < 2 + len) break;
      // A copy, so a small query does not keep a large chunk alive while it is resolved.
      const query = Buffer.from(this.input.subarray(2, 2 + len));
      this.input = this.input.length === 2 + len ? EMPTY : this.input.subarray(2 + len);
      this.start(query);
    }
    if (this.destroyed) return;
    if (!this.hasCompleteMessage() && this.writeCb) {
      if (this.input.length > 0) this.input = Buffer.from(this.input);
      const cb = this.writeCb;
      this.writeCb = undefined;
      cb();
    }
  }

  private hasCompleteMessage(): boolean {
    return this.input.length >= 2 && this.input.length >= 2 + this.input.readUInt16BE(0);
  }

  private start(query: Buffer): void {
    this.pending++;
    clearTimeout(this.idleTimer);
    const answer = this.server.answer(query, 'tcp');
    this.order = this.order
      .then(() => answer)
      .then((ans) => {
        this.pending--;
        if (ans && !this.destroyed && !this.readEnded) this.push(lengthPrefixed(ans));
        if (this.destroyed) return;
        this.consume();
        this.maybeFinish();
        if (this.pending === 0) this.armIdle();
      });
  }

  private maybeFinish(): void {
    if (!this.finalCb || this.pending > 0 || this.hasCompleteMessage()) return;
    const cb = this.finalCb;
    this.finalCb = undefined;
    clearTimeout(this.idleTimer);
    this.endReadable();
    cb();
  }

  private endReadable(): void {
    if (this.readEnded) return;
    this.readEnded = true;
    this.push(null);
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.readEnded) return;
    this.idleTimer = setTimeout(() => {
      if (this.pending > 0 || this.destroyed) return;
      this.server.log('debug', 'dns: closing an idle DNS-over-TCP session');
      this.endReadable();
    }, this.server.tcpIdleMs);
    this.idleTimer.unref();
  }
}
