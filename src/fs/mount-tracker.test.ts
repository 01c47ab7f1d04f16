import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { MountTracker, type MountTrackerDeps } from './mount-tracker.js';
import { silentLogger } from '../util/log.js';
import type { VerifyResult } from '../control/agent-api.js';

/**
 * Which shared folders containers bind-mount (docs/files.md "Change events"): only bind sources
 * inside a share are pinned and watched, each folder once however many containers mount it, and
 * nothing the engine or the agent does makes `prepare`/`update` throw.
 */

interface Fake {
  deps: MountTrackerDeps;
  inspects: Map<string, unknown>;
  calls: string[];
  pins: string[][];
  unpins: string[][];
  watches: string[][];
  fail: { inspect?: 'throw' | 'reject'; pin?: 'throw' | 'reject'; unpin?: 'reject'; verify?: 'reject' };
  /** What the VM resolves a path to (fs.verify); default: itself, a folder. */
  vm: Map<string, Omit<VerifyResult, 'path'>>;
}

function fake(shares: string[] = ['/home/me', '/tmp']): Fake {
  const f: Fake = {
    inspects: new Map(),
    calls: [],
    pins: [],
    unpins: [],
    watches: [],
    fail: {},
    vm: new Map(),
    deps: undefined as unknown as MountTrackerDeps,
  };
  f.deps = {
    shares: () => shares,
    inspect: (id) => {
      f.calls.push(`inspect ${id}`);
      if (f.fail.inspect === 'throw') throw new Error('engine gone');
      if (f.fail.inspect === 'reject') return Promise.reject(new Error('no such container'));
      return Promise.resolve(f.inspects.get(id));
    },
    pin: (paths) => {
      f.calls.push(`pin ${paths.join(',')}`);
      f.pins.push(paths);
      if (f.fail.pin === 'throw') throw new Error('agent gone');
      if (f.fail.pin === 'reject') return Promise.reject(new Error('pin failed'));
      return Promise.resolve();
    },
    verify: (paths) => {
      f.calls.push(`verify ${paths.join(',')}`);
      if (f.fail.verify === 'reject') return Promise.reject(new Error('agent gone'));
      return Promise.resolve({ results: paths.map((p) => ({ path: p, ...(f.vm.get(p) ?? { resolved: p, kind: 'dir' as const }) })) });
    },
    unpin: (paths) => {
      f.calls.push(`unpin ${paths.join(',')}`);
      f.unpins.push(paths);
      if (f.fail.unpin === 'reject') return Promise.reject(new Error('unpin failed'));
      return Promise.resolve();
    },
    watch: (paths) => {
      f.calls.push(`watch ${paths.join(',')}`);
      f.watches.push(paths);
    },
  };
  return f;
}

/** A tracker whose re-check timers end with the test. */
function tracker(t: TestContext, f: Fake, confirmMs?: number): MountTracker {
  const m = confirmMs === undefined ? new MountTracker(f.deps, silentLogger) : new MountTracker(f.deps, silentLogger, confirmMs);
  t.after(() => m.close());
  return m;
}

const bind = (Source: unknown, Destination = '/dst') => ({ Type: 'bind', Source, Destination });

test('prepare: inspects, then pins and watches the bind sources inside shares, and only those', async (t) => {
  const f = fake();
  f.inspects.set('c1', {
    Id: 'c1',
    Mounts: [
      bind('/home/me/proj'),
      bind('/home/me'), // the share itself
      bind('/tmp/x/../build'), // normalized: /tmp/build
      bind('/home/me/proj'), // twice: once
      { Type: 'volume', Name: 'data', Source: '/var/lib/docker/volumes/data/_data', Destination: '/data' },
      { Type: 'tmpfs', Source: '', Destination: '/run' },
      { Type: 'volume', Source: '/home/me/vol' }, // inside a share, but not a bind mount
      bind('/etc'), // outside every share
      bind('/home/meme/x'), // a prefix of a share's name, not inside it
      bind('/home/me/../other'), // normalized outside the share
      bind('relative/home/me'), // not absolute
      bind(42),
      bind(undefined),
      { Source: '/home/me/untyped' },
      null,
      'bind:/home/me/str',
      7,
    ],
  });
  const m = tracker(t, f);
  await m.prepare('c1');
  const want = ['/home/me', '/home/me/proj', '/tmp/build'];
  assert.deepEqual(f.calls, ['inspect c1', `pin ${want.join(',')}`, `watch ${want.join(',')}`]);
  assert.deepEqual(m.all(), want);
});

test('inspect data without bind mounts in shares pins and watches nothing', async (t) => {
  const f = fake();
  const cases: unknown[] = [
    undefined,
    null,
    'text',
    42,
    [],
    {},
    { Mounts: null },
    { Mounts: {} },
    { Mounts: 'bind /home/me' },
    { Mounts: { 0: bind('/home/me/x'), length: 1 } },
    { Mounts: [] },
    { Mounts: [bind('/etc'), { Type: 'volume', Source: '/home/me/v' }] },
  ];
  const m = tracker(t, f);
  for (const [i, c] of cases.entries()) {
    f.inspects.set(`c${i}`, c);
    await m.prepare(`c${i}`);
    await m.update(`u${i}`, c);
  }
  assert.deepEqual(f.pins, []);
  assert.deepEqual(f.unpins, []);
  assert.deepEqual(m.all(), []);
});

