import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import dns from 'node:dns';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { berthBin, daemonPid, newInstance, run, withBackend, type Instance } from './harness.js';
import { debianImageTar } from './images.js';
import { close, GATEWAY, HOST_ALIAS, listen, parseProcNetTcp, socketInodes, tcpListeners, tcpListenersOf } from './net-helpers.js';

/**
 * The network translator on the real VM with the real docker CLI (docs/network.md): containers
 * reach the host's loopback through host.docker.internal, resolve names through the host's
 * resolver (/etc/hosts included), move 1 GiB each way intact, hold 500 connections to the host at
 * once, and cannot reach the engine API, any service of the translator or cloud metadata.
 *
 * The instance is started inside its own mount namespace with a copy of /etc/hosts bind-mounted
 * over the real one (the daemon inherits the namespace from the CLI that spawns it), so names
 * only that copy knows test the host-resolver path without touching the machine's /etc/hosts.
 */

const IMAGE = 'berth-test/net:1';
const CLIENT = 'net-client';
const GiB = 1024 ** 3;

const tag = randomBytes(4).toString('hex');
/** Known only to the namespace's /etc/hosts: resolves to a TEST-NET-3 address as is. */
const HOSTS_ONLY_NAME = `only-in-hosts-${tag}.berth-e2e.test`;
const HOSTS_ONLY_ADDR = '203.0.113.77';
/** Mapped to 127.0.0.1 there: the guest must get the host alias, which leads to the host's loopback. */
const HOSTS_LOOP_NAME = `loop-in-hosts-${tag}.berth-e2e.test`;

/** Why the /etc/hosts namespace cannot be used here (undefined when it can). */
function whyNoHostsNamespace(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root to bind-mount a private /etc/hosts (unshare --mount)';
  const probe = spawnSync('unshare', ['--mount', 'sh', '-c', 'mount --bind /etc/hosts /etc/hosts'], { encoding: 'utf8' });
  if (probe.error) return `unshare is not available: ${probe.error.message}`;
  if (probe.status !== 0) return `unshare --mount with a bind mount fails here: ${probe.stderr.trim()}`;
  return undefined;
}
const hostsSkip = whyNoHostsNamespace();

/** The addresses busybox nslookup printed for `name` (not the server's own "Address: ip:53" line). */
function nslookupAddresses(output: string, name: string): string[] {
  const lines = output.split('\n').map((l) => l.trim());
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== `Name:\t${name}` && lines[i]!.replace(/\s+/g, ' ') !== `Name: ${name}`) continue;
    for (let j = i + 1; j < lines.length && lines[j]!.startsWith('Address'); j++) out.push(lines[j]!.replace(/^Address( \d+)?:\s*/, ''));
  }
  return out;
}

/** Deterministic pseudo-random bytes: the AES-128-CTR keystream of a key derived from `seed`. */
function keystream(seed: string) {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
}

function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what()} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/**
 * Rejects when `progress()` has not moved for `idleMs` after `start()` (a stalled transfer fails in
 * a minute, not at the exec timeout).
 */
function stallWatch(progress: () => number, idleMs: number, what: () => string) {
  let last = 0;
  let lastAt = 0;
  let timer: NodeJS.Timeout | undefined;
  let reject!: (e: Error) => void;
  const promise = new Promise<never>((_, r) => (reject = r));
  promise.catch(() => {}); // awaited only while a transfer runs
  const stop = () => clearInterval(timer);
  return {
    promise,
    start: () => {
      last = progress();
      lastAt = Date.now();
      timer = setInterval(() => {
        const p = progress();
        if (p !== last) {
          last = p;
          lastAt = Date.now();
        } else if (Date.now() - lastAt > idleMs) {
          stop();
          reject(new Error(`${what()}: no progress for ${idleMs / 1000} s`));
        }
      }, 1000);
    },
    stop,
  };
}

/** The error with the translator's recent log lines appended (the instance's home is deleted after). */
function withNetLog(err: unknown, home: string): Error {
  let tail = '';
  try {
    tail = fs
      .readFileSync(path.join(home, 'logs', 'daemon.log'), 'utf8')
      .split('\n')
      .filter((l) => l.includes('[daemon/vm/net]') || l.includes('WARN') || l.includes('ERROR'))
      .slice(-40)
      .join('\n');
  } catch {
    tail = '(no daemon.log)';
  }
  const e = err instanceof Error ? err : new Error(String(err));
  e.message += `\n--- daemon.log (translator, warnings) ---\n${tail}`;
  return e;
}

