import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { VmController } from './vm-controller.js';
import { guestNetwork } from './guest-network.js';
import { resolvePaths, type BerthPaths } from '../settings/paths.js';
import { readSettings } from '../settings/settings.js';
import { silentLogger } from '../util/log.js';
import { BerthError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import { FakeDriver, fakeImageSource } from '../../test/support/fake-vm.js';

/**
 * The state machine against a fake driver (docs/backends.md "Testing"): the session, the Docker
 * API proxy and the teardown are the real ones; the guest is an in-process agent.
 */
interface Rig {
  paths: BerthPaths;
  driver: FakeDriver;
  images: ReturnType<typeof fakeImageSource>;
  vm: VmController;
  events: ProgressEvent[];
  dir: string;
}

async function rig(): Promise<Rig> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-vmc-'));
  const paths = resolvePaths({ BERTH_HOME: path.join(dir, 'h'), BERTH_CACHE: path.join(dir, 'c') });
  await fs.mkdir(paths.runDir, { recursive: true });
  await fs.mkdir(paths.logsDir, { recursive: true });
  // No translator and no shares: the fake guest has no network; the Docker socket in the home.
  await fs.writeFile(paths.settings, JSON.stringify({ 'network.backend': 'qemu-user', shares: [], 'docker.cliPlugins': false, startTimeoutSec: 10, stopTimeoutSec: 2 }));
  process.env.DOCKER_CONFIG = path.join(dir, 'docker-config');
  const driver = new FakeDriver(paths.controlSocket, paths.dataDisk);
  const images = fakeImageSource();
  return { paths, driver, images, vm: new VmController(paths, images, { vm: driver }, silentLogger, 300), events: [], dir };
}

async function done(r: Rig): Promise<void> {
  if (r.vm.vmState === 'running') await r.vm.stop(() => {});
  await fs.rm(r.dir, { recursive: true, force: true });
}

function ping(socketPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ socketPath, path: '/_ping' }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    }).on('error', reject);
  });
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

test('start: steps in order, running, the Docker API answers on the host socket; stop: shutdown asked, nothing left', async () => {
  const r = await rig();
  try {
    const status = await r.vm.start((e) => r.events.push(e));
    assert.equal(status.state, 'running');
    assert.equal(status.accelerator, 'fake');
    assert.equal(status.qemuPid, r.driver.guests[0]!.pid);
    assert.equal(status.enginePack?.id, '26');
    const steps = r.events.filter((e) => e.type === 'step-end').map((e) => (e as { id: string }).id);
    assert.deepEqual(steps, ['settings', 'disk', 'engine.data', 'vm.boot', 'engine', 'api']);
    assert.deepEqual(status.lastStart?.phases.map((p) => p.id), steps);
    assert.equal(await ping(r.paths.defaultDockerSocket), 200);
    assert.equal(r.vm.requireSession().info?.bootId, `boot-${r.driver.guests[0]!.pid}`);

    const session = r.vm.requireSession();
    const stopped = await r.vm.stop(() => {});
    assert.equal(stopped.state, 'stopped');
    assert.throws(() => session.openDocker(), /not connected/, 'the session is closed');
    assert.deepEqual(r.driver.guests[0]!.calls.filter((c) => c === 'system.shutdown'), ['system.shutdown']);
    assert.ok(r.driver.guests[0]!.hasExited);
    assert.equal(await exists(r.paths.defaultDockerSocket), false, 'the Docker socket is removed');
    assert.equal(await exists(r.paths.vmStateFile), false);
    assert.ok(r.driver.cleanups >= 1);
    assert.throws(() => r.vm.requireSession(), (e: unknown) => e instanceof BerthError && e.code === 'VM_NOT_RUNNING');
  } finally {
    await done(r);
  }
});

test('a start issued during a start joins it (one boot); a stop during a start is refused with VM_BUSY', async () => {
  const r = await rig();
  try {
    const first = r.vm.start(() => {});
    const joinedEvents: ProgressEvent[] = [];
    const second = r.vm.start((e) => joinedEvents.push(e));
    await assert.rejects(r.vm.stop(() => {}), (e: unknown) => e instanceof BerthError && e.code === 'VM_BUSY');
    const [a, b] = await Promise.all([first, second]);
    assert.equal(a.state, 'running');
    assert.equal(b.state, 'running');
    assert.equal(r.driver.guests.length, 1);
    assert.equal(r.images.ensured, 1);
    assert.ok(joinedEvents.some((e) => e.type === 'step-end'), 'the joined caller sees the progress');
    const again: ProgressEvent[] = [];
    assert.equal((await r.vm.start((e) => again.push(e))).state, 'running');
    assert.ok(again.some((e) => e.type === 'note' && /already running/.test(e.message)));
    assert.equal(r.driver.guests.length, 1);
  } finally {
    await done(r);
  }
});

test('a guest that dies while running: failed with its error and the console tail, nothing served; start works again', async () => {
  const r = await rig();
  try {
    await r.vm.start(() => {});
    r.driver.guests[0]!.crash();
    await waitFor(async () => (await r.vm.status()).state === 'failed');
    const s = await r.vm.status();
    assert.equal(s.failure?.code, 'QEMU_EXITED');
    assert.match(String(s.failure?.details?.consoleTail), /fake console/);
    assert.match(s.failure?.hint ?? '', /berth start/);
    assert.equal(await exists(r.paths.defaultDockerSocket), false);
    assert.equal((await r.vm.start(() => {})).state, 'running');
    assert.equal(r.driver.guests.length, 2);
    assert.equal((await r.vm.status()).failure, null);
  } finally {
    await done(r);
  }
});