test('two containers mounting the same folder: pinned once, unpinned only when both are gone', async (t) => {
  const f = fake();
  f.inspects.set('a', { Mounts: [bind('/home/me/shared'), bind('/home/me/only-a')] });
  f.inspects.set('b', { Mounts: [bind('/home/me/shared'), bind('/tmp/only-b')] });
  const m = tracker(t, f);
  await m.prepare('a');
  await m.prepare('b');
  assert.deepEqual(f.pins, [['/home/me/only-a', '/home/me/shared'], ['/tmp/only-b']]);
  assert.deepEqual(f.watches.at(-1), ['/home/me/only-a', '/home/me/shared', '/tmp/only-b'], 'watch gets the union');

  await m.update('a', undefined);
  assert.deepEqual(f.unpins, [['/home/me/only-a']], 'the shared folder stays pinned while b runs');
  assert.deepEqual(f.watches.at(-1), ['/home/me/shared', '/tmp/only-b']);

  await m.update('b', undefined);
  assert.deepEqual(f.unpins, [['/home/me/only-a'], ['/home/me/shared', '/tmp/only-b']]);
  assert.deepEqual(f.watches.at(-1), []);
  assert.deepEqual(m.all(), []);
  assert.equal(f.pins.length, 2, 'nothing pinned again');
});

test('update: the same inspect again changes nothing; a changed one pins and unpins the difference', async (t) => {
  const f = fake();
  const m = tracker(t, f);
  await m.update('c', { Mounts: [bind('/home/me/a'), bind('/home/me/b')] });
  await m.update('c', { Mounts: [bind('/home/me/b'), bind('/home/me/a')] }); // same set, other order
  assert.deepEqual(f.calls, ['pin /home/me/a,/home/me/b', 'watch /home/me/a,/home/me/b']);
  await m.update('c', { Mounts: [bind('/home/me/b'), bind('/home/me/c')] });
  assert.deepEqual(f.calls.slice(2), ['pin /home/me/c', 'unpin /home/me/a', 'watch /home/me/b,/home/me/c']);
  // Gone twice: the second is a no-op.
  await m.update('c', undefined);
  await m.update('c', undefined);
  assert.deepEqual(f.unpins, [['/home/me/a'], ['/home/me/b', '/home/me/c']]);
  // A container never seen going away: nothing.
  await m.update('never', undefined);
  assert.equal(f.unpins.length, 2);
});

test('a throwing or rejecting inspect never throws out of prepare, and pins nothing', async (t) => {
  for (const mode of ['throw', 'reject'] as const) {
    const f = fake();
    f.fail.inspect = mode;
    f.inspects.set('c', { Mounts: [bind('/home/me/x')] });
    const m = tracker(t, f);
    await m.prepare('c');
    assert.deepEqual(f.calls, ['inspect c'], mode);
    assert.deepEqual(m.all(), []);
  }
});

test('a throwing or rejecting pin (or unpin) never throws out of prepare or update; the folders are still watched', async (t) => {
  for (const mode of ['throw', 'reject'] as const) {
    const f = fake();
    f.fail.pin = mode;
    f.fail.unpin = 'reject';
    f.inspects.set('c', { Mounts: [bind('/home/me/x')] });
    const m = tracker(t, f);
    await m.prepare('c');
    await m.update('d', { Mounts: [bind('/tmp/y')] });
    assert.deepEqual(f.pins, [['/home/me/x'], ['/tmp/y']], mode);
    assert.deepEqual(f.watches, [['/home/me/x'], ['/home/me/x', '/tmp/y']], mode);
    await m.update('c', undefined);
    assert.deepEqual(f.unpins, [['/home/me/x']], mode);
    assert.deepEqual(f.watches.at(-1), ['/tmp/y'], mode);
  }
});

test('at most 256 mounts of one container are looked at', async (t) => {
  const f = fake();
  const mounts = Array.from({ length: 300 }, (_, i) => bind(`/home/me/m${String(i).padStart(3, '0')}`));
  const m = tracker(t, f);
  await m.update('c', { Mounts: mounts });
  assert.equal(m.all().length, 256);
  assert.equal(m.all().at(-1), '/home/me/m255');
});

test('a share configured with a trailing slash still covers its own root and what is inside', async (t) => {
  const f = fake(['/data/']);
  const m = tracker(t, f);
  await m.update('c', { Mounts: [bind('/data'), bind('/data/sub')] });
  assert.deepEqual(m.all(), ['/data', '/data/sub']);
});

test('a failing pin does not keep folders no longer mounted pinned', async (t) => {
  const f = fake();
  const m = tracker(t, f);
  await m.update('c', { Mounts: [bind('/home/me/a')] });
  f.fail.pin = 'reject';
  await m.update('c', { Mounts: [bind('/home/me/b')] }); // a → b: pin b fails
  assert.deepEqual(f.unpins, [['/home/me/a']]);
});

