import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { busyboxRootfsTar, dockerCli, E2E_BACKEND, type Instance, newInstance, run, type RunResult, VM_ONLY } from './harness.js';
import { debianImageTar } from './images.js';

/**
 * Engine version packs on the real VM (docs/engine-packs.md): the default pack (Docker 26) with
 * the host's docker CLI using the pack's compose and buildx plugins, other architectures through
 * binfmt_misc, and an upgrade from the Docker 20.10 pack that keeps the data, refuses the way back
 * and rolls back from the snapshot.
 */
const BUSYBOX = 'berth-test/busybox:1';
const ARM64 = 'berth-test/arm64:1';

function ok(r: RunResult, what: string): string {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function httpGet(port: number, file: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/${file}`, { signal: AbortSignal.timeout(10_000) });
  return res.text();
}

describe('engine packs: Docker 26 with compose, buildx and other architectures', { timeout: 1_800_000 }, () => {
  let b: Instance;
  /** The host's docker CLI with DOCKER_HOST set: compose and buildx plugins need no -H. */
  let docker: (args: string[], opts?: { cwd?: string; timeoutMs?: number }) => Promise<RunResult>;
  /** A buildx plugin of the user's own (a link to the pack's binary elsewhere): berth must leave it. */
  let userBuildx: string;
  before(async () => {
    b = newInstance('engine');
    ok(await b.berth(['image', 'build']), 'image build');
    const pack = JSON.parse(ok(await b.berth(['image', 'build', '--json']), 'image build --json').trim().split('\n').pop()!).pack;
    userBuildx = path.join(b.env.DOCKER_CONFIG!, 'cli-plugins', 'docker-buildx');
    fs.mkdirSync(path.dirname(userBuildx), { recursive: true });
    fs.symlinkSync(path.join(pack.dir, 'cli-plugins', 'docker-buildx'), userBuildx);
    ok(await b.berth(['start']), 'berth start');
    const host = await b.dockerHost();
    docker = (args, opts = {}) => run(dockerCli(), args, { env: { ...b.env, DOCKER_HOST: host }, timeoutMs: opts.timeoutMs ?? 600_000, ...(opts.cwd ? { cwd: opts.cwd } : {}) });
    ok(await b.docker(['import', '-', BUSYBOX], { input: await busyboxRootfsTar() }), 'docker import');
  });
  after(async () => {
    await b.cleanup();
  });

  test('the default engine is Docker 26, named by status and version', async () => {
    const v = ok(await docker(['version', '--format', '{{.Server.Version}}']), 'docker version');
    assert.match(v.trim(), /^26\./);
    const s = JSON.parse(ok(await b.berth(['status', '--json']), 'status'));
    assert.equal(s.enginePack.id, '26');
    assert.match(s.enginePack.dockerVersion, /^26\./);
    assert.match(ok(await b.berth(['status']), 'status'), /engine: +26 \(Docker 26\./);
    assert.match(ok(await b.berth(['version']), 'version'), /running VM +engine 26 \(Docker 26\./);
    const list = JSON.parse(ok(await b.berth(['engine', 'list', '--json']), 'engine list'));
    const row = list.engines.find((e: { id: string }) => e.id === '26');
    assert.deepEqual([row.selected, row.running, row.built, row.wroteData], [true, true, true, true]);
  });

  test('compose and buildx plugins are linked for the host CLI, and only where the user has none', async () => {
    const s = JSON.parse(ok(await b.berth(['status', '--json']), 'status'));
    const byName = Object.fromEntries(s.cliPlugins.map((p: { name: string; state: string }) => [p.name, p.state]));
    assert.deepEqual(byName, { 'docker-compose': 'linked', 'docker-buildx': 'user' });
    const link = path.join(b.env.DOCKER_CONFIG!, 'cli-plugins', 'docker-compose');
    assert.equal(fs.readlinkSync(link), path.join(b.home, 'cli-plugins', 'docker-compose'));
    assert.notEqual(fs.readlinkSync(userBuildx), path.join(b.home, 'cli-plugins', 'docker-buildx'), "the user's plugin is untouched");
    assert.ok(!fs.existsSync(path.join(b.home, 'cli-plugins', 'docker-buildx')), 'no copy made for a plugin the user has');
    assert.match(ok(await docker(['compose', 'version']), 'docker compose version'), /v?2\.26/);
    assert.match(ok(await docker(['buildx', 'version']), 'docker buildx version'), /0\.13/);
  });

  test('a compose v2 project: build, two services, service-name DNS, a published port, a bind mount, a named volume', async () => {
    const dir = fs.mkdtempSync('/tmp/berth-compose-');
    try {
      const port = await freePort();
      fs.mkdirSync(path.join(dir, 'web'));
      fs.mkdirSync(path.join(dir, 'site'));
      fs.writeFileSync(path.join(dir, 'site', 'index.html'), 'first version\n');
      fs.writeFileSync(path.join(dir, 'web', 'Dockerfile'), `FROM ${BUSYBOX}\nRUN echo built-by-compose > /built\nCMD ["httpd", "-f", "-p", "80", "-h", "/www"]\n`);
      fs.writeFileSync(
        path.join(dir, 'compose.yaml'),
        [
          'services:',
          '  web:',
          '    build: ./web',
          '    image: berth-test/compose-web:1',
          `    ports: ["127.0.0.1:${port}:80"]`,
          '    volumes: ["./site:/www"]',
          '  client:',
          `    image: ${BUSYBOX}`,
          '    command: ["sleep", "3600"]',
          '    volumes: ["data:/data"]',
          'volumes:',
          '  data: {}',
          '',
        ].join('\n'),
      );
      const compose = (args: string[]) => docker(['compose', '-p', 'berthe2e', ...args], { cwd: dir });
      ok(await compose(['up', '-d', '--build']), 'compose up --build');
      assert.equal(ok(await compose(['exec', '-T', 'web', 'cat', '/built']), 'exec web').trim(), 'built-by-compose');
      // Service-name DNS on the project network, and the bind mount's content.
      assert.equal(ok(await compose(['exec', '-T', 'client', 'timeout', '10', 'wget', '-qO-', 'http://web/index.html']), 'client → web').trim(), 'first version');
      // The published port answers on the host's loopback; an edit on the host shows at once.
      assert.equal((await httpGet(port, 'index.html')).trim(), 'first version');
      fs.writeFileSync(path.join(dir, 'site', 'index.html'), 'second version\n');
      assert.equal((await httpGet(port, 'index.html')).trim(), 'second version');
      // The named volume outlives the containers.
      ok(await compose(['exec', '-T', 'client', 'sh', '-c', 'echo kept > /data/x']), 'write the volume');
      ok(await compose(['down']), 'compose down');
      ok(await compose(['up', '-d']), 'compose up again');
      assert.equal(ok(await compose(['exec', '-T', 'client', 'cat', '/data/x']), 'read the volume').trim(), 'kept');
      ok(await compose(['down', '-v']), 'compose down -v');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('docker build uses BuildKit with FROM a local image, offline; so does docker buildx build', async () => {
    const dir = fs.mkdtempSync('/tmp/berth-build-');
    try {
      fs.writeFileSync(path.join(dir, 'Dockerfile'), `FROM ${BUSYBOX}\nRUN echo from-buildkit > /out\n`);
      const r = await docker(['build', '--progress=plain', '-t', 'berth-test/bk:1', dir]);
      ok(r, 'docker build');
      // BuildKit's plain progress numbers its steps ("#5 [2/2] RUN ..."); the legacy builder prints "Step 2/2".
      assert.match(r.stdout + r.stderr, /#\d+ \[2\/2\] RUN echo from-buildkit/);
      assert.doesNotMatch(r.stdout + r.stderr, /Step 2\/2/);
      assert.equal(ok(await docker(['run', '--rm', 'berth-test/bk:1', 'cat', '/out']), 'run').trim(), 'from-buildkit');
      const bx = await docker(['buildx', 'build', '--progress=plain', '--load', '-t', 'berth-test/bx:1', dir]);
      ok(bx, 'docker buildx build');
      assert.match(bx.stderr, /#\d+ \[2\/2\] RUN echo from-buildkit/);
      assert.equal(ok(await docker(['run', '--rm', 'berth-test/bx:1', 'cat', '/out']), 'run').trim(), 'from-buildkit');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the pack's emulators are registered with F and C; none for the machine's own architecture", { skip: VM_ONLY }, async () => {
    const list = ok(await b.berth(['shell', '--', 'ls', '/proc/sys/fs/binfmt_misc']), 'ls binfmt_misc').split(/\s+/);
    for (const arch of ['aarch64', 'arm', 'riscv64', 'ppc64le', 's390x']) assert.ok(list.includes(`qemu-${arch}`), `qemu-${arch} registered`);
    assert.ok(!list.some((e) => /x86_64|i386/.test(e)), 'the native architecture is not registered');
    const entry = ok(await b.berth(['shell', '--', 'cat', '/proc/sys/fs/binfmt_misc/qemu-aarch64']), 'cat entry');
    assert.match(entry, /^enabled$/m);
    assert.match(entry, /^flags: [A-Z]*F[A-Z]*$/m);
    assert.match(entry, /^flags: [A-Z]*C[A-Z]*$/m);
  });

  test('an arm64 image runs: uname -m is aarch64, and a set-uid program gets root as sudo does', { skip: VM_ONLY }, async () => {
    const tar = await debianImageTar(['coreutils'], { arch: 'arm64', setuid: ['id'] });
    ok(await b.docker(['import', '--platform', 'linux/arm64', '-', ARM64], { input: tar }), 'import arm64');
    assert.equal(ok(await docker(['image', 'inspect', '--format', '{{.Architecture}}', ARM64]), 'inspect').trim(), 'arm64');
    assert.equal(ok(await docker(['run', '--rm', '--platform', 'linux/arm64', ARM64, 'uname', '-m']), 'uname').trim(), 'aarch64');
    // Without binfmt's C flag the kernel would run the emulator with the caller's credentials
    // and the set-uid bit would be ignored: uid 1000 would stay 1000.
    assert.equal(ok(await docker(['run', '--rm', '--platform', 'linux/arm64', '--user', '1000:1000', ARM64, 'id-suid', '-u']), 'set-uid id').trim(), '0');
    assert.equal(ok(await docker(['run', '--rm', '--platform', 'linux/arm64', '--user', '1000:1000', ARM64, 'id', '-u']), 'plain id').trim(), '1000');
  });

  test('arm/v7, ppc64le and s390x images run too (Debian 12 has no riscv64 packages to build one from)', { skip: VM_ONLY }, async () => {
    const cases = [
      { deb: 'armhf', platform: 'linux/arm/v7', machine: 'armv7l' },
      { deb: 'ppc64el', platform: 'linux/ppc64le', machine: 'ppc64le' },
      { deb: 's390x', platform: 'linux/s390x', machine: 's390x' },
    ] as const;
    for (const c of cases) {
      const tag = `berth-test/${c.deb}:1`;
      ok(await b.docker(['import', '--platform', c.platform, '-', tag], { input: await debianImageTar([], { arch: c.deb }) }), `import ${c.deb}`);
      assert.equal(ok(await docker(['run', '--rm', '--platform', c.platform, tag, 'uname', '-m']), `uname on ${c.platform}`).trim(), c.machine);
    }
  });

  test('docker build --platform linux/arm64 runs a RUN step under emulation', { skip: VM_ONLY }, async () => {
    const dir = fs.mkdtempSync('/tmp/berth-arm64-');
    try {
      fs.writeFileSync(path.join(dir, 'Dockerfile'), `FROM ${ARM64}\nRUN uname -m > /arch\n`);
      ok(await docker(['buildx', 'build', '--platform', 'linux/arm64', '--progress=plain', '--load', '-t', 'berth-test/arm64-built:1', dir]), 'build arm64');
      assert.equal(ok(await docker(['run', '--rm', '--platform', 'linux/arm64', 'berth-test/arm64-built:1', 'cat', '/arch']), 'run').trim(), 'aarch64');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('engine upgrade: 20.10 → 26 keeps the data; the way back is refused, then rolled back', { timeout: 1_800_000 }, () => {
  let b: Instance;
  before(() => {
    b = newInstance('upgrade');
  });
  after(async () => {
    await b.cleanup();
  });

  test('under 20.10: an image, a container, a volume and a network', async () => {
    ok(await b.berth(['settings', 'set', 'engine.version', '20.10']), 'settings set');
    ok(await b.berth(['start']), 'start 20.10');
    assert.match(ok(await b.docker(['version', '--format', '{{.Server.Version}}']), 'version').trim(), /^20\.10\./);
    ok(await b.docker(['import', '-', BUSYBOX], { input: await busyboxRootfsTar() }), 'import');
    ok(await b.docker(['volume', 'create', 'keep']), 'volume create');
    ok(await b.docker(['network', 'create', 'keepnet']), 'network create');
    ok(await b.docker(['run', '--rm', '-v', 'keep:/v', BUSYBOX, 'sh', '-c', 'echo written-by-20.10 > /v/f']), 'write the volume');
    ok(await b.docker(['create', '--name', 'keeper', '--network', 'keepnet', '-v', 'keep:/v', BUSYBOX, 'cat', '/v/f']), 'create');
    ok(await b.berth(['stop']), 'stop');
  });

  test('berth engine use 26, then start: everything is there and the container restarts', async () => {
    const use = ok(await b.berth(['engine', 'use', '26']), 'engine use 26');
    assert.match(use, /snapshot/);
    const start = ok(await b.berth(['start']), 'start 26');
    assert.match(start, /upgrade from 20\.10/);
    const list = JSON.parse(ok(await b.berth(['engine', 'list', '--json']), 'engine list'));
    assert.equal(list.dataDisk.pack, '26');
    assert.equal(list.dataDisk.snapshot.pack, '20.10');
    if (E2E_BACKEND === 'vm') assert.match(ok(await run('qemu-img', ['info', '--force-share', path.join(b.home, 'disks', 'data.qcow2')]), 'qemu-img info'), new RegExp(list.dataDisk.snapshot.name));
    else assert.ok(fs.existsSync(path.join(b.home, 'disks', `data.img.snapshot.${list.dataDisk.snapshot.name}`)), 'the snapshot is a copy beside the data store');
    assert.match(ok(await b.docker(['version', '--format', '{{.Server.Version}}']), 'version').trim(), /^26\./);
    assert.match(ok(await b.docker(['image', 'ls', '--format', '{{.Repository}}:{{.Tag}}']), 'images'), /berth-test\/busybox:1/);
    assert.match(ok(await b.docker(['volume', 'ls', '--format', '{{.Name}}']), 'volumes'), /^keep$/m);
    assert.match(ok(await b.docker(['network', 'ls', '--format', '{{.Name}}']), 'networks'), /^keepnet$/m);
    ok(await b.docker(['start', '-a', 'keeper']), 'start the old container');
    assert.equal(ok(await b.docker(['logs', 'keeper']), 'logs').trim().split('\n').pop(), 'written-by-20.10');
    ok(await b.docker(['run', '--rm', '-v', 'keep:/v', BUSYBOX, 'sh', '-c', 'echo written-by-26 > /v/f']), 'write under 26');
  });

  test('going back to 20.10 is refused with the ways back; rollback restores the data 20.10 left', async () => {
    const refused = await b.berth(['engine', 'use', '20.10']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /older than engine 26/);
    assert.match(refused.stderr, /berth engine rollback/);
    assert.match(refused.stderr, /--force/);
    assert.equal(JSON.parse(ok(await b.berth(['settings', 'get', 'engine.version', '--json']), 'get'))['engine.version'], '26', 'a refused switch changes nothing');
    const running = await b.berth(['engine', 'rollback']);
    assert.equal(running.code, 1, 'rollback refuses while the VM runs');
    assert.match(running.stderr, /berth stop/);
    ok(await b.berth(['stop']), 'stop');

    // The daemon checks too: the setting changed behind `engine use`'s back still does not boot 20.10.
    ok(await b.berth(['settings', 'set', 'engine.version', '20.10']), 'settings set');
    const start = await b.berth(['start']);
    assert.equal(start.code, 1, 'a start of an older engine is refused');
    assert.match(start.stderr, /older than engine 26/);
    const list = JSON.parse(ok(await b.berth(['engine', 'list', '--json']), 'engine list'));
    assert.equal(list.dataDisk.pack, '26', 'the refused start did not record 20.10');
    assert.equal(list.dataDisk.snapshot.pack, '20.10', 'the snapshot taken before the upgrade is kept');

    ok(await b.berth(['engine', 'rollback']), 'rollback');
    const after = JSON.parse(ok(await b.berth(['engine', 'list', '--json']), 'engine list'));
    assert.equal(after.dataDisk.pack, '20.10');
    assert.equal(after.dataDisk.snapshot, undefined, 'the snapshot was used up');
    assert.equal(after.engines.find((e: { id: string }) => e.id === '20.10').selected, true);
    ok(await b.berth(['start']), 'start after rollback');
    assert.match(ok(await b.docker(['version', '--format', '{{.Server.Version}}']), 'version').trim(), /^20\.10\./);
    assert.equal(ok(await b.docker(['run', '--rm', '-v', 'keep:/v', BUSYBOX, 'cat', '/v/f']), 'read').trim(), 'written-by-20.10');
  });
});
