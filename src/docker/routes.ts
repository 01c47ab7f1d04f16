import { ROUTES, type RouteSpec } from './route-table.js';

/**
 * dockerd's router, reproduced (docs/docker-proxy.md step 3): gorilla/mux over the decoded path,
 * with each route registered twice in table order, first as `/v{version:[0-9.]+}` + path, then
 * bare (moby api/server/server.go createMux). Templates compile as gorilla's do (regexp.go
 * newRouteRegexp): literal text quoted, `{name}` = `[^/]+`, `{name:pattern}` = the pattern, the
 * whole anchored. The first route whose path matches and whose method is the request's wins; a
 * path that matched only with other methods is a 405 in dockerd, here "no route".
 */
export type { RouteSpec, BodyKind } from './route-table.js';

export interface RouteMatch {
  route: RouteSpec;
  /** The API version in the path (undefined: none, dockerd uses its newest). */
  version: string | undefined;
  /** Route variables, decoded (latin1 byte strings). */
  vars: Record<string, string>;
}

interface Compiled {
  route: RouteSpec;
  versioned: boolean;
  re: RegExp;
  names: string[];
}

const VERSION_PATTERN = '[0-9.]+';

function compile(route: RouteSpec, versioned: boolean): Compiled {
  const names: string[] = [];
  let src = versioned ? `/v(${VERSION_PATTERN})` : '';
  let i = 0;
  const tpl = route.path;
  while (i < tpl.length) {
    const open = tpl.indexOf('{', i);
    if (open < 0) {
      src += quote(tpl.slice(i));
      break;
    }
    src += quote(tpl.slice(i, open));
    const close = tpl.indexOf('}', open);
    if (close < 0) throw new Error(`unbalanced braces in route ${tpl}`);
    const spec = tpl.slice(open + 1, close);
    const colon = spec.indexOf(':');
    names.push(colon < 0 ? spec : spec.slice(0, colon));
    src += `(${colon < 0 ? '[^/]+' : goPattern(spec.slice(colon + 1))})`;
    i = close + 1;
  }
  return { route, versioned, re: new RegExp(`^${src}$`), names };
}

/** A Go (RE2) pattern as a JavaScript one: Go's "." is any byte but \n (JavaScript's also skips \r). */
function goPattern(p: string): string {
  if (!/^(\.[*+]|\[[^\]]*\][+*])$/.test(p)) throw new Error(`route pattern ${p} is not one berth knows how to translate`);
  return p.startsWith('.') ? `[^\n]${p[1]}` : p;
}

function quote(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const COMPILED: Compiled[] = ROUTES.flatMap((r) => (r.unversioned ? [compile(r, false)] : [compile(r, true), compile(r, false)]));

/** The route dockerd would run for `method` and the decoded `path`, or undefined. */
export function matchRoute(method: string, path: string): RouteMatch | undefined {
  for (const c of COMPILED) {
    if (c.route.method !== '*' && c.route.method !== method) continue;
    const m = c.re.exec(path);
    if (!m) continue;
    const vars: Record<string, string> = {};
    const offset = c.versioned ? 2 : 1;
    c.names.forEach((n, k) => (vars[n] = m[offset + k]!));
    return { route: c.route, version: c.versioned ? m[1] : undefined, vars };
  }
  return undefined;
}

const VERSION_PREFIX = new RegExp(`^/v(${VERSION_PATTERN})/`);

/**
 * The API version a path names with dockerd's version pattern ("/v1.41/…" → "1.41"), whether or
 * not a route matches the rest; undefined if it names none.
 */
export function pathVersion(path: string): string | undefined {
  return VERSION_PREFIX.exec(path)?.[1];
}

/** The path dockerd would see for a match, built from its template (variables substituted). */
export function routePath(m: RouteMatch): string {
  let p = m.route.path.replace(/\{([^}:]+)(?::[^}]*)?\}/g, (_, name: string) => m.vars[name] ?? '');
  if (m.version !== undefined) p = `/v${m.version}${p}`;
  return p;
}

/**
 * Docker's versions.compare (api/types/versions): dot-separated parts compared as numbers, a
 * missing or non-numeric part counts as 0. Negative: a < b.
 */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.');
  const pb = b.split('.');
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = Number.parseInt(pa[i] ?? '0', 10) || 0;
    const y = Number.parseInt(pb[i] ?? '0', 10) || 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** Below this API version a container start could carry a HostConfig; the proxy refuses them. */
export const MIN_API_VERSION = '1.24';
