import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideJsonBody, type BodyDecision } from './decide.js';
import { DEFAULT_VM_PATHS, type HostLookup, type MountPolicy } from './mount-policy.js';
import type { BodyKind } from './route-table.js';
import type { RouteMatch } from './routes.js';

/**
 * One decision for every way the Engine API can name a path (CVE-2026-6406: a proxy that read
 * HostConfig.Binds only was bypassed through HostConfig.Mounts), taken on the bytes dockerd would
 * read and forwarded as the value decided on. The host's file system is a fake: /home/me is a
 * share, with symbolic links inside it.
 */
const FS: Record<string, { kind: 'dir' | 'file' | 'symlink'; target?: string }> = {
  '/home/me': { kind: 'dir' },
  '/home/me/project': { kind: 'dir' },
  '/home/me/project/src': { kind: 'dir' },
  '/home/me/project/file.txt': { kind: 'file' },
  '/home/me/etc-link': { kind: 'symlink', target: '/etc' },
  '/home/me/up-link': { kind: 'symlink', target: '../../etc' },
  '/home/me/sock-link': { kind: 'symlink', target: '/var/run/docker.sock' },
  '/home/me/cur': { kind: 'symlink', target: 'project' },
  '/home/me/abs-in': { kind: 'symlink', target: '/home/me/project/src' },
  '/home/me/to-tmp': { kind: 'symlink', target: '/tmp/x' },
  '/home/me/loop': { kind: 'symlink', target: 'loop' },
  '/home/me/project/esc': { kind: 'symlink', target: '../../../root' },
  '/tmp': { kind: 'dir' },
  '/tmp/x': { kind: 'dir' },
  '/srv': { kind: 'dir' },
};
const host: HostLookup = {
  kind: (p) => FS[p]?.kind ?? 'missing',
  readlink: (p) => FS[p]!.target!,
  exists: (p) => p in FS,
};
const policy: MountPolicy = { shares: [{ path: '/home/me', readOnly: false }, { path: '/tmp', readOnly: false }], vmPaths: DEFAULT_VM_PATHS, host };

const match = { route: { method: 'POST', path: '/x', body: 'none' }, version: '1.41', vars: { name: 'p' } } as RouteMatch;
const noEngine = async () => {
  throw new Error('no engine in this test');
};

async function decide(kind: BodyKind, body: unknown, p: MountPolicy = policy): Promise<BodyDecision> {
  const raw = typeof body === 'string' ? body : JSON.stringify(body);
  return decideJsonBody(kind)!({ body: Buffer.from(raw), match, policy: p, open: noEngine });
}

/** The same path, written every way the API allows. */
function representations(p: string): [string, BodyKind, unknown][] {
  const local = (device: string, o = 'bind') => ({ type: 'none', o, device });
  return [
    ['HostConfig.Binds', 'container-create', { HostConfig: { Binds: [`${p}:/src`] } }],
    ['HostConfig.Binds with options', 'container-create', { HostConfig: { Binds: [`${p}:/src:ro,z`] } }],
    ['HostConfig.Mounts bind', 'container-create', { HostConfig: { Mounts: [{ Type: 'bind', Source: p, Target: '/src' }] } }],
    ['Mounts volume, local bind options', 'container-create', { HostConfig: { Mounts: [{ Type: 'volume', Source: 'v', Target: '/s', VolumeOptions: { DriverConfig: { Name: 'local', Options: local(p) } } }] } }],
    ['Mounts volume, default driver, rbind', 'container-create', { HostConfig: { Mounts: [{ Type: 'volume', Target: '/s', VolumeOptions: { DriverConfig: { Options: local(p, 'ro,rbind') } } }] } }],
    ['volume create, bind', 'volume-create', { Name: 'v', Driver: 'local', DriverOpts: local(p) }],
    ['volume create, overlay lowerdir', 'volume-create', { Name: 'v', DriverOpts: { type: 'overlay', o: `lowerdir=/tmp/x:${p},upperdir=/tmp/x/u,workdir=/tmp/x/w`, device: 'overlay' } }],
    ['service bind mount', 'service-spec', { TaskTemplate: { ContainerSpec: { Mounts: [{ Type: 'bind', Source: p, Target: '/s' }] } } }],
    ['lower-case keys', 'container-create', { hostconfig: { binds: [`${p}:/src`] } }],
    ['long-s keys', 'container-create', `{"Ho\u017ftConfig":{"Bind\u017f":["${p}:/src"]}}`],
  ];
}

test('every representation of a path inside a share is allowed and forwarded with that path', async () => {
  for (const p of ['/home/me/project', '/tmp', '/home/me/not-yet-made/sub']) {
    for (const [name, kind, body] of representations(p)) {
      const d = await decide(kind, body);
      assert.equal(d.ok, true, `${name} ${p}: ${d.ok ? '' : d.message}`);
      if (d.ok) assert.ok(d.body.toString().includes(p), `${name}: forwarded with ${p}`);
    }
  }
});

