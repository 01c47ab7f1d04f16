import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { AGENT_API, MAX_AGENT_MESSAGE, MAX_PATHS, parseAgentError, type AgentMethod } from './agent-api.js';
import { ACTUATOR_UID_MIN, ACTUATOR_UID_MAX } from './actuator.js';
import { parseShareFailures } from './share-mounts.js';
import { Mux } from './mux.js';
import { linkPair } from './memory-link.js';
import { call, serveAgentApi } from './rpc.js';
import { BerthError } from '../util/errors.js';
import { fakeAgentHandlers } from '../../test/support/fake-agent.js';

/**
 * The agent's RPC table (docs/control.md "RPC"): the agent refuses params the table does not
 * accept, the host refuses results it does not accept, and an agent's error code reaches the host
 * only through the allow-list.
 */

const METHODS = Object.keys(AGENT_API) as AgentMethod[];

function refusedWith(code: string, ...words: string[]): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof BerthError, `a BerthError, got ${String(e)}`);
    assert.equal(e.code, code);
    for (const w of words) assert.ok(e.message.includes(w), `${JSON.stringify(e.message)} names ${w}`);
    return true;
  };
}

const params = <M extends AgentMethod>(m: M, raw: unknown) => AGENT_API[m].params(raw);
const result = <M extends AgentMethod>(m: M, raw: unknown) => AGENT_API[m].result(raw);

test('params with paths: an array of at most 256 absolute paths, each under 4096 characters, without NUL', () => {
  for (const m of ['fs.pin', 'fs.verify', 'fs.unpin'] as const) {
    const ok = Array.from({ length: MAX_PATHS }, (_, i) => `/p/${i}`);
    assert.deepEqual(params(m, { paths: ok }).paths, ok, m);
    assert.deepEqual(params(m, { paths: [] }).paths, []);
    assert.deepEqual(params(m, { paths: ['/' + 'x'.repeat(4094)] }).paths.length, 1, 'a path of 4095 characters');
    for (const hostile of [
      null,
      'paths',
      [['/a']],
      {},
      { paths: '/a' },
      { paths: { 0: '/a' } },
      { paths: [...ok, '/one-more'] },
      { paths: ['relative'] },
      { paths: [''] },
      { paths: ['/a\0b'] },
      { paths: ['/' + 'x'.repeat(4095)] },
      { paths: [7] },
      { paths: [null] },
    ]) {
      assert.throws(() => params(m, hostile), refusedWith('USAGE', m, 'paths'), `${m} ${JSON.stringify(hostile)?.slice(0, 80)}`);
    }
  }
  assert.equal(params('fs.pin', { paths: [], dropCaches: true }).dropCaches, true);
  assert.equal(params('fs.pin', { paths: [], dropCaches: 'yes' }).dropCaches, false, 'only true drops caches');
  assert.equal(params('fs.pin', { paths: [] }).dropCaches, false);
});

test('timeouts: a number in (0, 600000] ms is kept, anything else is the method\'s default', () => {
  const cases: Array<[AgentMethod, string, number]> = [
    ['fs.status', 'timeoutMs', 30_000],
    ['engine.restart', 'timeoutMs', 30_000],
    ['system.shutdown', 'engineTimeoutMs', 20_000],
  ];
  for (const [m, key, dflt] of cases) {
    const get = (raw: unknown) => (params(m, raw) as Record<string, unknown>)[key];
    assert.equal(get({ [key]: 1 }), 1, m);
    assert.equal(get({ [key]: 600_000 }), 600_000);
    for (const v of [0, -5, 600_001, 1e300, Infinity, NaN, '100', null, true]) assert.equal(get({ [key]: v }), dflt, `${m} ${String(v)}`);
    assert.equal(get(null), dflt);
    assert.equal(get([]), dflt);
  }
});

