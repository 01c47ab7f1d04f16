/**
 * The request target as dockerd's Go server reads it (docs/docker-proxy.md step 2), and the
 * canonical form the proxy sends instead. Go decodes `url.URL.Path` from the target
 * (`url.ParseRequestURI`: origin form or absolute form; an invalid %-escape is an error) and
 * routes on the decoded path; gorilla/mux redirects a path that is not clean. Query strings are
 * split as `url.ParseQuery` does (a `;` is an error since Go 1.17, and dockerd's ParseForm then
 * answers 400). Decoded bytes are kept as latin1 strings (one char per byte), as Go keeps them in
 * byte strings, so the router's regular expressions see what Go's see.
 */

export interface Target {
  /** The decoded path, one latin1 char per byte. */
  path: string;
  /** Decoded query pairs in order (latin1, one char per byte). */
  query: [string, string][];
}

export type TargetResult = { ok: true; target: Target } | { ok: false; reason: string };

/** Percent-decoding of Go's unescape: every %XX (hex), nothing else; `plus` turns + into space. */
function unescape(s: string, plus: boolean): string | undefined {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '%') {
      const h = s.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(h)) return undefined;
      out += String.fromCharCode(Number.parseInt(h, 16));
      i += 2;
    } else if (c === '+' && plus) out += ' ';
    else out += c;
  }
  return out;
}

/** Go's path.Clean, plus gorilla/mux's rule that keeps a trailing slash (mux.go cleanPath). */
export function cleanPath(p: string): string {
  if (p === '') return '/';
  if (p[0] !== '/') p = `/${p}`;
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  let np = `/${out.join('/')}`;
  if (p.endsWith('/') && np !== '/') np += '/';
  return np;
}

export function parseTarget(raw: string): TargetResult {
  let rest = raw;
  const abs = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(rest);
  if (abs) {
    if (!/^https?:\/\//i.test(abs[0])) return { ok: false, reason: `a request target with scheme ${abs[0].split(':')[0]}` };
    rest = rest.slice(abs[0].length) || '/';
  }
  if (!rest.startsWith('/')) return { ok: false, reason: 'a request target that is not a path' };
  if (rest.includes('#')) return { ok: false, reason: 'a fragment in the request target' };
  const q = rest.indexOf('?');
  const rawPath = q < 0 ? rest : rest.slice(0, q);
  const rawQuery = q < 0 ? '' : rest.slice(q + 1);
  const path = unescape(rawPath, false);
  if (path === undefined) return { ok: false, reason: 'an invalid %-escape in the path' };
  if (cleanPath(path) !== path) return { ok: false, reason: 'a path that is not in canonical form (// or /./ or /../)' };
  const query: [string, string][] = [];
  if (rawQuery !== '') {
    for (const part of rawQuery.split('&')) {
      if (part.includes(';')) return { ok: false, reason: 'a ";" in the query (Go rejects it as a separator)' };
      if (part === '') continue;
      const eq = part.indexOf('=');
      const k = unescape(eq < 0 ? part : part.slice(0, eq), true);
      const v = unescape(eq < 0 ? '' : part.slice(eq + 1), true);
      if (k === undefined || v === undefined) return { ok: false, reason: 'an invalid %-escape in the query' };
      query.push([k, v]);
    }
  }
  return { ok: true, target: { path, query } };
}

const PATH_SAFE = /[A-Za-z0-9\-._~/:@!$&'()*+,;=]/;
const QUERY_SAFE = /[A-Za-z0-9\-._~]/;

function escapeBytes(s: string, safe: RegExp, space: string): string {
  let out = '';
  for (const c of s) {
    if (c === ' ') out += space;
    else if (c.length === 1 && c.charCodeAt(0) < 0x80 && safe.test(c)) out += c;
    else out += `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The target the proxy sends: the decoded path and query escaped again, so Go decodes the same bytes. */
export function formatTarget(path: string, query: readonly [string, string][]): string {
  const p = escapeBytes(path, PATH_SAFE, '%20');
  if (query.length === 0) return p;
  return `${p}?${query.map(([k, v]) => `${escapeBytes(k, QUERY_SAFE, '+')}=${escapeBytes(v, QUERY_SAFE, '+')}`).join('&')}`;
}

/** A decoded latin1 byte string as text (route variables: ids and names are UTF-8). */
export function bytesToText(s: string): string {
  return Buffer.from(s, 'latin1').toString('utf8');
}
