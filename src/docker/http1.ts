/**
 * HTTP/1.1 message framing for the Docker API proxy (docs/docker-proxy.md step 1): the only code
 * that reads HTTP from a docker client or from the engine. Heads are parsed with bounds into
 * typed values; anything RFC 9112 lets a server reject and that two parsers could read
 * differently (the request-smuggling family) is refused: bare LF or CR, obs-fold, whitespace
 * before a colon, control characters in a value, repeated or list-valued Content-Length,
 * Transfer-Encoding with Content-Length, a transfer coding other than a lone `chunked`, a missing
 * or repeated Host on HTTP/1.1. Bodies are walked by `BodyReader`, which hands out the decoded
 * payload so the proxy can frame it again itself.
 */

export const MAX_HEAD = 64 * 1024;
export const MAX_HEADERS = 100;

export interface RequestHead {
  method: string;
  target: string;
  version: '1.0' | '1.1';
  /** Field names in lower case, in order, repeats kept. */
  headers: [string, string][];
}

export interface ResponseHead {
  status: number;
  version: '1.0' | '1.1';
  headers: [string, string][];
}

export type HeadResult<H> = { kind: 'incomplete' } | { kind: 'error'; reason: string } | { kind: 'head'; head: H; used: number };

export type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'until-close' };

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A field value: visible ASCII, obs-text, SP and HTAB; no other control character. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const CRLFCRLF = Buffer.from('\r\n\r\n');

/** The value of a field that may appear once; undefined if absent, null if repeated. */
export function single(headers: readonly [string, string][], name: string): string | undefined | null {
  let found: string | undefined;
  for (const [n, v] of headers) {
    if (n !== name) continue;
    if (found !== undefined) return null;
    found = v;
  }
  return found;
}