test('fs.remount: tickets is an object of strings', () => {
  assert.deepEqual(params('fs.remount', { tickets: { a: '00ff', b: 'x' } }), { tickets: { a: '00ff', b: 'x' } });
  const parsed = params('fs.remount', JSON.parse('{"tickets":{"__proto__":"t"}}'));
  assert.equal(Object.getPrototypeOf(parsed.tickets), Object.prototype, 'a "__proto__" share id stays a key');
  for (const hostile of [null, {}, { tickets: null }, { tickets: ['t'] }, { tickets: 'a=t' }, { tickets: { a: 1 } }, { tickets: { a: 't', b: { c: 'd' } } }]) {
    assert.throws(() => params('fs.remount', hostile), refusedWith('USAGE', 'fs.remount', 'tickets'), JSON.stringify(hostile));
  }
});

test('fs.act: a known op, an actuator uid where the op replays, absolute paths, a whole size', () => {
  const uid = ACTUATOR_UID_MIN;
  assert.deepEqual(params('fs.act', { op: 'create', uid, path: '/s/f', size: 0 }), { op: 'create', uid, path: '/s/f', size: 0 });
  assert.deepEqual(params('fs.act', { op: 'rename', uid: ACTUATOR_UID_MAX, path: '/s/a', to: '/s/b', extra: 1 }), { op: 'rename', uid: ACTUATOR_UID_MAX, path: '/s/a', to: '/s/b' });
  assert.deepEqual(params('fs.act', { op: 'pin', path: '/s/d' }), { op: 'pin', path: '/s/d' }, 'pin replays nothing: no uid needed');
  assert.deepEqual(params('fs.act', { op: 'unpin', path: '/s/d', cached: true }), { op: 'unpin', path: '/s/d', cached: true });
  assert.deepEqual(params('fs.act', { op: 'unpin', path: '/s/d', cached: 1 }), { op: 'unpin', path: '/s/d' }, 'only true is cached');
  const hostile: Array<[unknown, string]> = [
    [null, 'op'],
    [{ op: 'exec', uid, path: '/s/f' }, 'op'],
    [{ op: 'toString', uid, path: '/s/f' }, 'op'],
    [{ op: 'create', path: '/s/f' }, 'uid'],
    [{ op: 'create', uid: 0, path: '/s/f' }, 'uid'],
    [{ op: 'create', uid: ACTUATOR_UID_MIN - 1, path: '/s/f' }, 'uid'],
    [{ op: 'create', uid: ACTUATOR_UID_MAX + 1, path: '/s/f' }, 'uid'],
    [{ op: 'create', uid: uid + 0.5, path: '/s/f' }, 'uid'],
    [{ op: 'create', uid: String(uid), path: '/s/f' }, 'uid'],
    [{ op: 'pin', uid: 1000, path: '/s/d' }, 'uid'],
    [{ op: 'pin', uid: null, path: '/s/d' }, 'uid'],
    [{ op: 'create', uid, path: 'f' }, 'path'],
    [{ op: 'create', uid, path: '/s/\0' }, 'path'],
    [{ op: 'create', uid }, 'path'],
    [{ op: 'rename', uid, path: '/s/a', to: 'b' }, 'to'],
    [{ op: 'rename', uid, path: '/s/a', to: null }, 'to'],
    [{ op: 'modify', uid, path: '/s/f', size: -1 }, 'size'],
    [{ op: 'modify', uid, path: '/s/f', size: 1.5 }, 'size'],
    [{ op: 'modify', uid, path: '/s/f', size: 2 ** 53 }, 'size'],
    [{ op: 'modify', uid, path: '/s/f', size: '5' }, 'size'],
  ];
  for (const [raw, field] of hostile) assert.throws(() => params('fs.act', raw), refusedWith('USAGE', 'fs.act', field), JSON.stringify(raw));
});

test('every result that is not an object is refused, naming the method', () => {
  for (const m of METHODS) {
    for (const raw of [null, undefined, 5, 'ok', [], [{}]]) assert.throws(() => result(m, raw), refusedWith('MUX_PROTOCOL', m), `${m} ${JSON.stringify(raw)}`);
  }
});

