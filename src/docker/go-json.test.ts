import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeBody, goFieldFor, goFoldEqual, list, parseJson, serializeJson, str, struct, RAW } from './go-json.js';

/**
 * JSON as Go's encoding/json reads it, where reading it differently would let a request past the
 * proxy: key folding (K, ſ), one value only, repeated keys refused, unmodelled members kept.
 */

test('strict grammar: one value, no trailing data, no comments, no single quotes, bounded depth', () => {
  assert.equal(parseJson(Buffer.from(' {"a":[1,-2.5e3,true,false,null,"x"]} \n')).ok, true);
  for (const bad of ['{"a":1}{"b":2}', '{"a":1} x', "{'a':1}", '{"a":1,}', '[1,]', '{"a":01}', '{"a":.5}', '{"a":1e}', '/*c*/{}', '{"a":"\x01"}', '"\\x"', '', '{"a" 1}', 'nul']) {
    assert.equal(parseJson(Buffer.from(bad)).ok, false, JSON.stringify(bad));
  }
  assert.equal(parseJson(Buffer.from('['.repeat(300) + ']'.repeat(300))).ok, false, 'deeper than the bound');
  assert.equal(parseJson(Buffer.from('\ufeff{}')).ok, false, 'a BOM is not JSON whitespace (Go refuses it too)');
});

test('strings: escapes, surrogate pairs, lone surrogates and invalid UTF-8 become U+FFFD', () => {
  const p = parseJson(Buffer.from('["\\u0041\\n\\/", "\\ud83d\\ude00", "\\ud800x", "\\u212a"]'));
  assert.ok(p.ok);
  assert.deepEqual(p.ok && p.value.t === 'array' ? p.value.items.map((i) => (i.t === 'string' ? i.v : '')) : [], ['A\n/', '😀', '\ufffdx', '\u212a']);
  const raw = parseJson(Buffer.concat([Buffer.from('"a'), Buffer.from([0xff]), Buffer.from('b"')]));
  assert.ok(raw.ok && raw.value.t === 'string' && raw.value.v === 'a\ufffdb');
});

test("Go's case folding: ASCII case, the Kelvin sign for k and the long s for s, nothing else", () => {
  assert.equal(goFoldEqual('hostconfig', 'HostConfig'), true);
  assert.equal(goFoldEqual('HOSTCONFIG', 'HostConfig'), true);
  assert.equal(goFoldEqual('Ho\u017ftConfig', 'HostConfig'), true, 'ſ folds to s');
  assert.equal(goFoldEqual('\u212aernelMemory', 'KernelMemory'), true, 'K (U+212A) folds to k');
  assert.equal(goFoldEqual('Bind\u017f', 'Binds'), true);
  assert.equal(goFoldEqual('B\u0131nds', 'Binds'), false, 'dotless i does not fold to i');
  assert.equal(goFoldEqual('HostConfi', 'HostConfig'), false);
  assert.equal(goFoldEqual('HostConfigs', 'HostConfig'), false);
  assert.equal(goFoldEqual('Host_Config', 'HostConfig'), false);
  assert.equal(goFieldFor('binds', ['Binds', 'Mounts']), 'Binds');
  assert.equal(goFieldFor('Mounts', ['mounts', 'Mounts']), 'Mounts', 'an exact match wins over a fold');
});

const codec = struct({ HostConfig: struct({ Binds: list(str) }, { others: ['Privileged'] }) }, { others: ['Image'], deny: ['Binds'], denyReason: 'top-level' });

test('a key reaching a modelled field in any casing is decoded there; repeated ones are refused', () => {
  const ok = decodeBody(Buffer.from('{"hoſtconfig":{"BINDS":["/a:/b"]}}'), codec);
  assert.ok(ok.ok);
  assert.deepEqual(ok.ok ? ok.value.HostConfig?.Binds : undefined, ['/a:/b']);
  for (const body of ['{"HostConfig":{},"hostconfig":{}}', '{"HostConfig":{"Binds":[],"binds":[]}}', '{"HostConfig":{"Binds":[],"Bind\u017f":["/etc:/x"]}}']) {
    const r = decodeBody(Buffer.from(body), codec);
    assert.equal(r.ok, false, body);
    assert.match(r.ok ? '' : r.reason, /given twice/);
  }
});

test('denied fields are refused in any casing; modelled fields of the wrong type are refused', () => {
  for (const body of ['{"Binds":["/etc:/x"]}', '{"binds":[]}', '{"\u0062inds":null}']) assert.equal(decodeBody(Buffer.from(body), codec).ok, false, body);
  for (const body of ['{"HostConfig":[]}', '{"HostConfig":{"Binds":"x"}}', '{"HostConfig":{"Binds":[1]}}', '{"HostConfig":{"Binds":[{}]}}']) {
    assert.equal(decodeBody(Buffer.from(body), codec).ok, false, body);
  }
});

test('unmodelled members are kept in order and re-serialized; null modelled fields are dropped', () => {
  const r = decodeBody(Buffer.from('{"Image":"busybox","HostConfig":{"Privileged":true,"Binds":null,"Extra":{"x":[1,2.50]}},"Labels":{"a":"b"}}'), codec);
  assert.ok(r.ok);
  if (!r.ok) return;
  assert.deepEqual(r.value[RAW].map(([k]) => k), ['Image', 'Labels']);
  assert.equal(serializeJson(codec.encode(r.value)), '{"HostConfig":{"Privileged":true,"Extra":{"x":[1,2.50]}},"Image":"busybox","Labels":{"a":"b"}}');
});
