import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cleanPath, formatTarget, parseTarget } from './target.js';
import { compareVersions, matchRoute, pathVersion, routePath } from './routes.js';

/**
 * The proxy routes as dockerd routes: the decoded path, an optional version part that is any run
 * of digits and dots, gorilla/mux's first match in registration order. Each case is a target that
 * reached containers/create unchecked when the proxy matched the raw bytes.
 */

function route(method: string, raw: string) {
  const t = parseTarget(raw);
  assert.ok(t.ok, raw);
  return t.ok ? matchRoute(method, t.target.path) : undefined;
}

test('every spelling dockerd accepts for containers/create is routed there', () => {
  for (const raw of ['/containers/create', '/v1.41/containers/create', '/v1.41.0/containers/create', '/v1..41/containers/create', '/v1.41/containers/cr%65ate', '/v1.41/%63ontainers/create', 'http://docker/v1.41/containers/create', 'HTTP://x:1/containers/create?name=a']) {
    assert.equal(route('POST', raw)?.route.body, 'container-create', raw);
  }
  assert.equal(route('POST', '/v1.41.0/containers/create')?.version, '1.41.0');
});

test('targets Go would not route the same way are refused: unclean paths, bad escapes, semicolons, other schemes', () => {
  for (const raw of ['//containers/create', '/v1.41/./containers/create', '/v1.41/x/../containers/create', '/v1.41/containers/create%2F..', '/containers/%zz', '/containers/json?a=1;b=2', 'ftp://d/containers/create', 'containers/create', '*', '/containers/json#x', '/containers/json?x=%G0']) {
    assert.equal(parseTarget(raw).ok, false, raw);
  }
  assert.equal(cleanPath('/a/b/'), '/a/b/', 'gorilla keeps a trailing slash');
});

test('registration order decides overlapping routes, as in dockerd', () => {
  assert.equal(route('DELETE', '/containers/x/checkpoints/y')?.route.path, '/containers/{name}/checkpoints/{checkpoint}');
  assert.equal(route('DELETE', '/containers/x/y')?.route.path, '/containers/{name:.*}');
  const start = route('POST', '/v1.43/containers/a%2Fexec/start');
  assert.equal(start?.route.path, '/containers/{name:.*}/start');
  assert.equal(start?.vars.name, 'a/exec');
  assert.equal(route('POST', '/exec/abc/start')?.route.hook, 'exec');
  assert.equal(route('GET', '/networks/')?.route.path, '/networks/');
  assert.equal(route('GET', '/v1.41/debug/vars'), undefined, 'the debug routes have no version prefix');
  assert.equal(route('POST', '/debug/pprof/heap')?.route.path, '/debug/pprof/{name}');
  assert.equal(route('GET', '/containers/create'), undefined, 'a path that matches only with another method');
  assert.equal(route('post', '/containers/create'), undefined, 'methods are case-sensitive');
  assert.equal(route('POST', '/containers/a%0Ab/start'), undefined, '"." in Go does not match a newline');
});

test('the forwarded target decodes to the same bytes, so dockerd routes it the same way', () => {
  for (const raw of ['/v1.41/containers/a%2Fb/start?x=1&x=2&y=a+b%26c', '/images/%C3%A9t%C3%A9/json', '/containers/%00%25%3F/json?k=%FF']) {
    const t = parseTarget(raw);
    assert.ok(t.ok);
    if (!t.ok) continue;
    const again = parseTarget(formatTarget(t.target.path, t.target.query));
    assert.deepEqual(again, t, raw);
  }
  const m = route('POST', '/v1.43/containers/x/start');
  assert.equal(m && routePath(m), '/v1.43/containers/x/start');
});

test("versions compare as dockerd's versions.compare does", () => {
  assert.ok(compareVersions('1.23', '1.24') < 0);
  assert.ok(compareVersions('1.9', '1.24') < 0);
  assert.equal(compareVersions('1.24.0', '1.24'), 0);
  assert.ok(compareVersions('1.41', '1.24') > 0);
  assert.ok(compareVersions('.', '1.24') < 0);
});

test("the API version of a path is read with the router's version pattern, with or without a route", () => {
  assert.equal(pathVersion('/v1.41/containers/json'), '1.41');
  assert.equal(pathVersion('/v1.23/no/such/endpoint'), '1.23');
  assert.equal(pathVersion('/v./x'), '.');
  assert.equal(pathVersion('/containers/json'), undefined);
  assert.equal(pathVersion('/v1.41'), undefined);
  assert.equal(pathVersion('/vx/containers/json'), undefined);
  const m = route('GET', '/v1.41/containers/json');
  assert.equal(m?.version, pathVersion('/v1.41/containers/json'));
});