test('fs.pin, fs.unpin, fs.act results', () => {
  assert.deepEqual(result('fs.pin', { pinned: { '/a': 3 }, total: 9, extra: 'x' }), { pinned: { '/a': 3 }, total: 9 });
  const many = Object.fromEntries(Array.from({ length: MAX_PATHS + 1 }, (_, i) => [`/p/${i}`, 1]));
  for (const [raw, field] of [
    [{ pinned: [], total: 0 }, 'pinned'],
    [{ pinned: many, total: 0 }, 'pinned'],
    [{ pinned: { relative: 1 }, total: 0 }, 'pinned'],
    [{ pinned: { '/a': -1 }, total: 0 }, 'pinned'],
    [{ pinned: { '/a': '1' }, total: 0 }, 'pinned'],
    [{ pinned: {} }, 'total'],
    [{ pinned: {}, total: 1.5 }, 'total'],
  ] as const) {
    assert.throws(() => result('fs.pin', raw), refusedWith('MUX_PROTOCOL', 'fs.pin', field), JSON.stringify(raw).slice(0, 80));
  }
  assert.deepEqual(result('fs.unpin', { total: 0 }), { total: 0 });
  assert.throws(() => result('fs.unpin', { total: -1 }), refusedWith('MUX_PROTOCOL', 'fs.unpin', 'total'));
  assert.deepEqual(result('fs.act', { anything: 1 }), {});
});

test('fs.status and fs.remount results: failures must be a list; entries as parseShareFailures keeps them', () => {
  for (const m of ['fs.status', 'fs.remount'] as const) {
    assert.throws(() => result(m, {}), refusedWith('MUX_PROTOCOL', m, 'failures'));
    assert.throws(() => result(m, { failures: 'x' }), refusedWith('MUX_PROTOCOL', m, 'failures'));
    const got = result(m, {
      failures: [
        { path: '/ok', reason: 'r' },
        { path: 'relative', reason: 'r' },
        { path: '/n', reason: 5 },
        { path: '/long', reason: 'x'.repeat(10_000) },
        ...Array.from({ length: 100 }, (_, i) => ({ path: `/many/${i}`, reason: 'r' })),
      ],
    });
    assert.deepEqual(got.failures.slice(0, 2), [
      { path: '/ok', reason: 'r' },
      { path: '/long', reason: 'x'.repeat(512) },
    ]);
    assert.equal(got.failures.length, 64);
    assert.deepEqual(parseShareFailures(got), got.failures, 'parsing the parsed result again changes nothing');
  }
});

test('fs.verify results: at most 256, absolute paths, a path or null, a known kind', () => {
  const ok = { results: [{ path: '/a', resolved: '/a', kind: 'dir' }, { path: '/b', resolved: '../x', kind: 'symlink' }, { path: '/c', resolved: null, kind: 'missing' }] };
  assert.deepEqual(result('fs.verify', ok), ok);
  const one = (r: Record<string, unknown>) => ({ results: [{ path: '/a', resolved: '/a', kind: 'dir', ...r }] });
  for (const [raw, field] of [
    [{}, 'results'],
    [{ results: {} }, 'results'],
    [{ results: Array.from({ length: MAX_PATHS + 1 }, () => ok.results[0]) }, 'results'],
    [{ results: [null] }, 'results[0]'],
    [one({ path: 'a' }), 'results[0].path'],
    [one({ path: '/a\0' }), 'results[0].path'],
    [one({ resolved: 5 }), 'results[0].resolved'],
    [one({ resolved: '/a\0b' }), 'results[0].resolved'],
    [one({ resolved: '/' + 'x'.repeat(5000) }), 'results[0].resolved'],
    [one({ resolved: undefined }), 'results[0].resolved'],
    [one({ kind: 'evil' }), 'results[0].kind'],
    [one({ kind: 'toString' }), 'results[0].kind'],
  ] as const) {
    assert.throws(() => result('fs.verify', raw), refusedWith('MUX_PROTOCOL', 'fs.verify', field), JSON.stringify(raw).slice(0, 80));
  }
});

