import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { busyboxRootfsTar, dockerCli, E2E_BACKEND, guestPids, type Instance, newInstance, run } from './harness.js';

/**
 * The main path on the real VM (TCG here): start, the docker CLI through berth's socket (version,
 * import, run, build, attach with stdin, a TTY session, streaming logs), berth shell and logs, stop,
 * and a second start that still has the image.
 */
describe('lifecycle', { timeout: 1_200_000 }, () => {
  let b: Instance;
  before(() => {
    b = newInstance('life');
  });
  after(async () => {
    await b.cleanup();
  });

  test('berth start boots the VM and reports each phase', async () => {
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, E2E_BACKEND === 'vm' ? /Launch QEMU/ : /Launch the namespaces/);
    assert.match(r.stdout, /Start the Docker engine/);
    assert.match(r.stdout, /berth is running/);
    assert.equal(guestPids(b.home).length, 1);
  });

  test('status --json has the documented fields', async () => {
    const r = await b.berth(['status', '--json']);
    assert.equal(r.code, 0);
    const s = JSON.parse(r.stdout);
    assert.equal(s.state, 'running');
    assert.equal(s.dockerHost, `unix://${path.join(b.home, 'run', 'docker.sock')}`);
    assert.equal(s.backend, E2E_BACKEND);
    assert.match(s.accelerator, E2E_BACKEND === 'vm' ? /^(kvm|tcg)$/ : /^native$/);
    assert.ok(Number.isInteger(s.cpus) && s.cpus > 0);
    assert.ok(Number.isInteger(s.memoryMiB) && s.memoryMiB >= 512);
    assert.match(s.imageVersion, /^[0-9a-f]{12}$/);
    assert.equal(s.engine.state, 'ready');
  });

  test('a second start is a no-op that says so', async () => {
    const r = await b.berth(['start']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /already running/);
    assert.equal(guestPids(b.home).length, 1);
  });

  test('docker version talks to the engine in the VM', async () => {
    const r = await b.docker(['version', '--format', '{{.Server.Version}} {{.Server.Os}}']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.trim(), /^\d+\.\d+\.\d+\S* linux$/);
  });

  test('docker import of a busybox root filesystem, then run --rm echo', async () => {
    const tar = await busyboxRootfsTar();
    const imp = await b.docker(['import', '-', 'berth-test/busybox:1'], { input: tar });
    assert.equal(imp.code, 0, imp.stderr);
    const r = await b.docker(['run', '--rm', 'berth-test/busybox:1', 'echo', 'hello from berth']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'hello from berth');
  });

  test('docker build of a two-line Dockerfile', async () => {
    const ctx = fs.mkdtempSync('/tmp/berth-build-');
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM berth-test/busybox:1\nRUN echo built > /built.txt\n');
    const r = await run(dockerCli(), ['-H', await b.dockerHost(), 'build', '-t', 'berth-test/built:1', ctx], { env: { ...b.env, DOCKER_BUILDKIT: '0' } });
    assert.equal(r.code, 0, r.stderr);
    const c = await b.docker(['run', '--rm', 'berth-test/built:1', 'cat', '/built.txt']);
    assert.equal(c.stdout.trim(), 'built');
    fs.rmSync(ctx, { recursive: true, force: true });
  });

  test('attach with stdin (-i) through the mux, including stdin EOF', async () => {
    const r = await b.docker(['run', '--rm', '-i', 'berth-test/busybox:1', 'sh', '-c', 'tr a-z A-Z; echo done'], { input: 'piped through the mux\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'PIPED THROUGH THE MUX\ndone\n');
  });

  test('docker run -it in a pseudo-terminal', async () => {
    // `script` gives the docker CLI a real TTY, as a user's terminal would.
    const host = await b.dockerHost();
    const cmd = `${dockerCli()} -H ${host} run --rm -it berth-test/busybox:1 sh -c 'tty; stty size; exit 3'`;
    const r = await run('script', ['-qec', cmd, '/dev/null'], { env: { ...b.env, COLUMNS: '100', LINES: '30' }, input: '' });
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(r.stdout, /\/dev\/pts\/\d+/);
  });

  test('streaming: docker logs -f delivers lines while the container runs', async () => {
    const id = (await b.docker(['run', '-d', 'berth-test/busybox:1', 'sh', '-c', 'for i in 1 2 3 4 5; do echo line$i; sleep 1; done'])).stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    const r = await b.docker(['logs', '-f', id], { timeoutMs: 60_000 });
    assert.equal(r.stdout, 'line1\nline2\nline3\nline4\nline5\n');
    await b.docker(['rm', '-f', id]);
  });

  test('berth shell runs a command in the VM and passes its exit code back', async () => {
    const ok = await b.berth(['shell', '--', 'sh', '-c', 'uname -s; cat /proc/1/comm']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^Linux\ntini\n$/);
    const fail = await b.berth(['shell', '--', 'sh', '-c', 'echo to-stderr >&2; exit 42']);
    assert.equal(fail.code, 42);
    assert.equal(fail.stderr.trim(), 'to-stderr');
    const stdin = await b.berth(['shell', '--', 'cat'], { input: 'stdin reaches the VM' });
    assert.equal(stdin.stdout, 'stdin reaches the VM');
  });

  test('dockerd listens on no TCP port inside the VM', async () => {
    const r = await b.berth(['shell', '--', 'sh', '-c', 'cat /proc/net/tcp /proc/net/tcp6']);
    assert.equal(r.code, 0, r.stderr);
    const listening = r.stdout.split('\n').filter((l) => / 0A /.test(l));
    assert.deepEqual(listening, [], `TCP listeners in the guest:\n${listening.join('\n')}`);
  });

  test('berth logs shows the console, engine and agent logs', async () => {
    const vm = await b.berth(['logs', 'vm']);
    assert.match(vm.stdout, /berth-boot: stage2/);
    const engine = await b.berth(['logs', 'engine', '-n', 'all']);
    assert.match(engine.stdout, /API listen on \/run\/docker.sock/);
    const agent = await b.berth(['logs', 'agent', '-n', 'all']);
    assert.match(agent.stdout, /engine state/);
  });

  test('stop, then start again: the images are still there', async () => {
    const stop = await b.berth(['stop']);
    assert.equal(stop.code, 0, stop.stderr);
    assert.deepEqual(guestPids(b.home), []);
    const st = JSON.parse((await b.berth(['status', '--json'])).stdout);
    assert.equal(st.state, 'stopped');
    const start = await b.berth(['start']);
    assert.equal(start.code, 0, start.stderr);
    const imgs = await b.docker(['images', '--format', '{{.Repository}}:{{.Tag}}']);
    assert.match(imgs.stdout, /berth-test\/busybox:1/);
    assert.match(imgs.stdout, /berth-test\/built:1/);
  });
});
