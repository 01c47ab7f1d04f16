import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideJsonBody, type BodyDecision } from './decide.js';
import { nativeDockerArch, platformRefusal } from './host-kernel-policy.js';
import { DEFAULT_VM_PATHS, type MountPolicy } from './mount-policy.js';
import type { RouteMatch } from './routes.js';

const match = { route: { method: 'POST', path: '/containers/create', body: 'container-create' }, version: '1.45', vars: {} } as unknown as RouteMatch;
const noEngine = async () => {
  throw new Error('no engine in this test');
};
const vm: MountPolicy = { shares: [], vmPaths: DEFAULT_VM_PATHS };
const ns: MountPolicy = { ...vm, hostKernel: { allowPrivileged: false } };
const nsAllowed: MountPolicy = { ...vm, hostKernel: { allowPrivileged: true } };

function create(hostConfig: unknown, p: MountPolicy): Promise<BodyDecision> {
  return decideJsonBody('container-create')!({ body: Buffer.from(JSON.stringify({ Image: 'x', HostConfig: hostConfig })), match, policy: p, open: noEngine });
}

const REFUSED: [string, unknown, RegExp][] = [
  ['--privileged', { Privileged: true }, /HostConfig\.Privileged cannot be used with the namespace backend: a privileged container/],
  ['--cap-add SYS_ADMIN', { CapAdd: ['SYS_ADMIN'] }, /CapAdd\[0\].*"SYS_ADMIN"/],
  ['--cap-add as one string, CAP_ prefix, lower case', { CapAdd: 'cap_sys_module' }, /CapAdd\[0\].*"cap_sys_module"/],
  ['--cap-add ALL', { CapAdd: ['CHOWN', 'ALL'] }, /CapAdd\[1\]/],
  ['--device', { Devices: [{ PathOnHost: '/dev/sda', PathInContainer: '/dev/sda', CgroupPermissions: 'rwm' }] }, /HostConfig\.Devices/],
  ['--gpus', { DeviceRequests: [{ Count: -1, Capabilities: [['gpu']] }] }, /DeviceRequests/],
  ['--device-cgroup-rule', { DeviceCgroupRules: ['b 8:* rmw'] }, /DeviceCgroupRules/],
  ['--pid host', { PidMode: 'host' }, /HostConfig\.PidMode.*--pid=host/],
  ['--ipc host', { IpcMode: 'HOST' }, /IpcMode/],
  ['--userns host', { UsernsMode: 'host' }, /UsernsMode/],
  ['--cgroupns host', { CgroupnsMode: 'host' }, /CgroupnsMode/],
  ['seccomp=unconfined', { SecurityOpt: ['no-new-privileges', 'seccomp=unconfined'] }, /SecurityOpt\[1\]/],
  ['apparmor:unconfined', { SecurityOpt: ['apparmor:unconfined'] }, /SecurityOpt\[0\]/],
  ['systempaths=unconfined', { SecurityOpt: ['systempaths=unconfined'] }, /SecurityOpt\[0\]/],
  ['label=disable', { SecurityOpt: ['label=disable'] }, /SecurityOpt\[0\]/],
];

test('namespace backend: what reaches the host kernel is refused, each with why and the way out', async () => {
  for (const [name, hc, why] of REFUSED) {
    const d = await create(hc, ns);
    assert.equal(d.ok, false, name);
    if (d.ok) continue;
    assert.match(d.message, why, name);
    assert.match(d.message, /berth start --backend vm/, name);
    assert.match(d.message, /namespace\.allowPrivileged true/, name);
  }
});

test('namespace backend: ordinary containers pass, Docker\'s default capabilities may be added, and the setting allows the rest', async () => {
  for (const hc of [{}, { CapAdd: ['CHOWN', 'NET_BIND_SERVICE', 'CAP_KILL'] }, { CapDrop: ['ALL'] }, { PidMode: 'container:abc' }, { SecurityOpt: ['no-new-privileges:true'] }, { NetworkMode: 'host' }, { Privileged: false }]) {
    assert.equal((await create(hc, ns)).ok, true, JSON.stringify(hc));
  }
  for (const [name, hc] of REFUSED) {
    if (name === '--device') continue; // a device is also checked against the VM paths, as in the VM
    assert.equal((await create(hc, nsAllowed)).ok, true, `allowed: ${name}`);
  }
});

test('the VM backend does not apply these rules (the VM is the boundary); a CapAdd string is sent on as a list', async () => {
  assert.equal((await create({ Privileged: true, CapAdd: ['SYS_ADMIN'], PidMode: 'host' }, vm)).ok, true);
  const d = await create({ CapAdd: 'NET_ADMIN' }, vm);
  assert.ok(d.ok);
  if (d.ok) assert.deepEqual((JSON.parse(d.body.toString()) as { HostConfig: { CapAdd: unknown } }).HostConfig.CapAdd, ['NET_ADMIN']);
  const bad = await create({ Privileged: 'true' }, vm);
  assert.equal(bad.ok, false, 'a Privileged that is not a boolean is refused as dockerd would refuse it');
});

test('namespace backend: a platform of another architecture is refused, the native one passes', () => {
  assert.equal(nativeDockerArch('x64'), 'amd64');
  assert.equal(nativeDockerArch('arm64'), 'arm64');
  assert.equal(platformRefusal([['platform', 'linux/amd64']], 'amd64'), undefined);
  assert.equal(platformRefusal([['name', 'x'], ['platform', '']], 'amd64'), undefined);
  assert.match(platformRefusal([['platform', 'linux/arm64']], 'amd64') ?? '', /"linux\/arm64" cannot run with the namespace backend.*amd64 programs only.*berth start --backend vm/);
  assert.match(platformRefusal([['platform', 'linux/amd64,linux/arm/v7']], 'amd64') ?? '', /linux\/arm\/v7/);
  assert.match(platformRefusal([['platform', 'LINUX/ARM64']], 'amd64') ?? '', /LINUX\/ARM64/);
});