test('system.info, system.shutdown and engine results', () => {
  const info = {
    bootId: 'b'.repeat(500),
    kernel: '6.1.0',
    uptimeSec: 3.5,
    memory: { totalBytes: 2 ** 40, freeBytes: 0 },
    loadavg: [0.1, 0.2, 0.3],
    dataDisk: { totalBytes: 10, freeBytes: 5 },
    bootTimes: { init: 0.5, 'bad key!': 1, root: 'x' },
    agentVersion: '1',
    imageKey: 'k',
    engine: { state: 'ready', since: 1, restarts: 0, evil: 'x' },
    streams: 4,
    extra: 'ignored',
  };
  const got = result('system.info', info);
  assert.equal(got.bootId.length, 64, 'strings are cut');
  assert.deepEqual(got.bootTimes, { init: 0.5 });
  assert.deepEqual(got.engine, { state: 'ready', restarts: 0 });
  assert.equal(got.streams, 4);
  assert.ok(!('extra' in got));
  assert.equal('dataDisk' in result('system.info', { ...info, dataDisk: undefined }), false, 'no data disk mounted');
  for (const [patch, field] of [
    [{ streams: -1 }, 'streams'],
    [{ streams: 1.5 }, 'streams'],
    [{ streams: '4' }, 'streams'],
    [{ streams: undefined }, 'streams'],
    [{ bootId: 5 }, 'bootId'],
    [{ uptimeSec: null }, 'uptimeSec'],
    [{ memory: [] }, 'memory'],
    [{ memory: { totalBytes: -1, freeBytes: 0 } }, 'memory.totalBytes'],
    [{ dataDisk: { totalBytes: 1 } }, 'dataDisk.freeBytes'],
    [{ loadavg: new Array(4).fill(0) }, 'loadavg'],
    [{ loadavg: ['1'] }, 'loadavg'],
  ] as const) {
    assert.throws(() => result('system.info', { ...info, ...patch }), refusedWith('MUX_PROTOCOL', 'system.info', field), JSON.stringify(patch));
  }

  assert.deepEqual(result('system.shutdown', { engineForced: true, unmounted: false, x: 1 }), { engineForced: true, unmounted: false });
  assert.deepEqual(result('system.shutdown', {}), {});
  assert.throws(() => result('system.shutdown', { engineForced: 'yes' }), refusedWith('MUX_PROTOCOL', 'system.shutdown', 'engineForced'));
  assert.throws(() => result('system.shutdown', { unmounted: 1 }), refusedWith('MUX_PROTOCOL', 'system.shutdown', 'unmounted'));

  assert.deepEqual(result('engine.restart', { state: 'failed', detail: 'd'.repeat(10_000), since: 1, restarts: 2 }), { state: 'failed', detail: 'd'.repeat(8192), restarts: 2 });
  assert.deepEqual(result('engine.status', { state: 'exploded' }), { state: 'starting' }, 'an unknown state is not taken as ready');
});

