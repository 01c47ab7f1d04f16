import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { daemonPid, newInstance, sleep, type Instance } from './harness.js';
import { debianImageTar } from './images.js';
import type { PortReport } from '../../src/daemon/api-types.js';
import { close, freePort, hostHasIpv6Loopback, httpGet, isFree, listen, socketInodes, tcpListeners, tcpListenersOf, udpExchange, waitForBody, waitForRefused } from './net-helpers.js';

/**
 * Published ports on the real VM (docs/network.md "Port publishing"): `docker run -p` makes the
 * berth daemon listen on the host and carry connections to the container. TCP and UDP, `-P`,
 * explicit addresses, several containers, a host port another program holds, and a VM restart.
 * Host ports are the ones the issue names (8080, 5353) when they are free here, else free ones.
 */

const IMAGE = 'berth-test/ports:1';
const tag = randomBytes(4).toString('hex');

/** A busybox httpd per port, each serving its own body (`<body>-<port>`); the first in the foreground. */
function httpd(body: string, ports: number[] = [80]): string[] {
  const setup = ports.map((p) => `mkdir -p /w${p} && echo ${body}-${p} > /w${p}/index.html`).join(' && ');
  const background = ports
    .slice(1)
    .map((p) => `httpd -p ${p} -h /w${p} && `)
    .join('');
  return ['sh', '-c', `${setup} && ${background}exec httpd -f -p ${ports[0]} -h /w${ports[0]}`];
}

