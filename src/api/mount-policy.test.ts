import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkContainerCreate, checkServiceSpec, checkVolumeCreate, DEFAULT_VM_PATHS, refusalMessage, type MountPolicy } from './mount-policy.js';

/**
 * One decision for every way the Engine API can name a host path (CVE-2026-6406: a proxy that
 * read HostConfig.Binds only was bypassed through HostConfig.Mounts). Each representation is tested
 * with a path inside a share (allowed) and outside (refused), as an attack table.
 */
const policy: MountPolicy = { shares: [{ path: '/home/me', readOnly: false }, { path: '/tmp', readOnly: false }], vmPaths: DEFAULT_VM_PATHS };
const defaultPolicy = policy;

/** The same host path, written every way the API allows. */
function representations(p: string, policy: MountPolicy = defaultPolicy): [string, () => ReturnType<typeof checkContainerCreate>][] {
  return [
    ['HostConfig.Binds', () => checkContainerCreate({ HostConfig: { Binds: [`${p}:/src`] } }, policy)],
    ['HostConfig.Binds with options', () => checkContainerCreate({ HostConfig: { Binds: [`${p}:/src:ro,z`] } }, policy)],
    ['HostConfig.Mounts type bind', () => checkContainerCreate({ HostConfig: { Mounts: [{ Type: 'bind', Source: p, Target: '/src' }] } }, policy)],
    ['HostConfig.Mounts type BIND (odd casing)', () => checkContainerCreate({ HostConfig: { Mounts: [{ Type: 'BIND', Source: p, Target: '/src' }] } }, policy)],
    ['Mounts type volume, local driver bind options', () => checkContainerCreate({ HostConfig: { Mounts: [{ Type: 'volume', Source: 'v', Target: '/src', VolumeOptions: { DriverConfig: { Name: 'local', Options: { type: 'none', o: 'bind', device: p } } } }] } }, policy)],
    ['Mounts type volume, default driver, rbind', () => checkContainerCreate({ HostConfig: { Mounts: [{ Type: 'volume', Target: '/src', VolumeOptions: { DriverConfig: { Options: { type: 'none', o: 'ro,rbind', device: p } } } }] } }, policy)],
    ['POST /volumes/create with bind options', () => checkVolumeCreate({ Name: 'v', Driver: 'local', DriverOpts: { type: 'none', o: 'bind', device: p } }, policy)],
    ['POST /services/create with a bind mount', () => checkServiceSpec({ TaskTemplate: { ContainerSpec: { Mounts: [{ Type: 'bind', Source: p, Target: '/src' }] } } }, policy)],
  ];
}

test('every representation of a path inside a share is allowed', () => {
  for (const [name, check] of representations('/home/me/project')) assert.deepEqual(check(), { ok: true }, name);
  for (const [name, check] of representations('/tmp')) assert.deepEqual(check(), { ok: true }, `${name} (the share itself)`);
});

test('every representation of a path outside the shares is refused, naming the path and the field', () => {
  for (const [name, check] of representations('/etc')) {
    const d = check();
    assert.equal(d.ok, false, name);
    if (!d.ok) {
      assert.equal(d.path, '/etc', name);
      assert.match(d.where, /Binds|Mounts|DriverOpts/, name);
    }
  }
});

test('".." and prefix tricks do not get out of a share', () => {
  for (const p of ['/home/me/../other', '/home/me/../../etc', '/home/mexico', '/home/me/./../me2', '/tmp/../etc/shadow']) {
    for (const [name, check] of representations(p)) assert.equal(check().ok, false, `${p} via ${name}`);
  }
  assert.equal(checkContainerCreate({ HostConfig: { Binds: ['/home/me/a/../b:/x'] } }, policy).ok, true);
});

test('named volumes, tmpfs and other drivers name no host path and pass', () => {
  assert.deepEqual(checkContainerCreate({ HostConfig: { Binds: ['data:/data', 'cache:/cache:ro'] } }, policy), { ok: true });
  assert.deepEqual(checkContainerCreate({ HostConfig: { Mounts: [{ Type: 'tmpfs', Target: '/t' }, { Type: 'volume', Source: 'named', Target: '/v' }] } }, policy), { ok: true });
  assert.deepEqual(checkVolumeCreate({ Name: 'n', Driver: 'local', DriverOpts: { type: 'nfs', o: 'addr=10.0.0.1', device: ':/export' } }, policy), { ok: true });
  assert.deepEqual(checkVolumeCreate({ Name: 'plain' }, policy), { ok: true });
  assert.deepEqual(checkContainerCreate({ Image: 'x' }, policy), { ok: true });
});

test("the engine's own socket may be mounted (docker-in-docker clients), nothing else of the VM", () => {
  assert.deepEqual(checkContainerCreate({ HostConfig: { Binds: ['/var/run/docker.sock:/var/run/docker.sock'] } }, policy), { ok: true });
  for (const p of ['/var/lib/docker', '/', '/run', '/var/run']) assert.equal(checkContainerCreate({ HostConfig: { Binds: [`${p}:/x`] } }, policy).ok, false, p);
});

test('unknown mount types and malformed mount fields are refused, never passed unread', () => {
  for (const body of [
    { HostConfig: { Mounts: [{ Type: 'weird', Source: '/etc', Target: '/x' }] } },
    { HostConfig: { Mounts: [{ Type: 'bind', Target: '/x' }] } },
    { HostConfig: { Mounts: 'not a list' } },
    { HostConfig: { Binds: [42] } },
    { HostConfig: { Binds: 'oops' } },
    { HostConfig: 'oops' },
    { HostConfig: { Mounts: [{ Type: 'volume', VolumeOptions: { DriverConfig: { Options: { o: 'bind' } } } }] } },
  ]) {
    assert.equal(checkContainerCreate(body, policy).ok, false, JSON.stringify(body));
  }
  assert.equal(checkContainerCreate({ HostConfig: { Binds: ['relative/path:/x'] } }, policy).ok, true, 'a relative source is a volume name to the engine');
});

test('the refusal message names the path, the shares and the setting to change', () => {
  const d = checkContainerCreate({ HostConfig: { Binds: ['/srv/data:/data'] } }, policy);
  assert.equal(d.ok, false);
  if (!d.ok) {
    const m = refusalMessage(d, policy);
    assert.match(m, /\/srv\/data/);
    assert.match(m, /HostConfig\.Binds\[0\]/);
    assert.match(m, /Shared folders: \/home\/me, \/tmp/);
    assert.match(m, /"shares" setting/);
    assert.match(m, /berth restart/);
  }
});

test('a share the VM could not mount: every representation of a path in it is refused with the reason and what to do; the other shares still pass', () => {
  const down: MountPolicy = { ...policy, unavailable: [{ path: '/home/me', reason: 'the file server did not answer within 10 s' }] };
  for (const [name, check] of representations('/home/me/project', down)) {
    const d = check();
    assert.equal(d.ok, false, name);
    if (!d.ok) {
      const m = refusalMessage(d, down);
      assert.match(m, /\/home\/me\/project/, name);
      assert.match(m, /shared folder \/home\/me is not mounted in the VM \(the file server did not answer within 10 s\)/, name);
      assert.match(m, /berth restart/, name);
      assert.doesNotMatch(m, /To share another folder/, name);
    }
  }
  for (const [name, check] of representations('/tmp/x', down)) assert.deepEqual(check(), { ok: true }, name);
});