test('every representation of a path outside the shares is refused, naming the path and the field', async () => {
  for (const p of ['/etc', '/home/me/../other', '/home/mexico', '/tmp/../etc/shadow', '/srv']) {
    for (const [name, kind, body] of representations(p)) {
      const d = await decide(kind, body);
      assert.equal(d.ok, false, `${name} ${p}`);
      if (!d.ok) assert.match(d.message, /cannot be used/, name);
    }
  }
});

test('symlinks: one that leaves the shares is refused, one that stays inside is replaced by its real path', async () => {
  for (const p of ['/home/me/etc-link', '/home/me/etc-link/passwd', '/home/me/up-link', '/home/me/sock-link', '/home/me/project/esc', '/home/me/loop']) {
    for (const [name, kind, body] of representations(p)) {
      const d = await decide(kind, body);
      assert.equal(d.ok, false, `${name} ${p}`);
    }
  }
  const cases: [string, string][] = [
    ['/home/me/cur', '/home/me/project'],
    ['/home/me/cur/src', '/home/me/project/src'],
    ['/home/me/abs-in', '/home/me/project/src'],
    ['/home/me/to-tmp', '/tmp/x'],
  ];
  for (const [given, real] of cases) {
    const d = await decide('container-create', { HostConfig: { Binds: [`${given}:/src:ro`], Mounts: [{ Type: 'bind', Source: given, Target: '/m' }] } });
    assert.ok(d.ok, given);
    if (d.ok) assert.deepEqual(JSON.parse(d.body.toString()).HostConfig, { Binds: [`${real}:/src:ro`], Mounts: [{ Type: 'bind', Source: real, Target: '/m' }] });
  }
});