describe('ports', { timeout: 1_200_000 }, () => {
  let b: Instance;
  /** Containers a test started, removed in after() if the test did not get to it. */
  const started = new Set<string>();

  const ports = async (): Promise<{ backend: string; forwards: PortReport[] }> => {
    const r = await b.berth(['ports', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  /** Polls `berth ports --json` until `pick` returns something (or throws after `withinMs`). */
  const waitForPorts = async <T>(pick: (f: PortReport[]) => T | undefined, withinMs: number, what: string): Promise<T> => {
    const t0 = Date.now();
    let last: PortReport[] = [];
    while (Date.now() - t0 < withinMs) {
      last = (await ports()).forwards;
      const v = pick(last);
      if (v !== undefined) return v;
      await sleep(100);
    }
    throw new Error(`${what} within ${withinMs} ms; berth ports: ${JSON.stringify(last, null, 1)}`);
  };
  const runDetached = async (name: string, args: string[]): Promise<string> => {
    started.add(name);
    const r = await b.docker(['run', '-d', '--name', name, ...args]);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    return id;
  };
  const remove = async (...names: string[]): Promise<void> => {
    const r = await b.docker(['rm', '-f', ...names]);
    assert.equal(r.code, 0, r.stderr);
    for (const n of names) started.delete(n);
  };
  const containerIp = async (name: string): Promise<string> => (await b.docker(['inspect', '-f', '{{.NetworkSettings.IPAddress}}', name])).stdout.trim();
  /** `docker port NAME` as guest port/proto → host port (the 0.0.0.0 and :: lines are one binding). */
  const dockerPort = async (name: string): Promise<Map<string, number>> => {
    const r = await b.docker(['port', name]);
    assert.equal(r.code, 0, r.stderr);
    const out = new Map<string, number>();
    for (const line of r.stdout.trim().split('\n')) {
      const m = /^(\d+\/(?:tcp|udp)) -> (?:0\.0\.0\.0|\[::\]|::|127\.0\.0\.1):(\d+)$/.exec(line);
      assert.ok(m, `unexpected docker port line: ${line}`);
      const prev = out.get(m[1]!);
      assert.ok(prev === undefined || prev === Number(m[2]), r.stdout);
      out.set(m[1]!, Number(m[2]));
    }
    return out;
  };

  before(async () => {
    b = newInstance('ports');
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    const imp = await b.docker(['import', '-', IMAGE], { input: await debianImageTar(['socat']) });
    assert.equal(imp.code, 0, imp.stderr);
  });

  after(async () => {
    if (!b) return;
    if (started.size > 0) await b.docker(['rm', '-f', ...started], { timeoutMs: 60_000 }).catch(() => {});
    await b.cleanup();
  });

  test('-p 8080:80 answers on the host 127.0.0.1:8080 within a second of docker run, and stops answering once the container stops', async (t) => {
    const port = await freePort('tcp', 8080);
    const body = `web-${tag}`;
    const id = await runDetached('web', ['-p', `${port}:80`, IMAGE, ...httpd(body)]);
    const since = performance.now(); // docker run -d has returned: the container is started
    const ms = await waitForBody(port, `${body}-80\n`, since, 15_000);
    t.diagnostic(`127.0.0.1:${port} answered ${ms.toFixed(0)} ms after docker run returned`);
    assert.ok(ms < 1000, `first answer ${ms.toFixed(0)} ms after docker run returned (want < 1000)`);

    const fwd = (await ports()).forwards.filter((f) => f.hostPort === port);
    assert.deepEqual(fwd, [{ proto: 'tcp', hostIp: '127.0.0.1', hostPort: port, guestIp: await containerIp('web'), guestPort: 80, containerId: id, containerName: 'web', state: 'listening' }]);
    if (hostHasIpv6Loopback()) {
      // Published without an address: also on ::1, so "localhost" works whichever family is tried first.
      const v6 = await httpGet(port, '::1');
      assert.deepEqual(v6, { status: 200, body: `${body}-80\n` });
    }

    const stop = await b.docker(['stop', '-t', '1', 'web']);
    assert.equal(stop.code, 0, stop.stderr);
    const goneMs = await waitForRefused(port, performance.now(), 3000);
    t.diagnostic(`refused ${goneMs.toFixed(0)} ms after docker stop returned`);
    assert.deepEqual((await ports()).forwards, []);
    await remove('web');
  });

  test('-p 5353:53/udp carries datagrams both ways (socat echo), each host client to its own answer', async () => {
    const port = await freePort('udp', 5353);
    await runDetached('udp', ['-p', `${port}:53/udp`, IMAGE, 'socat', 'UDP4-RECVFROM:53,fork', 'EXEC:cat']);
    await waitForPorts((f) => f.find((x) => x.proto === 'udp' && x.hostPort === port && x.state === 'listening'), 5000, 'the UDP forward is not listening');
    // socat may not be bound yet: the first exchange retries until the echo comes.
    assert.equal(await udpExchange(port, `first ${tag}\n`, 15_000), `first ${tag}\n`);
    const payloads = Array.from({ length: 8 }, (_, i) => `client ${i} ${randomBytes(6).toString('hex')}\n`);
    const answers = await Promise.all(payloads.map((p) => udpExchange(port, p, 10_000)));
    assert.deepEqual(answers, payloads);

    const fwd = (await ports()).forwards.filter((f) => f.hostPort === port);
    assert.equal(fwd.length, 1, JSON.stringify(fwd));
    assert.equal(fwd[0]!.proto, 'udp');
    assert.equal(fwd[0]!.guestPort, 53);
    assert.equal(fwd[0]!.containerName, 'udp');
    assert.equal(fwd[0]!.state, 'listening');
    assert.equal((await dockerPort('udp')).get('53/udp'), port);

    await remove('udp');
    await waitForPorts((f) => (f.length === 0 ? true : undefined), 5000, 'the UDP forward is still listed');
    assert.ok(await isFree('udp', port), `the host UDP port ${port} is released`);
  });

  test('-P publishes every exposed port on the random host port dockerd chose (berth ports --json = docker port)', async (t) => {
    const id = await runDetached('pub', ['-P', '--expose', '80', '--expose', '81', '--expose', '82', IMAGE, ...httpd('pub', [80, 81, 82])]);
    const mapping = await dockerPort('pub');
    assert.deepEqual([...mapping.keys()].sort(), ['80/tcp', '81/tcp', '82/tcp']);
    const fwds = await waitForPorts((f) => {
      const mine = f.filter((x) => x.containerId === id);
      return mine.length === 3 && mine.every((x) => x.state !== 'pending') ? mine : undefined;
    }, 5000, 'three settled forwards for the -P container');
    assert.deepEqual(new Map(fwds.map((f) => [`${f.guestPort}/${f.proto}`, f.hostPort])), mapping);
    const daemon = socketInodes(daemonPid(b.home)!);
    let reachable = 0;
    for (const f of fwds) {
      assert.equal(f.hostIp, '127.0.0.1');
      assert.equal(f.containerName, 'pub');
      if (f.state === 'failed') {
        // dockerd picks -P ports inside the VM and cannot know the host's: one another program
        // holds (another berth, say) must be reported, never taken over.
        const holders = tcpListeners().filter((l) => l.port === f.hostPort && !daemon.has(l.inode));
        assert.ok(holders.length > 0, `forward failed but nobody else holds ${f.hostPort}: ${f.error}`);
        assert.match(f.error ?? '', new RegExp(`port ${f.hostPort} on 127\\.0\\.0\\.1 is already in use`));
        t.diagnostic(`host port ${f.hostPort} (-P for ${f.guestPort}) is held by another program here: reported failed`);
        continue;
      }
      assert.equal(f.state, 'listening');
      await waitForBody(f.hostPort, `pub-${f.guestPort}\n`, performance.now(), 10_000);
      reachable++;
    }
    assert.ok(reachable >= 1, 'at least one -P port answers');
    await remove('pub');
  });

  test('-p 127.0.0.1:PORT:80 listens on 127.0.0.1 only', async () => {
    const port = await freePort('tcp');
    await runDetached('lo', ['-p', `127.0.0.1:${port}:80`, IMAGE, ...httpd('lo')]);
    await waitForBody(port, 'lo-80\n', performance.now(), 15_000);
    const fwd = (await ports()).forwards.filter((f) => f.hostPort === port);
    assert.equal(fwd.length, 1);
    assert.equal(fwd[0]!.hostIp, '127.0.0.1');
    assert.equal(fwd[0]!.state, 'listening');
    if (hostHasIpv6Loopback()) assert.deepEqual(await httpGet(port, '::1'), { error: 'ECONNREFUSED' }, 'an explicit 127.0.0.1 is not widened to ::1');
    const mine = tcpListenersOf(daemonPid(b.home)!).filter((l) => l.port === port);
    assert.deepEqual(
      mine.map((l) => l.address),
      ['127.0.0.1'],
    );
    await remove('lo');
  });

  const several = { def: 0, lo: 0, any: 0 };

  test('several containers published at once each answer with their own content under concurrent load', async () => {
    several.def = await freePort('tcp');
    several.lo = await freePort('tcp');
    several.any = await freePort('tcp');
    await runDetached('s-def', ['-p', `${several.def}:80`, IMAGE, ...httpd('s-def')]);
    await runDetached('s-lo', ['-p', `127.0.0.1:${several.lo}:80`, IMAGE, ...httpd('s-lo')]);
    await runDetached('s-any', ['-p', `0.0.0.0:${several.any}:80`, IMAGE, ...httpd('s-any')]);
    const want: [number, string][] = [
      [several.def, 's-def-80\n'],
      [several.lo, 's-lo-80\n'],
      [several.any, 's-any-80\n'],
    ];
    for (const [p, body] of want) await waitForBody(p, body, performance.now(), 15_000);
    const answers = await Promise.all(want.flatMap(([p]) => Array.from({ length: 15 }, () => httpGet(p, '127.0.0.1', '/', 10_000))));
    assert.deepEqual(
      answers,
      want.flatMap(([, body]) => Array.from({ length: 15 }, () => ({ status: 200, body }))),
    );
    const list = (await ports()).forwards;
    assert.deepEqual(
      list.map((f) => `${f.proto} ${f.hostIp}:${f.hostPort} ${f.containerName}:${f.guestPort} ${f.state}`).sort(),
      [`tcp 127.0.0.1:${several.def} s-def:80 listening`, `tcp 127.0.0.1:${several.lo} s-lo:80 listening`, `tcp 0.0.0.0:${several.any} s-any:80 listening`].sort(),
    );
  });

  test("security: the berth daemon's TCP listeners on the host are exactly the published ports, on loopback unless published on 0.0.0.0", async () => {
    assert.ok(several.any > 0, 'runs after the several-containers test');
    const pid = daemonPid(b.home);
    assert.ok(pid, 'daemon pid file');
    const listeners = tcpListenersOf(pid);
    for (const l of listeners) {
      if (l.port === several.any) assert.equal(l.address, '0.0.0.0', 'the 0.0.0.0 publish is the only non-loopback listener');
      else assert.ok(l.address === '127.0.0.1' || l.address === '::1', `non-loopback listener ${l.address}:${l.port}`);
    }
    const expected = [`127.0.0.1:${several.def}`, `127.0.0.1:${several.lo}`, `0.0.0.0:${several.any}`, ...(hostHasIpv6Loopback() ? [`::1:${several.def}`] : [])];
    assert.deepEqual(listeners.map((l) => `${l.address}:${l.port}`).sort(), expected.sort());
    await remove('s-def', 's-lo', 's-any');
    await waitForPorts((f) => (f.length === 0 ? true : undefined), 5000, 'forwards still listed after the containers were removed');
    assert.deepEqual(tcpListenersOf(pid), [], 'no listener is left behind');
  });

  test('a host port another program holds: berth ports says "failed" naming the port, berth logs daemon has it, the container keeps running, the program keeps its port', async () => {
    const holder = http.createServer((_req, res) => res.end('host program\n'));
    const port = await listen(holder, await freePort('tcp'), '127.0.0.1');
    try {
      await runDetached('taken', ['-p', `${port}:80`, IMAGE, ...httpd('taken')]);
      const f = await waitForPorts((l) => l.find((x) => x.hostPort === port && x.state !== 'pending'), 5000, `a settled forward for ${port}`);
      assert.equal(f.state, 'failed');
      assert.equal(f.containerName, 'taken');
      assert.match(f.error ?? '', new RegExp(`^TCP port ${port} on 127\\.0\\.0\\.1 is already in use by another program on the host`));
      const human = await b.berth(['ports']);
      assert.match(human.stdout, new RegExp(`127\\.0\\.0\\.1:${port}/tcp .* taken +failed: TCP port ${port} on 127\\.0\\.0\\.1 is already in use`));
      const logs = await b.berth(['logs', 'daemon', '-n', 'all']);
      assert.match(logs.stdout, new RegExp(`TCP port ${port} on 127\\.0\\.0\\.1 is already in use`));
      const running = await b.docker(['inspect', '-f', '{{.State.Running}}', 'taken']);
      assert.equal(running.stdout.trim(), 'true');
      // Still the program's: on 127.0.0.1, and not taken over on ::1 either.
      assert.deepEqual(await httpGet(port), { status: 200, body: 'host program\n' });
      if (hostHasIpv6Loopback()) assert.deepEqual(await httpGet(port, '::1'), { error: 'ECONNREFUSED' }, 'the container must not get [::1]:port while the forward is "failed"');
      await remove('taken');
    } finally {
      await close(holder);
    }
  });

  test('published ports work again after berth stop and berth start (--restart always)', async (t) => {
    const port = await freePort('tcp');
    await runDetached('always', ['--restart', 'always', '-p', `${port}:80`, IMAGE, ...httpd('always')]);
    await waitForBody(port, 'always-80\n', performance.now(), 15_000);

    const stop = await b.berth(['stop']);
    assert.equal(stop.code, 0, stop.stderr);
    await waitForRefused(port, performance.now(), 2000);
    assert.deepEqual(await ports(), { backend: 'none', forwards: [] });

    const start = await b.berth(['start']);
    assert.equal(start.code, 0, `start failed:\n${start.stdout}\n${start.stderr}`);
    const ms = await waitForBody(port, 'always-80\n', performance.now(), 60_000);
    t.diagnostic(`answered again ${ms.toFixed(0)} ms after berth start returned`);
    const fwd = (await ports()).forwards.filter((f) => f.hostPort === port);
    assert.equal(fwd.length, 1);
    assert.equal(fwd[0]!.containerName, 'always');
    assert.equal(fwd[0]!.state, 'listening');
    await remove('always');
    await waitForRefused(port, performance.now(), 3000);
  });
});