test('a prepared container never seen running is checked again after confirmMs: not running or gone → unpinned', async (t) => {
  for (const later of ['stopped', 'gone'] as const) {
    const f = fake();
    const mounts = [bind('/home/me/x')];
    f.inspects.set('c', { State: { Running: false }, Mounts: mounts });
    const m = tracker(t, f, 20);
    await m.prepare('c');
    assert.deepEqual(m.all(), ['/home/me/x'], later);
    if (later === 'gone') f.fail.inspect = 'reject';
    await sleep(80);
    assert.deepEqual(f.unpins, [['/home/me/x']], later);
    assert.deepEqual(f.watches.at(-1), [], later);
    assert.deepEqual(m.all(), [], later);
  }
});

test('a prepared container found running at the re-check keeps its folders', async (t) => {
  const f = fake();
  f.inspects.set('c', { State: { Running: true }, Mounts: [bind('/home/me/x')] });
  const m = tracker(t, f, 20);
  await m.prepare('c');
  await sleep(80);
  assert.deepEqual(f.calls.filter((c) => c.startsWith('inspect')), ['inspect c', 'inspect c'], 'checked again once');
  assert.deepEqual(f.unpins, []);
  assert.deepEqual(m.all(), ['/home/me/x']);
});

test('no re-check once the container was seen (update), nor for one with no shared mounts, nor after close', async (t) => {
  const f = fake();
  f.inspects.set('seen', { Mounts: [bind('/home/me/a')] });
  f.inspects.set('plain', { Mounts: [bind('/etc')] });
  f.inspects.set('closed', { Mounts: [bind('/home/me/c')] });
  const m = tracker(t, f, 20);
  await m.prepare('seen');
  await m.update('seen', { State: { Running: true }, Mounts: [bind('/home/me/a')] });
  await m.prepare('plain');
  await sleep(80);
  assert.deepEqual(f.calls.filter((c) => c.startsWith('inspect')), ['inspect seen', 'inspect plain']);
  await m.prepare('closed');
  m.close();
  await sleep(80);
  assert.deepEqual(f.calls.filter((c) => c.startsWith('inspect')), ['inspect seen', 'inspect plain', 'inspect closed']);
  assert.deepEqual(f.unpins, []);
  assert.deepEqual(m.all(), ['/home/me/a', '/home/me/c']);
});

test('verifyStart: a bind source that the VM now resolves through a symbolic link, or that is gone, refuses the start', async (t) => {
  const f = fake();
  const m = tracker(t, f);
  f.inspects.set('c1', { Id: 'c1', Mounts: [bind('/home/me/proj'), bind('/srv/not-shared'), { Type: 'volume', Source: '/var/lib/docker/volumes/v/_data' }] });
  assert.equal(await m.verifyStart('c1'), undefined, 'a folder the VM resolves to itself');
  assert.deepEqual(f.calls.filter((c) => c.startsWith('verify')), ['verify /home/me/proj'], 'only bind sources inside shares are checked');
  f.vm.set('/home/me/proj', { resolved: '/etc', kind: 'dir' });
  assert.match((await m.verifyStart('c1')) ?? '', /\/home\/me\/proj is now a symbolic link to \/etc/);
  f.vm.set('/home/me/proj', { resolved: '/host/only/path', kind: 'symlink' });
  assert.match((await m.verifyStart('c1')) ?? '', /is now a symbolic link to \/host\/only\/path/, 'a link to nothing in the VM');
  f.vm.set('/home/me/proj', { resolved: null, kind: 'missing' });
  assert.match((await m.verifyStart('c1')) ?? '', /is now gone/);
  f.vm.set('/home/me/proj', { resolved: '/home/me/proj', kind: 'other' });
  assert.match((await m.verifyStart('c1')) ?? '', /not a folder or file/);
  f.vm.delete('/home/me/proj');
  f.fail.verify = 'reject';
  assert.match((await m.verifyStart('c1')) ?? '', /could not check/, 'fails closed when the VM cannot say');
  f.fail.verify = undefined;
  f.fail.inspect = 'reject';
  assert.equal(await m.verifyStart('gone'), undefined, 'an unknown container is dockerd\'s to answer');
});

test('beforeStart: one inspect, then the check, then pins and watches; a refused start pins nothing', async (t) => {
  const f = fake();
  const m = tracker(t, f);
  f.inspects.set('c1', { Id: 'c1', Mounts: [bind('/home/me/proj')] });
  assert.equal(await m.beforeStart('c1'), undefined);
  assert.deepEqual(f.calls, ['inspect c1', 'verify /home/me/proj', 'pin /home/me/proj', 'watch /home/me/proj']);
  f.calls.length = 0;
  f.inspects.set('c2', { Id: 'c2', Mounts: [bind('/home/me/other')] });
  f.vm.set('/home/me/other', { resolved: '/etc', kind: 'dir' });
  assert.match((await m.beforeStart('c2')) ?? '', /symbolic link/);
  assert.deepEqual(f.calls, ['inspect c2', 'verify /home/me/other']);
});