describe('network', { timeout: 1_200_000 }, () => {
  let b: Instance;
  const exec = (script: string, timeoutMs = 120_000) => b.docker(['exec', CLIENT, 'sh', '-c', script], { timeoutMs });

  before(async () => {
    b = newInstance('net');
    let start;
    if (hostsSkip === undefined) {
      const hosts = path.join(b.home, 'hosts');
      fs.writeFileSync(hosts, `${fs.readFileSync('/etc/hosts', 'utf8').trimEnd()}\n${HOSTS_ONLY_ADDR} ${HOSTS_ONLY_NAME}\n127.0.0.1 ${HOSTS_LOOP_NAME}\n`);
      start = await run('unshare', ['--mount', 'sh', '-c', 'mount --bind "$1" /etc/hosts && shift && exec "$@"', 'sh', hosts, berthBin, ...withBackend(['start'])], { env: b.env, timeoutMs: 600_000 });
    } else {
      start = await b.berth(['start']);
    }
    assert.equal(start.code, 0, `start failed:\n${start.stdout}\n${start.stderr}`);
    const imp = await b.docker(['import', '-', IMAGE], { input: await debianImageTar(['socat']) });
    assert.equal(imp.code, 0, imp.stderr);
    const c = await b.docker(['run', '-d', '--name', CLIENT, IMAGE, 'sleep', '1000000']);
    assert.equal(c.code, 0, c.stderr);
  });

  after(async () => {
    if (!b) return;
    await b.docker(['rm', '-f', CLIENT], { timeoutMs: 60_000 }).catch(() => {});
    await b.cleanup();
  });

  test('wget from a container reaches an HTTP server on the host 127.0.0.1 through host.docker.internal', async () => {
    const token = randomBytes(8).toString('hex');
    const seen: string[] = [];
    const srv = http.createServer((req, res) => {
      seen.push(`${req.socket.remoteAddress} ${req.method} ${req.url}`);
      res.end(`hello ${token} ${req.url}\n`);
    });
    const port = await listen(srv, 0, '127.0.0.1');
    try {
      const r = await b.docker(['run', '--rm', IMAGE, 'wget', '-qO-', `http://host.docker.internal:${port}/from-a-container`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `hello ${token} /from-a-container\n`);
      assert.deepEqual(seen, ['127.0.0.1 GET /from-a-container']);
    } finally {
      await close(srv);
    }
  });

  test("a name only the host's /etc/hosts knows resolves in a container; a name mapped to 127.0.0.1 reaches the host's loopback", { skip: hostsSkip }, async () => {
    // Outside the daemon's namespace the names do not exist: the container can only learn them
    // through the daemon's own resolver.
    await assert.rejects(dns.promises.lookup(HOSTS_ONLY_NAME), /ENOTFOUND|EAI_AGAIN/);
    const token = randomBytes(8).toString('hex');
    const seen: string[] = [];
    const srv = http.createServer((req, res) => {
      seen.push(`${req.socket.remoteAddress} ${req.headers.host}`);
      res.end(`via hosts ${token}\n`);
    });
    const port = await listen(srv, 0, '127.0.0.1');
    try {
      const plain = await exec(`nslookup ${HOSTS_ONLY_NAME}`);
      assert.equal(plain.code, 0, plain.stdout + plain.stderr);
      assert.match(plain.stdout, new RegExp(`^Server:\\s+${GATEWAY.replace(/\./g, '\\.')}$`, 'm'));
      assert.deepEqual(nslookupAddresses(plain.stdout, HOSTS_ONLY_NAME), [HOSTS_ONLY_ADDR], plain.stdout);

      const loop = await exec(`nslookup ${HOSTS_LOOP_NAME}`);
      assert.equal(loop.code, 0, loop.stdout + loop.stderr);
      assert.deepEqual(nslookupAddresses(loop.stdout, HOSTS_LOOP_NAME), [HOST_ALIAS], loop.stdout);

      const w = await exec(`wget -qO- http://${HOSTS_LOOP_NAME}:${port}/`);
      assert.equal(w.code, 0, w.stderr);
      assert.equal(w.stdout, `via hosts ${token}\n`);
      assert.deepEqual(seen, [`127.0.0.1 ${HOSTS_LOOP_NAME}:${port}`]);
    } finally {
      await close(srv);
    }
  });

  test('the gateway answers DNS (host.docker.internal, gateway.docker.internal) and ping', async () => {
    const r = await exec('nslookup host.docker.internal; echo @@@; nslookup gateway.docker.internal');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const [hostPart, gwPart] = r.stdout.split('@@@\n');
    assert.match(hostPart!, /^Server:\s+198\.19\.248\.1$/m);
    assert.deepEqual(nslookupAddresses(hostPart!, 'host.docker.internal'), [HOST_ALIAS], r.stdout);
    assert.deepEqual(nslookupAddresses(gwPart!, 'gateway.docker.internal'), [GATEWAY], r.stdout);

    const p = await exec(`ping -c 3 -W 5 ${GATEWAY}; echo @@@; ping -c 3 -W 5 ${HOST_ALIAS}`);
    assert.equal(p.code, 0, p.stdout + p.stderr);
    const [gw, alias] = p.stdout.split('@@@\n');
    assert.match(gw!, /^3 packets transmitted, 3 packets received, 0% packet loss$/m, p.stdout);
    assert.equal(gw!.match(/^\d+ bytes from 198\.19\.248\.1: seq=\d+ ttl=\d+ time=/gm)?.length, 3, p.stdout);
    assert.match(alias!, /^3 packets transmitted, 3 packets received, 0% packet loss$/m, p.stdout);
    assert.equal(alias!.match(/^\d+ bytes from 198\.19\.248\.254: seq=\d+ ttl=\d+ time=/gm)?.length, 3, p.stdout);
  });

  /** Runs busybox nc against each target; returns "target rc=N Ts message" lines. */
  async function probe(targets: string[]): Promise<Map<string, string>> {
    const script = `for t in ${targets.join(' ')}; do h=\${t%:*}; p=\${t##*:}; s=$(date +%s); out=$(nc -w 10 $h $p </dev/null 2>&1); rc=$?; echo "$t rc=$rc $(( $(date +%s) - s ))s $out"; done`;
    const r = await exec(script);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const lines = new Map<string, string>();
    for (const l of r.stdout.trim().split('\n')) lines.set(l.slice(0, l.indexOf(' ')), l);
    assert.deepEqual([...lines.keys()], targets, r.stdout);
    return lines;
  }

  /** Refused at once (RST), not timed out and not connected. */
  function assertRefused(lines: Map<string, string>, target: string, ip: string): void {
    const l = lines.get(target)!;
    const m = /^\S+ rc=(\d+) (\d+)s (.*)$/.exec(l);
    assert.ok(m, l);
    assert.equal(m[3], `nc: can't connect to remote host (${ip}): Connection refused`, l);
    assert.equal(m[1], '1', l);
    assert.ok(Number(m[2]) <= 3, `refused only after ${m[2]} s (a lost RST and a retried SYN?): ${l}`);
  }

  test('security: the gateway refuses TCP to 2375, 2376, 80, 443 and 22', async () => {
    const targets = [2375, 2376, 80, 443, 22].map((p) => `${GATEWAY}:${p}`);
    const lines = await probe(targets);
    for (const t of targets) assertRefused(lines, t, GATEWAY);
  });

  test('security: the host alias leads to no engine API (2375, 2376 refused)', async () => {
    // The alias is the host's loopback: these are refused because nothing of berth (nor anything
    // else here) listens there. A host program on those ports would make this test meaningless.
    const held = tcpListeners().filter((l) => (l.port === 2375 || l.port === 2376) && /^(127\.|0\.0\.0\.0|::$|::ffff:127\.)/.test(l.address));
    assert.deepEqual(held, [], 'precondition: no host program listens on 2375/2376');
    const targets = [`${HOST_ALIAS}:2375`, `${HOST_ALIAS}:2376`, 'host.docker.internal:2375', 'host.docker.internal:2376'];
    const lines = await probe(targets);
    for (const t of targets) assertRefused(lines, t, HOST_ALIAS);
  });

  test('security: link-local 169.254.169.254 (cloud metadata) is refused', async () => {
    const lines = await probe(['169.254.169.254:80']);
    assertRefused(lines, '169.254.169.254:80', '169.254.169.254');
  });

  test('security: dockerd and containerd in the VM have no TCP listener, nor does anything else in the VM', async () => {
    const r = await b.berth([
      'shell',
      '--',
      'sh',
      '-c',
      'for p in $(pidof dockerd containerd); do echo "pid $p $(cat /proc/$p/comm)"; ls -l /proc/$p/fd | sed -n "s/.*socket:\\[\\([0-9]*\\)\\].*/inode $p \\1/p"; done; echo @tcp; cat /proc/net/tcp; echo @tcp6; cat /proc/net/tcp6',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [procs, rest] = r.stdout.split('@tcp\n');
    const [tcp4, tcp6] = rest!.split('@tcp6\n');
    const comms = [...procs!.matchAll(/^pid (\d+) (\S+)$/gm)].map((m) => m[2]).sort();
    assert.deepEqual(comms, ['containerd', 'dockerd']);
    const inodes = new Set([...procs!.matchAll(/^inode \d+ (\d+)$/gm)].map((m) => Number(m[1])));
    assert.ok(inodes.size > 0, 'the engine has sockets (its Unix sockets): the fd scan works');
    const listeners = [...parseProcNetTcp(tcp4!, false), ...parseProcNetTcp(tcp6!, true)];
    assert.deepEqual(listeners.filter((l) => inodes.has(l.inode)), [], 'TCP listeners of dockerd/containerd');
    assert.deepEqual(listeners, [], 'TCP listeners in the VM');
  });

  test('security: the berth daemon holds no TCP listener on the host while nothing is published', async () => {
    const pid = daemonPid(b.home);
    assert.ok(pid, 'daemon pid file');
    assert.ok(socketInodes(pid).size > 0, 'the daemon has sockets: the fd scan works');
    assert.deepEqual(tcpListenersOf(pid), []);
    const ports = JSON.parse((await b.berth(['ports', '--json'])).stdout) as { backend: string; forwards: unknown[] };
    assert.deepEqual(ports, { backend: 'berth', forwards: [] });
  });

  test('500 concurrent connections from a container to the host all complete', async (t) => {
    const N = 500;
    const conns: { sock: net.Socket; line: string }[] = [];
    let open = 0;
    let maxOpen = 0;
    let openWhenAnswered = -1;
    let answered = false;
    const answerAll = (why: string) => {
      if (answered) return;
      answered = true;
      openWhenAnswered = open;
      for (const c of conns) c.sock.end(why === 'all' ? `bye ${c.line.trim()}\n` : `gave up: ${why}\n`);
      srv.close();
    };
    const check = () => {
      if (conns.length >= N && conns.every((c) => c.line.includes('\n'))) answerAll('all');
    };
    const srv = net.createServer({ allowHalfOpen: true }, (sock) => {
      open++;
      maxOpen = Math.max(maxOpen, open);
      const c = { sock, line: '' };
      conns.push(c);
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        c.line += d;
        check();
      });
      sock.on('close', () => open--);
      sock.on('error', () => {});
      check();
    });
    const port = await listen(srv, 0, '127.0.0.1');
    // Held until all N are connected; if that never happens, everyone is told so after 150 s.
    const giveUp = setTimeout(() => answerAll(`only ${conns.length} of ${N} connected`), 150_000);
    try {
      const t0 = performance.now();
      const r = await exec(
        `rm -rf /tmp/conc && mkdir /tmp/conc && i=0; while [ $i -lt ${N} ]; do i=$((i+1)); (echo "c$i" | nc host.docker.internal ${port} > /tmp/conc/$i 2>&1) & done; wait; ` +
          `i=0; while [ $i -lt ${N} ]; do i=$((i+1)); echo "$i $(cat /tmp/conc/$i)"; done; rm -rf /tmp/conc`,
        240_000,
      );
      const ms = performance.now() - t0;
      assert.equal(r.code, 0, r.stderr);
      assert.ok(answered, 'the host server answered');
      assert.equal(openWhenAnswered, N, `connections open at once when the server answered (max ${maxOpen})`);
      assert.equal(conns.length, N, 'connections accepted');
      const expected = Array.from({ length: N }, (_, k) => `${k + 1} bye c${k + 1}`);
      assert.deepEqual(r.stdout.trim().split('\n'), expected);
      t.diagnostic(`${N} concurrent connections: all open at once, every one answered; ${(ms / 1000).toFixed(1)} s in all`);
    } finally {
      clearTimeout(giveUp);
      for (const c of conns) c.sock.destroy();
      srv.close();
    }
  });

  test('1 GiB each way between a container and the host arrives intact (same sha256 and size)', { timeout: 900_000 }, async (t) => {
    const seed = `berth-e2e-${tag}`;
    // Host → container: the host serves 1 GiB of seeded pseudo-random bytes.
    const down = { sha: '', bytes: 0, ms: 0 };
    let downDone!: () => void;
    const downClosed = new Promise<void>((r) => (downDone = r));
    const source = net.createServer((sock) => {
      source.close();
      const t0 = performance.now();
      const ks = keystream(seed);
      const zeros = Buffer.alloc(1 << 20);
      const h = createHash('sha256');
      sock.on('error', () => {});
      sock.on('close', () => {
        down.ms = performance.now() - t0;
        downDone();
      });
      const pump = () => {
        while (down.bytes < GiB) {
          const chunk = ks.update(zeros.subarray(0, Math.min(zeros.length, GiB - down.bytes)));
          h.update(chunk);
          down.bytes += chunk.length;
          if (!sock.write(chunk)) return void sock.once('drain', pump);
        }
        down.sha = h.digest('hex');
        sock.end();
      };
      pump();
    });
    // Container → host: a sink that hashes what it gets.
    const up = { sha: '', bytes: 0, ms: 0 };
    let upDone!: () => void;
    const upEnded = new Promise<void>((r) => (upDone = r));
    const sink = net.createServer((sock) => {
      sink.close();
      const t0 = performance.now();
      const h = createHash('sha256');
      sock.on('data', (d: Buffer) => {
        h.update(d);
        up.bytes += d.length;
      });
      sock.on('end', () => {
        up.ms = performance.now() - t0;
        up.sha = h.digest('hex');
        sock.end();
        upDone();
      });
      sock.on('error', () => {});
    });
    const srcPort = await listen(source, 0, '127.0.0.1');
    const sinkPort = await listen(sink, 0, '127.0.0.1');
    const mbps = (bytes: number, ms: number) => (bytes / 1e6 / (ms / 1000)).toFixed(1);
    const watchDown = stallWatch(() => down.bytes, 60_000, () => `host → container stalled at ${down.bytes} bytes`);
    const watchUp = stallWatch(() => up.bytes, 60_000, () => `container → host stalled at ${up.bytes} bytes`);
    try {
      watchDown.start();
      const get = await Promise.race([exec(`socat -u -b 262144 TCP:host.docker.internal:${srcPort} CREATE:/tmp/big && wc -c < /tmp/big`, 360_000), watchDown.promise]);
      assert.equal(get.code, 0, get.stderr);
      await withTimeout(downClosed, 60_000, () => 'the download connection did not close');
      watchDown.stop();
      assert.equal(down.bytes, GiB);
      assert.match(down.sha, /^[0-9a-f]{64}$/);
      assert.equal(get.stdout.trim(), String(GiB), 'size of the file the container received');
      t.diagnostic(`1 GiB host → container: ${mbps(GiB, down.ms)} MB/s (${(down.ms / 1000).toFixed(1)} s)`);

      watchUp.start();
      const put = await Promise.race([exec(`socat -u -b 262144 OPEN:/tmp/big TCP:host.docker.internal:${sinkPort}`, 360_000), watchUp.promise]);
      assert.equal(put.code, 0, put.stderr);
      // socat exits once its last bytes are in the guest's socket buffer: wait for the host's EOF.
      await Promise.race([withTimeout(upEnded, 120_000, () => `the upload did not end (${up.bytes} bytes arrived)`), watchUp.promise]);
      assert.equal(up.bytes, GiB, 'bytes the host got back');
      assert.equal(up.sha, down.sha, 'sha256 of what came back = sha256 of what the host sent');
      t.diagnostic(`1 GiB container → host: ${mbps(GiB, up.ms)} MB/s (${(up.ms / 1000).toFixed(1)} s)`);
    } catch (err) {
      throw withNetLog(err, b.home);
    } finally {
      watchDown.stop();
      watchUp.stop();
      source.close();
      sink.close();
      await exec('rm -f /tmp/big').catch(() => {});
    }
  });
});