test('a boot that fails: the start rejects with the guest\'s error, no attachment or process is left, stop resets to stopped', async () => {
  const r = await rig();
  try {
    r.driver.behaviour = { exitDuringBoot: 0, agentSilent: true };
    await assert.rejects(r.vm.start(() => {}), (e: unknown) => e instanceof BerthError && e.code === 'QEMU_EXITED' && /fake console/.test(String(e.details?.consoleTail)));
    assert.equal(r.vm.vmState, 'failed');
    assert.equal(r.driver.openAttachments, 0);
    assert.ok(r.driver.guests.every((g) => g.hasExited));
    assert.equal(await exists(r.paths.defaultDockerSocket), false);
    assert.equal((await r.vm.stop(() => {})).state, 'stopped');
    assert.equal((await r.vm.status()).failure, null);

    // The engine fails after the agent connected: ENGINE_FAILED, and the guest is forced off.
    r.driver.behaviour = { engineFails: true };
    await assert.rejects(r.vm.start(() => {}), (e: unknown) => e instanceof BerthError && e.code === 'ENGINE_FAILED');
    assert.ok(r.driver.guests.every((g) => g.hasExited));
    assert.equal(r.driver.openAttachments, 0);

    // A failure after the boot succeeded (the Docker API does not answer through the host socket):
    // the controller forces the guest off itself.
    r.driver.behaviour = { apiFails: true };
    await assert.rejects(r.vm.start(() => {}), (e: unknown) => e instanceof BerthError && e.code === 'ENGINE_FAILED' && /HTTP 500/.test(e.message));
    assert.ok(r.driver.guests.every((g) => g.hasExited), 'no guest left running');
    assert.equal(await exists(r.paths.defaultDockerSocket), false);
  } finally {
    await done(r);
  }
});

test('a stop the guest ignores is forced, and says so', async () => {
  const r = await rig();
  try {
    r.driver.behaviour = { ignoreShutdown: true };
    await r.vm.start(() => {});
    const events: ProgressEvent[] = [];
    const s = await r.vm.stop((e) => events.push(e));
    assert.equal(s.state, 'stopped');
    assert.ok(r.driver.guests[0]!.hasExited);
    assert.ok(events.some((e) => e.type === 'step-end' && e.id === 'stop.force'));
    assert.match(s.warnings.join('\n'), /Last stop was forced: the VM did not power off/);
  } finally {
    await done(r);
  }
});

test('adopt after a daemon restart: the same guest, its saved start, the Docker API served again', async () => {
  const r = await rig();
  try {
    const guest = await r.driver.launch();
    const settings = await readSettings(r.paths.settings);
    const startedAt = new Date(Date.now() - 60_000).toISOString();
    await fs.writeFile(r.paths.vmStateFile, JSON.stringify({ startedAt, accelerator: 'kvm', image: await r.images.ensure('26', () => {}), bootId: 'x', network: guestNetwork(settings, r.paths) }));
    r.driver.leftRunning = guest;
    await r.vm.adoptExisting();
    const s = await r.vm.status();
    assert.equal(s.state, 'running');
    assert.equal(s.qemuPid, guest.pid);
    assert.equal(s.accelerator, 'kvm');
    assert.equal(s.startedAt, startedAt);
    assert.equal(await ping(r.paths.defaultDockerSocket), 200);
    assert.equal(r.driver.guests.length, 1, 'nothing new was booted');
    assert.equal((await r.vm.stop(() => {})).state, 'stopped');
    assert.ok(guest.hasExited);
  } finally {
    await done(r);
  }
});

test('adopt of a guest that dies before answering: stopped, with a warning, nothing served', async () => {
  const r = await rig();
  try {
    r.driver.behaviour = { agentSilent: true, exitDuringBoot: 50 };
    r.driver.leftRunning = await r.driver.launch();
    await r.vm.adoptExisting();
    const s = await r.vm.status();
    assert.equal(s.state, 'stopped');
    assert.match(s.warnings.join('\n'), /An earlier VM was found but did not answer/);
    assert.equal(await exists(r.paths.defaultDockerSocket), false);
    assert.ok(r.vm.idle);
  } finally {
    await done(r);
  }
});

test('the engine switch: an upgrade snapshots the data store first; an older engine is refused before anything boots', async () => {
  const r = await rig();
  try {
    await fs.mkdir(r.paths.disksDir, { recursive: true });
    await fs.writeFile(r.paths.dataDisk, '');
    await fs.writeFile(r.driver.dataStore.engineStamp, JSON.stringify({ pack: '20.10', engineVersion: '20.10.24', writtenAt: new Date().toISOString() }));
    await r.vm.start(() => {});
    assert.equal(r.driver.dataStore.snapshots.length, 1);
    assert.match(r.driver.dataStore.snapshots[0]!, /^berth-before-26-/);
    const stamp = JSON.parse(await fs.readFile(r.driver.dataStore.engineStamp, 'utf8')) as { pack: string; snapshot?: { pack: string } };
    assert.equal(stamp.pack, '26');
    assert.equal(stamp.snapshot?.pack, '20.10');
    await r.vm.stop(() => {});

    await fs.writeFile(r.driver.dataStore.engineStamp, JSON.stringify({ pack: '99', engineVersion: '99.0', writtenAt: new Date().toISOString() }));
    const booted = r.driver.guests.length;
    await assert.rejects(r.vm.start(() => {}), (e: unknown) => e instanceof BerthError && e.code === 'ENGINE_DOWNGRADE');
    assert.equal(r.driver.guests.length, booted, 'no guest was launched');
  } finally {
    await done(r);
  }
});

async function waitFor(cond: () => Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((res) => setTimeout(res, 20));
  }
}
