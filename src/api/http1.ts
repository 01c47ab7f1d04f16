/**
 * HTTP/1.1 message framing for the Docker API proxy (docs/files.md "Mount checks"): the only code
 * that reads HTTP from a docker client or from the engine. It finds message heads, parses them
 * with bounds into typed values, and tells where each body ends (RFC 9112 §6: Content-Length,
 * chunked, or none for a request without either), so the proxy can inspect a few requests and copy
 * every other byte unchanged.
 */

export const MAX_HEAD = 64 * 1024;

export interface MessageHead {
  /** Request: method and target; response: status. */
  method: string;
  target: string;
  status: number;
  headers: Map<string, string>;
  /** The head exactly as received (start line, headers, blank line). */
  raw: Buffer;
}

export type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'until-close' };

export type HeadResult = { kind: 'incomplete' } | { kind: 'error'; reason: string } | { kind: 'head'; head: MessageHead; used: number };

const CRLFCRLF = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Finds and parses one message head at the start of `buf`. */
export function parseHead(buf: Buffer, kind: 'request' | 'response'): HeadResult {
  const end = buf.indexOf(CRLFCRLF);
  if (end < 0) return buf.length > MAX_HEAD ? { kind: 'error', reason: `message head larger than ${MAX_HEAD} bytes` } : { kind: 'incomplete' };
  if (end + 4 > MAX_HEAD) return { kind: 'error', reason: `message head larger than ${MAX_HEAD} bytes` };
  const text = buf.toString('latin1', 0, end);
  const lines = text.split('\r\n');
  const start = lines[0]!;
  const head: MessageHead = { method: '', target: '', status: 0, headers: new Map(), raw: buf.subarray(0, end + 4) };
  if (kind === 'request') {
    const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(start);
    if (!m) return { kind: 'error', reason: 'malformed request line' };
    head.method = m[1]!;
    head.target = m[2]!;
  } else {
    const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(start);
    if (!m) return { kind: 'error', reason: 'malformed status line' };
    head.status = Number(m[1]);
  }
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) return { kind: 'error', reason: 'malformed header line' };
    const name = line.slice(0, i).toLowerCase();
    if (!TOKEN.test(name)) return { kind: 'error', reason: 'malformed header name' };
    const value = line.slice(i + 1).trim();
    // Repeated framing headers are a request-smuggling vector (RFC 9112 §6.3): refuse them.
    if ((name === 'content-length' || name === 'transfer-encoding') && head.headers.has(name)) return { kind: 'error', reason: `repeated ${name}` };
    head.headers.set(name, head.headers.has(name) ? `${head.headers.get(name)}, ${value}` : value);
  }
  return { kind: 'head', head, used: end + 4 };
}

/** How the body after `head` is delimited (RFC 9112 §6.3). */
export function bodyFraming(head: MessageHead, kind: 'request' | 'response', requestMethod = ''): BodyFraming | { kind: 'error'; reason: string } {
  const te = head.headers.get('transfer-encoding');
  const cl = head.headers.get('content-length');
  if (kind === 'response' && (requestMethod === 'HEAD' || head.status === 204 || head.status === 304 || (head.status >= 100 && head.status < 200))) return { kind: 'none' };
  if (te !== undefined) {
    if (cl !== undefined) return { kind: 'error', reason: 'both Transfer-Encoding and Content-Length' };
    if (te.toLowerCase().split(',').map((s) => s.trim()).at(-1) !== 'chunked') return kind === 'request' ? { kind: 'error', reason: `unsupported Transfer-Encoding ${te}` } : { kind: 'until-close' };
    return { kind: 'chunked' };
  }
  if (cl !== undefined) {
    if (!/^\d{1,15}$/.test(cl)) return { kind: 'error', reason: 'malformed Content-Length' };
    return { kind: 'length', length: Number(cl) };
  }
  return kind === 'request' ? { kind: 'none' } : { kind: 'until-close' };
}

/**
 * Walks a body as it streams in: `push(chunk)` returns how many bytes of the chunk belong to the
 * body (the rest is the next message) and appends the decoded payload to `decoded` when asked.
 */
export class BodyReader {
  private left: number;
  private chunkState: 'size' | 'data' | 'data-crlf' | 'trailer' = 'size';
  private line = '';
  done: boolean;
  error: string | undefined;

  constructor(
    private readonly framing: BodyFraming,
    private readonly decoded?: Buffer[],
  ) {
    this.left = framing.kind === 'length' ? framing.length : 0;
    this.done = framing.kind === 'none' || (framing.kind === 'length' && framing.length === 0);
  }

  push(chunk: Buffer): number {
    if (this.done) return 0;
    switch (this.framing.kind) {
      case 'length': {
        const n = Math.min(this.left, chunk.length);
        this.decoded?.push(chunk.subarray(0, n));
        this.left -= n;
        if (this.left === 0) this.done = true;
        return n;
      }
      case 'until-close':
        this.decoded?.push(chunk);
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
      if (this.chunkState === 'data') {
        const n = Math.min(this.left, chunk.length - i);
        this.decoded?.push(chunk.subarray(i, i + n));
        this.left -= n;
        i += n;
        if (this.left === 0) this.chunkState = 'data-crlf';
        continue;
      }
      const nl = chunk.indexOf(0x0a, i);
      const end = nl < 0 ? chunk.length : nl + 1;
      this.line += chunk.toString('latin1', i, end);
      i = end;
      if (this.line.length > 4096) return this.fail('chunk line too long');
      if (nl < 0) break;
      const line = this.line.replace(/\r?\n$/, '');
      this.line = '';
      if (this.chunkState === 'data-crlf') {
        if (line !== '') return this.fail('missing CRLF after chunk data');
        this.chunkState = 'size';
      } else if (this.chunkState === 'size') {
        const m = /^([0-9a-fA-F]{1,12})(?:;.*)?$/.exec(line);
        if (!m) return this.fail('malformed chunk size');
        this.left = Number.parseInt(m[1]!, 16);
        this.chunkState = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') this.done = true; // end of trailers
    }
    return i;
  }

  private fail(reason: string): number {
    this.error = reason;
    this.done = true;
    return 0;
  }
}