/** All values of a field joined as a list (RFC 9110 §5.3). */
export function list(headers: readonly [string, string][], name: string): string[] {
  return headers
    .filter(([n]) => n === name)
    .flatMap(([, v]) => v.split(','))
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function splitHead(buf: Buffer): { kind: 'incomplete' } | { kind: 'error'; reason: string } | { kind: 'lines'; lines: string[]; used: number } {
  const end = buf.indexOf(CRLFCRLF);
  if (end < 0) {
    if (buf.length > MAX_HEAD) return { kind: 'error', reason: `message head larger than ${MAX_HEAD} bytes` };
    // A bare LF can be refused before the head is complete.
    const lf = buf.indexOf(0x0a);
    if (lf === 0 || (lf > 0 && buf[lf - 1] !== 0x0d)) return { kind: 'error', reason: 'a line ends in a bare LF' };
    return { kind: 'incomplete' };
  }
  if (end + 4 > MAX_HEAD) return { kind: 'error', reason: `message head larger than ${MAX_HEAD} bytes` };
  const text = buf.toString('latin1', 0, end);
  const lines = text.split('\r\n');
  if (lines.some((l) => l.includes('\n') || l.includes('\r'))) return { kind: 'error', reason: 'a bare LF or CR in the head' };
  if (lines.length - 1 > MAX_HEADERS) return { kind: 'error', reason: `more than ${MAX_HEADERS} header fields` };
  return { kind: 'lines', lines, used: end + 4 };
}

function parseFields(lines: readonly string[]): [string, string][] | string {
  const out: [string, string][] = [];
  for (const line of lines) {
    if (line.startsWith(' ') || line.startsWith('\t')) return 'obs-fold (a header line that starts with whitespace)';
    const i = line.indexOf(':');
    if (i <= 0) return 'a header line without a name';
    const name = line.slice(0, i);
    if (!TOKEN.test(name)) return `a malformed header name ${JSON.stringify(name.slice(0, 40))}`;
    const value = line.slice(i + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (!FIELD_VALUE.test(value)) return `a control character in the value of ${name}`;
    out.push([name.toLowerCase(), value]);
  }
  return out;
}

/** Finds and parses one request head at the start of `buf`. */
export function parseRequestHead(buf: Buffer): HeadResult<RequestHead> {
  const s = splitHead(buf);
  if (s.kind !== 'lines') return s;
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP\/1\.([01])$/.exec(s.lines[0]!);
  if (!m) return { kind: 'error', reason: 'a malformed request line' };
  const headers = parseFields(s.lines.slice(1));
  if (typeof headers === 'string') return { kind: 'error', reason: headers };
  const head: RequestHead = { method: m[1]!, target: m[2]!, version: m[3] === '1' ? '1.1' : '1.0', headers };
  const host = single(headers, 'host');
  if (host === null) return { kind: 'error', reason: 'more than one Host header' };
  if (host === undefined && head.version === '1.1') return { kind: 'error', reason: 'an HTTP/1.1 request without a Host header' };
  return { kind: 'head', head, used: s.used };
}

/** Finds and parses one response head (from the engine: guest data, bounded the same way). */
export function parseResponseHead(buf: Buffer): HeadResult<ResponseHead> {
  const s = splitHead(buf);
  if (s.kind !== 'lines') return s;
  const m = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/.exec(s.lines[0]!);
  if (!m) return { kind: 'error', reason: 'a malformed status line' };
  const headers = parseFields(s.lines.slice(1));
  if (typeof headers === 'string') return { kind: 'error', reason: headers };
  return { kind: 'head', head: { status: Number(m[2]), version: m[1] === '1' ? '1.1' : '1.0', headers }, used: s.used };
}

function lengthAndCoding(headers: readonly [string, string][]): { cl: number | undefined; chunked: boolean } | string {
  const cls = headers.filter(([n]) => n === 'content-length');
  const tes = headers.filter(([n]) => n === 'transfer-encoding');
  if (cls.length > 1) return 'repeated Content-Length';
  let cl: number | undefined;
  if (cls.length === 1) {
    if (!/^\d{1,15}$/.test(cls[0]![1])) return 'a malformed Content-Length';
    cl = Number(cls[0]![1]);
  }
  if (tes.length === 0) return { cl, chunked: false };
  if (cl !== undefined) return 'both Transfer-Encoding and Content-Length';
  const codings = list(headers, 'transfer-encoding');
  if (codings.length !== 1 || codings[0]!.toLowerCase() !== 'chunked') return `unsupported Transfer-Encoding ${JSON.stringify(codings.join(', '))}`;
  return { cl, chunked: true };
}

/** How a request's body is delimited (RFC 9112 §6.3). */
export function requestFraming(head: RequestHead): BodyFraming | { kind: 'error'; reason: string } {
  const r = lengthAndCoding(head.headers);
  if (typeof r === 'string') return { kind: 'error', reason: r };
  if (r.chunked) {
    if (head.version === '1.0') return { kind: 'error', reason: 'Transfer-Encoding in an HTTP/1.0 request' };
    return { kind: 'chunked' };
  }
  if (r.cl !== undefined && r.cl > 0) return { kind: 'length', length: r.cl };
  return { kind: 'none' };
}

/** How a response's body is delimited; `method` is the request's. */
export function responseFraming(head: ResponseHead, method: string): BodyFraming | { kind: 'error'; reason: string } {
  if (method === 'HEAD' || head.status === 204 || head.status === 304 || (head.status >= 100 && head.status < 200)) return { kind: 'none' };
  const r = lengthAndCoding(head.headers);
  if (typeof r === 'string') return { kind: 'error', reason: r };
  if (r.chunked) return { kind: 'chunked' };
  if (r.cl !== undefined) return r.cl > 0 ? { kind: 'length', length: r.cl } : { kind: 'none' };
  return { kind: 'until-close' };
}

/** Largest chunk the reader accepts (15 hex digits would overflow a safe integer). */
const MAX_CHUNK_SIZE = 2 ** 48;

/**
 * Walks a body as it streams in. `push(chunk)` returns how many bytes of `chunk` belong to the
 * body (the rest is the next message) and calls `onData` with the decoded payload. Chunk lines
 * must end in CRLF; chunk extensions and trailer fields are read and dropped.
 */
export class BodyReader {
  private left: number;
  private state: 'size' | 'data' | 'data-crlf' | 'trailer' = 'size';
  private line = '';
  done: boolean;
  error: string | undefined;

  constructor(
    private readonly framing: BodyFraming,
    private readonly onData: (b: Buffer) => void,
  ) {
    this.left = framing.kind === 'length' ? framing.length : 0;
    this.done = framing.kind === 'none';
  }

  push(chunk: Buffer): number {
    if (this.done) return 0;
    switch (this.framing.kind) {
      case 'length': {
        const n = Math.min(this.left, chunk.length);
        if (n > 0) this.onData(chunk.subarray(0, n));
        this.left -= n;
        if (this.left === 0) this.done = true;
        return n;
      }
      case 'until-close':
        if (chunk.length > 0) this.onData(chunk);
        return chunk.length;
      case 'chunked':
        return this.chunked(chunk);
      default:
        return 0;
    }
  }

  private chunked(chunk: Buffer): number {
    let i = 0;
    while (i < chunk.length && !this.done) {
      if (this.state === 'data') {
        const n = Math.min(this.left, chunk.length - i);
        this.onData(chunk.subarray(i, i + n));
        this.left -= n;
        i += n;
        if (this.left === 0) this.state = 'data-crlf';
        continue;
      }
      const nl = chunk.indexOf(0x0a, i);
      const end = nl < 0 ? chunk.length : nl + 1;
      this.line += chunk.toString('latin1', i, end);
      i = end;
      if (this.line.length > 4096) return this.fail('a chunk line longer than 4096 bytes');
      if (nl < 0) break;
      if (!this.line.endsWith('\r\n') || this.line.slice(0, -2).includes('\r')) return this.fail('a chunk line that does not end in CRLF');
      const line = this.line.slice(0, -2);
      this.line = '';
      if (this.state === 'data-crlf') {
        if (line !== '') return this.fail('no CRLF after chunk data');
        this.state = 'size';
      } else if (this.state === 'size') {
        const m = /^([0-9a-fA-F]{1,15})(?:[ \t]*;[\t\x20-\x7e]*)?$/.exec(line);
        if (!m) return this.fail('a malformed chunk size');
        this.left = Number.parseInt(m[1]!, 16);
        if (this.left > MAX_CHUNK_SIZE) return this.fail('a chunk larger than 2^48 bytes');
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') this.done = true;
      else if (typeof parseFields([line]) === 'string') return this.fail('a malformed trailer field');
    }
    return i;
  }

  private fail(reason: string): number {
    this.error = reason;
    this.done = true;
    return 0;
  }
}

/** One chunk of a chunked body (an empty buffer makes the last chunk). */
export function encodeChunk(data: Buffer): Buffer {
  if (data.length === 0) return Buffer.from('0\r\n\r\n');
  return Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n')]);
}