test('a refusal names the field and what to do: share a host folder, or allow a VM path', async () => {
  const d1 = await decide('container-create', { HostConfig: { Binds: ['/srv:/data'] } });
  assert.ok(!d1.ok && /\/srv \(HostConfig\.Binds\[0\]\).*not inside a shared folder.*Shared folders: \/home\/me, \/tmp.*"shares" setting/.test(d1.message), d1.ok ? '' : d1.message);
  const d2 = await decide('container-create', { HostConfig: { Binds: ['/var/lib/docker:/d'] } });
  assert.ok(!d2.ok && /path of berth's VM.*vmPaths/.test(d2.message), d2.ok ? '' : d2.message);
  assert.ok(!d2.ok && !/"shares" setting/.test(d2.message), 'no advice to share a VM path from the host');
  const d3 = await decide('container-create', { HostConfig: { Binds: ['/nowhere:/d'] } });
  assert.ok(!d3.ok && /does not exist on your host/.test(d3.message));
});

test("devices: the VM's disks are refused with the reason; others need vmPaths; /dev/fuse and /dev/net/tun are allowed", async () => {
  const dev = (p: string) => decide('container-create', { HostConfig: { Devices: [{ PathOnHost: p, PathInContainer: p, CgroupPermissions: 'rwm' }] } });
  for (const p of ['/dev/vda', '/dev/vdb1', '/dev/sda', '/dev/vport1p1', '/dev/mem']) {
    const d = await dev(p);
    assert.ok(!d.ok && /disk or the control port/.test(d.message), p);
  }
  const snd = await dev('/dev/snd');
  assert.ok(!snd.ok && /vmPaths/.test(snd.message));
  for (const p of ['/dev/fuse', '/dev/net/tun']) assert.equal((await dev(p)).ok, true, p);
  const vol = await decide('volume-create', { DriverOpts: { type: 'ext4', device: '/dev/vda' } });
  assert.ok(!vol.ok && /disk/.test(vol.message), 'a local volume on a VM disk');
  assert.equal((await decide('volume-create', { DriverOpts: { type: 'nfs', o: 'addr=10.0.0.1', device: ':/export' } })).ok, true);
  assert.equal((await decide('volume-create', { DriverOpts: { type: 'tmpfs', device: 'tmpfs' } })).ok, true);
});

test("the engine's own socket may be mounted; the rest of the VM only through vmPaths", async () => {
  assert.equal((await decide('container-create', { HostConfig: { Binds: ['/var/run/docker.sock:/var/run/docker.sock'] } })).ok, true);
  for (const p of ['/var/lib/docker', '/', '/run', '/proc']) assert.equal((await decide('container-create', { HostConfig: { Binds: [`${p}:/x`] } })).ok, false, p);
  const allowed = { ...policy, vmPaths: [...DEFAULT_VM_PATHS, '/var/lib/docker'] };
  assert.equal((await decide('container-create', { HostConfig: { Binds: ['/var/lib/docker:/x:ro'] } }, allowed)).ok, true);
});

test('deprecated top-level HostConfig fields, repeated keys, unknown mount types and trailing data are refused', async () => {
  for (const body of [
    '{"Image":"x","Binds":["/etc:/x"]}',
    '{"Image":"x","mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}',
    '{"Image":"x","Devices":[{"PathOnHost":"/dev/vda"}]}',
    '{"HostConfig":{"Binds":[]},"hostconfig":{"Binds":["/etc:/x"]}}',
    '{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/home/me","source":"/etc","Target":"/x"}]}}',
    '{"HostConfig":{"Mounts":[{"Type":"BIND","Source":"/etc","Target":"/x"}]}}',
    '{"HostConfig":{"Mounts":[{"Type":"weird","Source":"/etc","Target":"/x"}]}}',
    '{"HostConfig":{"Mounts":[{"Type":"bind","Target":"/x"}]}}',
    '{"HostConfig":{"Mounts":[null]}}',
    '{"HostConfig":{"Binds":["/home/me:/x"]}} {"HostConfig":{"Binds":["/etc:/x"]}}',
    '{"HostConfig":{"Binds":["/home/me:/x"]}',
    '{"HostConfig":{"Binds":"/etc:/x"}}',
  ]) {
    assert.equal((await decide('container-create', body)).ok, false, body);
  }
  assert.equal((await decide('container-create', { HostConfig: { Binds: ['data:/data', 'relative/x:/y', '/only-a-target'] } })).ok, true, 'named volumes and anonymous ones');
  assert.equal((await decide('container-create', '')).ok, true, 'an empty body is dockerd\'s to refuse');
});

test('what is forwarded is serialized from the checked value: unknown fields kept, the odd spellings made canonical', async () => {
  const d = await decide('container-create', '{"Image":"busybox","Cmd":["sh"],"hostconfig":{"Privileged":false,"bInDs":["/home/me/cur:/src"],"Memory":1},"Labels":{"a":"b"}}');
  assert.ok(d.ok);
  if (d.ok) assert.deepEqual(JSON.parse(d.body.toString()), { HostConfig: { Binds: ['/home/me/project:/src'], Privileged: false, Memory: 1 }, Image: 'busybox', Cmd: ['sh'], Labels: { a: 'b' } });
});

test('plugins: privileges, a service plugin spec, and settings that name paths', async () => {
  const ok = await decide('plugin-privileges', [{ Name: 'network', Value: ['host'] }, { Name: 'mount', Value: ['/home/me/project'] }, { Name: 'device', Value: ['/dev/fuse'] }]);
  assert.equal(ok.ok, true);
  for (const body of [[{ Name: 'mount', Value: ['/etc'] }], [{ name: 'mount', value: ['/var/lib/docker'] }], [{ Name: 'device', Value: ['/dev/vda'] }], [{ Name: 'allow-all-devices', Value: ['true'] }], [{ Name: 'mount', Value: ['/home/me/etc-link'] }]]) {
    assert.equal((await decide('plugin-privileges', body)).ok, false, JSON.stringify(body));
  }
  const svc = await decide('service-spec', { Name: 's', TaskTemplate: { Runtime: 'plugin', PluginSpec: { name: 'p', remote: 'r', privileges: [{ name: 'mount', value: ['/etc'] }] } } });
  assert.equal(svc.ok, false);
});

test("service mounts: swarm's converter upper-cases the type and takes an empty one for bind; the proxy decides and sends the same", async () => {
  for (const type of ['', 'BIND', 'b\u0131nd', 'Bind']) {
    const d = await decide('service-spec', { TaskTemplate: { ContainerSpec: { Mounts: [{ Type: type, Source: '/etc', Target: '/x' }] } } });
    assert.equal(d.ok, false, JSON.stringify(type));
  }
  const ok = await decide('service-spec', { TaskTemplate: { ContainerSpec: { Mounts: [{ Type: 'b\u0131nd', Source: '/home/me/project', Target: '/x' }] } } });
  assert.ok(ok.ok);
  if (ok.ok) assert.equal(JSON.parse(ok.body.toString()).TaskTemplate.ContainerSpec.Mounts[0].Type, 'bind');
});

test('plugins about to be enabled: the mounts and devices of their settings decide, however they were installed', async () => {
  const { checkPluginSettings } = await import('./mount-policy.js');
  const { pluginState } = await import('./bodies.js');
  const state = (settings: unknown, linux: unknown = {}) => pluginState({ Config: { Mounts: [{ Name: 'data' }], Linux: linux }, Settings: settings });
  assert.equal(checkPluginSettings(state({ Mounts: [{ Source: '/home/me/project' }], Devices: [{ Path: '/dev/fuse' }] }), policy).ok, true);
  assert.equal(checkPluginSettings(state({ Mounts: [{ Source: '/etc' }] }), policy).ok, false);
  assert.equal(checkPluginSettings(state({ Devices: [{ Path: '/dev/vda' }] }), policy).ok, false);
  assert.equal(checkPluginSettings(state({}, { AllowAllDevices: true }), policy).ok, false);
  assert.equal(checkPluginSettings(pluginState('garbage'), policy).ok, true, 'a malformed answer names nothing');
});