test('an agent error: only USAGE and ENGINE_FAILED keep their code; the message is bounded text without controls', () => {
  const keep = parseAgentError('fs.act', { code: 'USAGE', message: 'fs.act: path must be absolute.' });
  assert.equal(keep.code, 'USAGE');
  assert.equal(keep.message, 'The guest agent failed fs.act: fs.act: path must be absolute.');
  assert.equal(parseAgentError('engine.restart', { code: 'ENGINE_FAILED', message: 'x' }).code, 'ENGINE_FAILED');
  for (const code of ['VM_RUNNING', 'INTERNAL', 'ENOENT', 'TIMEOUT', '__proto__', 'constructor', 'toString', 'usage', 5, null, undefined]) {
    const e = parseAgentError('fs.pin', { code, message: 'm' });
    assert.equal(e.code, 'AGENT_ERROR', String(code));
    assert.equal(e.details?.guestCode, typeof code === 'string' ? code : '');
  }
  assert.equal(parseAgentError('fs.pin', undefined).code, 'AGENT_ERROR');
  assert.equal(parseAgentError('fs.pin', 'boom').message, 'The guest agent failed fs.pin: unknown error');

  const hostile = parseAgentError('fs.pin', { code: 'EACCES\x1b[2J', message: `red \x1b[31malert\x1b[0m\r\nline two \u202eevil\u0000 ${'y'.repeat(1_000_000)}`, hint: 'run rm -rf ~' });
  assert.equal(hostile.code, 'AGENT_ERROR');
  assert.ok(!/[\x00-\x1f\x7f-\x9f\u202e]/.test(hostile.message), 'no control characters');
  assert.ok(hostile.message.startsWith('The guest agent failed fs.pin: red [31malert [0m line two evil yyy'), hostile.message.slice(0, 80));
  assert.ok(hostile.message.length <= 'The guest agent failed fs.pin: '.length + MAX_AGENT_MESSAGE, `bounded: ${hostile.message.length}`);
  assert.ok(hostile.message.endsWith('…'));
  assert.ok(!/rm -rf/.test(hostile.hint ?? ''), 'the guest\'s hint is not shown');
  assert.ok(!/[\x00-\x1f]/.test(String(hostile.details?.guestCode)));
});

test('a call over a real Mux pair: typed result, refused params, handler errors, a result the host refuses', async () => {
  const [a, b] = linkPair({ split: true });
  const host = new Mux(a, { role: 'host', helloIntervalMs: 20 });
  const guest = new Mux(b, { role: 'guest', helloIntervalMs: 20 });
  await once(host, 'session');
  const calls: Array<[string, unknown]> = [];
  const handlers = fakeAgentHandlers(calls);
  serveAgentApi(guest, {
    ...handlers,
    'fs.act': async () => {
      throw Object.assign(new Error(`permission denied\x1b]0;pwned\x07 ${'z'.repeat(5000)}`), { code: 'EACCES', hint: 'trust me' });
    },
    'engine.restart': async () => {
      throw Object.assign(new Error('dockerd exited'), { code: 'ENGINE_FAILED' });
    },
    'fs.verify': async (p) => ({ results: p.paths.map((path) => ({ path: path.slice(1), resolved: '/etc', kind: 'dir' as const })) }),
  });

  const pinned = await call(host, 'fs.pin', { paths: ['/s/a', '/s/b'], dropCaches: true }, 1000);
  assert.deepEqual(pinned, { pinned: { '/s/a': 1, '/s/b': 1 }, total: 2 });
  assert.deepEqual(calls, [['fs.pin', { paths: ['/s/a', '/s/b'], dropCaches: true }]]);
  assert.deepEqual(await call(host, 'system.shutdown', { engineTimeoutMs: 1e9 }, 1000), { engineForced: false, unmounted: true });
  assert.deepEqual(calls[1], ['system.shutdown', { engineTimeoutMs: 20_000 }], 'the handler got the checked params');

  await assert.rejects(call(host, 'fs.unpin', { paths: ['relative'] }, 1000), refusedWith('USAGE', 'fs.unpin', 'paths'));
  assert.equal(calls.length, 2, 'refused params never reach the handler');

  await assert.rejects(call(host, 'fs.act', { op: 'pin', path: '/s/a' }, 1000), (e: unknown) => {
    assert.ok(e instanceof BerthError);
    assert.equal(e.code, 'AGENT_ERROR');
    assert.equal(e.details?.guestCode, 'EACCES');
    assert.ok(e.message.startsWith('The guest agent failed fs.act: permission denied ]0;pwned zzz'), e.message.slice(0, 80));
    assert.ok(e.message.length < 1100);
    assert.notEqual(e.hint, 'trust me');
    return true;
  });
  await assert.rejects(call(host, 'engine.restart', { timeoutMs: 1000 }, 1000), refusedWith('ENGINE_FAILED', 'dockerd exited'));
  await assert.rejects(call(host, 'fs.verify', { paths: ['/s/a'] }, 1000), refusedWith('MUX_PROTOCOL', 'fs.verify', 'results[0].path'));
  host.close();
});
