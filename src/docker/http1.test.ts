import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BodyReader, parseRequestHead, requestFraming, type RequestHead } from './http1.js';

/** Request framing that two parsers could read differently is refused (RFC 9112, request smuggling). */

function head(raw: string): ReturnType<typeof parseRequestHead> {
  return parseRequestHead(Buffer.from(raw, 'latin1'));
}

test('a well-formed request head parses, field names lower-cased, repeats kept', () => {
  const r = head('POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\n{}');
  assert.equal(r.kind, 'head');
  if (r.kind !== 'head') return;
  assert.equal(r.head.method, 'POST');
  assert.equal(r.head.target, '/v1.41/containers/create');
  assert.deepEqual(r.head.headers.filter(([n]) => n === 'x-a'), [['x-a', '1'], ['x-a', '2']]);
  assert.equal(r.used, r.kind === 'head' ? Buffer.byteLength('POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\n') : 0);
});

test('malformed heads are refused: bare LF or CR, obs-fold, space before a colon, control characters, bad request lines, Host rules', () => {
  for (const raw of [
    'GET / HTTP/1.1\nHost: d\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\nX: y\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\rX: y\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\r\nX: a\r\n  folded\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\r\nContent-Length : 5\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\r\nX: a\x00b\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: d\r\nX: a\x7fb\r\n\r\n',
    'GET  / HTTP/1.1\r\nHost: d\r\n\r\n',
    'GET / HTTP/2.0\r\nHost: d\r\n\r\n',
    'G(T / HTTP/1.1\r\nHost: d\r\n\r\n',
    'GET / HTTP/1.1\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
    '\r\nGET / HTTP/1.1\r\nHost: d\r\n\r\n',
  ]) {
    assert.equal(head(raw).kind, 'error', JSON.stringify(raw));
  }
  assert.equal(head('GET / HTTP/1.0\r\n\r\n').kind, 'head', 'HTTP/1.0 needs no Host');
  assert.equal(head('GET / HTTP/1.1\r\nHost: d\r\n').kind, 'incomplete');
  assert.equal(head('GET / HTTP/1.1\nHost').kind, 'error', 'a bare LF is refused before the head is complete');
});

function framing(fields: string, version = '1.1') {
  const r = head(`POST /x HTTP/${version}\r\nHost: d\r\n${fields}\r\n`);
  assert.equal(r.kind, 'head');
  return requestFraming((r as { head: RequestHead }).head);
}

test('body framing: Content-Length, chunked; conflicting or unknown framings refused', () => {
  assert.deepEqual(framing('Content-Length: 12\r\n'), { kind: 'length', length: 12 });
  assert.deepEqual(framing('Content-Length: 0\r\n'), { kind: 'none' });
  assert.deepEqual(framing(''), { kind: 'none' });
  assert.deepEqual(framing('Transfer-Encoding: Chunked\r\n'), { kind: 'chunked' });
  for (const f of [
    'Content-Length: 2\r\nContent-Length: 2\r\n',
    'Content-Length: 2, 2\r\n',
    'Content-Length: +2\r\n',
    'Content-Length: 2\r\nTransfer-Encoding: chunked\r\n',
    'Transfer-Encoding: gzip, chunked\r\n',
    'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n',
    'Transfer-Encoding: identity\r\n',
  ]) {
    assert.equal(framing(f).kind, 'error', f);
  }
  assert.equal(framing('Transfer-Encoding: chunked\r\n', '1.0').kind, 'error', 'chunked in HTTP/1.0');
});

function readChunked(raw: string): { data: string; used: number; error?: string } {
  let data = '';
  const r = new BodyReader({ kind: 'chunked' }, (b) => (data += b.toString('latin1')));
  const used = r.push(Buffer.from(raw, 'latin1'));
  return { data, used, ...(r.error ? { error: r.error } : {}) };
}

test('chunked bodies: decoded across extensions and trailers; bare LF and bad sizes refused', () => {
  assert.deepEqual(readChunked('3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nNEXT'), { data: 'abcde', used: 34 });
  for (const bad of ['3\nabc\r\n0\r\n\r\n', '3\r\nabc\n0\r\n\r\n', 'zz\r\n', '-1\r\n', '3\r\nabcX\r\n0\r\n\r\n', '1234567890abcdef0\r\n', '0\r\nbad trailer\r\n\r\n']) {
    assert.ok(readChunked(bad).error, JSON.stringify(bad));
  }
});
