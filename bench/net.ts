import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { median, type BenchResult, type Row } from './report.js';

/**
 * Networking against its anchors, on the same guest (berth's own VM, booted three times) in the
 * same run: QEMU's built-in user network (libslirp), passt (Debian's, connected to QEMU through
 * -netdev stream like berth), and berth's translator.
 *
 * - guest→host and host→guest TCP throughput: 200 MiB through one connection between busybox
 *   `nc` in the VM and a Node socket on the host's 127.0.0.1, timed on the host.
 * - connections per second: the guest's Node opens and closes 300 connections to the host, one
 *   after the other.
 * - forwarded-port latency: a host client talks to an echo server in the VM through a forwarded
 *   host port (berth: ports.extra; QEMU: hostfwd; passt: -t): 64-byte round trips on one connection
 *   (RR) and connect + round trip + close (CRR), medians.
 *
 * The guest reaches the host as host.docker.internal's address with berth, 10.0.2.2 with QEMU's
 * user network, and its default gateway with passt (passt maps it to the host's loopback).
 */
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const berth = path.join(repo, 'bin', 'berth');
const MIB = 1024 * 1024;
const TRANSFER = 200 * MIB;
const GUEST_ECHO_PORT = 7777;

type Backend = 'qemu-user' | 'passt' | 'berth';

interface Measured {
  g2hMbps: number[];
  h2gMbps: number[];
  cps: number[];
  rrUs: number[];
  crrUs: number[];
}

export async function benchNet(runs: number): Promise<BenchResult> {
  const backends: Backend[] = ['qemu-user', 'passt', 'berth'];
  const results = new Map<Backend, Measured | string>();
  for (const b of backends) {
    try {
      results.set(b, await measureBackend(b, runs));
    } catch (err) {
      results.set(b, (err as Error).message.split('\n')[0]!);
      console.error(`bench net: ${b} failed: ${(err as Error).message}`);
    }
  }
  const rows: Row[] = [];
  const row = (name: string, pick: (m: Measured) => number[], unit: string, higherIsBetter: boolean) => {
    const med = (b: Backend) => {
      const m = results.get(b);
      return typeof m === 'object' ? median(pick(m)) : undefined;
    };
    const ours = med('berth');
    for (const b of backends) {
      const v = med(b);
      const m = results.get(b);
      if (v === undefined) {
        rows.push({ name: `${name}: ${b}`, value: NaN, unit, note: `not measured: ${String(m)}` });
        continue;
      }
      const runsText = typeof m === 'object' ? pick(m).join(', ') : '';
      rows.push({ name: `${name}: ${b}`, value: v, unit, note: `runs: ${runsText}` });
    }
    for (const anchor of ['qemu-user', 'passt'] as Backend[]) {
      const a = med(anchor);
      if (ours !== undefined && a !== undefined && a > 0 && ours > 0) {
        rows.push({ name: `  berth vs ${anchor}`, value: Number((higherIsBetter ? ours / a : a / ours).toFixed(2)), unit: '×', note: higherIsBetter ? 'higher is better for berth' : 'anchor time / berth time: higher is better for berth' });
      }
    }
  };
  row('guest→host TCP', (m) => m.g2hMbps, 'Mbit/s', true);
  row('host→guest TCP', (m) => m.h2gMbps, 'Mbit/s', true);
  row('guest→host connections', (m) => m.cps, 'conn/s', true);
  row('forwarded port, 64 B round trip (RR)', (m) => m.rrUs, 'µs', false);
  row('forwarded port, connect+RR+close (CRR)', (m) => m.crrUs, 'µs', false);
  return { title: `Network (TCG, ${runs} runs per backend, ${TRANSFER / MIB} MiB per transfer, medians)`, rows };
}

async function measureBackend(backend: Backend, runs: number): Promise<Measured> {
  const home = fs.mkdtempSync('/tmp/berth-benchnet-');
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_HOME: home, DOCKER_CONFIG: path.join(home, 'docker') };
  delete env.DOCKER_HOST;
  const hostPort = await freePort();
  let passt: ChildProcess | undefined;
  try {
    if (backend === 'passt') {
      passt = startPasst(home, hostPort);
      env.BERTH_BENCH_NETDEV_SOCKET = path.join(home, 'passt', 'passt.sock');
      await waitFor(() => fs.existsSync(env.BERTH_BENCH_NETDEV_SOCKET!), 5000, 'passt did not create its socket');
    } else {
      cli(['settings', 'set', 'network.backend', backend], env);
      cli(['settings', 'set', 'ports.extra', JSON.stringify([`tcp:127.0.0.1:${hostPort}:${GUEST_ECHO_PORT}`])], env);
    }
    // Networking only, the same for every backend: no shared folders. On passt's network the
    // guest's mount of berth's file server (gateway:564) hangs, and the engine waits for it.
    cli(['settings', 'set', 'shares', '[]'], env);
    cli(['start'], env);
    const hostAddr = backend === 'berth' ? '198.19.248.254' : backend === 'qemu-user' ? '10.0.2.2' : shell(env, "ip route | awk '/^default/{print $3; exit}'").trim();
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(hostAddr)) throw new Error(`cannot tell the host's address in the guest (got ${JSON.stringify(hostAddr)})`);
    startGuestEcho(env);
    const m: Measured = { g2hMbps: [], h2gMbps: [], cps: [], rrUs: [], crrUs: [] };
    for (let i = 0; i < runs; i++) {
      m.g2hMbps.push(await guestToHost(env, hostAddr));
      m.h2gMbps.push(await hostToGuest(env, hostAddr));
      m.cps.push(await connectionsPerSecond(env, hostAddr));
      const lat = await forwardedLatency(hostPort);
      m.rrUs.push(lat.rr);
      m.crrUs.push(lat.crr);
      console.error(`bench net: ${backend} run ${i + 1}: g2h ${m.g2hMbps.at(-1)} h2g ${m.h2gMbps.at(-1)} Mbit/s, ${m.cps.at(-1)} conn/s, RR ${lat.rr} µs, CRR ${lat.crr} µs`);
    }
    return m;
  } finally {
    try {
      cli(['stop'], env);
    } catch {
      // not running
    }
    passt?.kill('SIGTERM');
    fs.rmSync(home, { recursive: true, force: true });
  }
}

/** passt, as Debian ships it, listening for QEMU on a socket in a directory its dropped user can use. */
function startPasst(home: string, hostPort: number): ChildProcess {
  const dir = path.join(home, 'passt');
  fs.mkdirSync(dir, { mode: 0o777 });
  fs.chmodSync(dir, 0o777);
  fs.chmodSync(home, 0o755);
  const p = spawn('passt', ['-f', '-q', '-s', path.join(dir, 'passt.sock'), '-t', `127.0.0.1/${hostPort}:${GUEST_ECHO_PORT}`, '-u', 'none', '-m', '65520'], { stdio: ['ignore', 'ignore', 'inherit'] });
  p.on('error', (err) => console.error(`bench net: passt: ${err.message} (install it: apt-get install passt)`));
  return p;
}

function cli(args: string[], env: NodeJS.ProcessEnv): string {
  return execFileSync(berth, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
}

function shell(env: NodeJS.ProcessEnv, script: string, timeoutMs = 600_000): string {
  return execFileSync(berth, ['shell', '--', 'sh', '-c', script], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
}

function shellAsync(env: NodeJS.ProcessEnv, script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(berth, ['shell', '--', 'sh', '-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`guest command failed (${code}): ${err.slice(-500)}`))));
  });
}

/** An echo server in the VM (Node), left running in the background for the latency test. */
function startGuestEcho(env: NodeJS.ProcessEnv): void {
  const js = `require('net').createServer((s) => s.pipe(s)).listen(${GUEST_ECHO_PORT}, '0.0.0.0')`;
  shell(env, `setsid node -e "${js}" >/dev/null 2>&1 < /dev/null & sleep 3`);
}

function serverOnce(handler: (s: net.Socket, done: (v: number) => void) => void): Promise<{ port: number; result: Promise<number> }> {
  return new Promise((resolveListen) => {
    let finish!: (v: number) => void;
    const result = new Promise<number>((r) => (finish = r));
    const srv = net.createServer({ allowHalfOpen: true }, (s) => handler(s, (v) => {
      srv.close();
      finish(v);
    }));
    srv.listen(0, '127.0.0.1', () => resolveListen({ port: (srv.address() as net.AddressInfo).port, result }));
  });
}

function mbps(bytes: number, ms: number): number {
  return Math.round((bytes * 8) / ms / 1000);
}

async function guestToHost(env: NodeJS.ProcessEnv, hostAddr: string): Promise<number> {
  const { port, result } = await serverOnce((s, done) => {
    let n = 0;
    let t0 = 0;
    s.on('data', (d: Buffer) => {
      if (!t0) t0 = performance.now();
      n += d.length;
    });
    s.on('end', () => {
      s.end();
      if (n !== TRANSFER) throw new Error(`guest→host: got ${n} bytes, expected ${TRANSFER}`);
      done(mbps(n, performance.now() - t0));
    });
  });
  await shellAsync(env, `dd if=/dev/zero bs=65536 count=${TRANSFER / 65536} 2>/dev/null | nc ${hostAddr} ${port}`);
  return result;
}

async function hostToGuest(env: NodeJS.ProcessEnv, hostAddr: string): Promise<number> {
  const chunk = Buffer.alloc(256 * 1024, 0x5a);
  const { port, result } = await serverOnce((s, done) => {
    const t0 = performance.now();
    let sent = 0;
    s.on('data', () => {});
    s.on('error', () => {});
    const pump = () => {
      while (sent < TRANSFER) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      s.end();
    };
    // Timed until the guest has read everything and closed its side: its nc gets no EOF on stdin
    // (a FIFO nobody writes), so it closes only after the host's end of stream. The FIFO is in
    // the VM's own /run/tmp: /tmp is a shared folder, where FIFOs cannot be made, and `3<>` then
    // made a regular file whose EOF let nc close at once (h2g read 7,500 Mbit/s).
    s.on('end', () => done(mbps(sent, performance.now() - t0)));
    pump();
  });
  const out = await shellAsync(env, `rm -f /run/tmp/bench.fifo; mkfifo /run/tmp/bench.fifo && exec 3<>/run/tmp/bench.fifo && nc ${hostAddr} ${port} <&3 | wc -c`);
  if (Number(out.trim()) !== TRANSFER) throw new Error(`host→guest: guest got ${out.trim()} bytes, expected ${TRANSFER}`);
  return result;
}

async function connectionsPerSecond(env: NodeJS.ProcessEnv, hostAddr: string): Promise<number> {
  const srv = net.createServer((s) => s.end('x'));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  const n = 300;
  const js = `const net=require('net');let i=0;const t0=Date.now();const one=()=>{if(i++>=${n}){console.log(Date.now()-t0);return;}const s=net.connect(${port},'${hostAddr}');s.on('data',()=>{});s.on('end',()=>{s.destroy();one();});s.on('error',(e)=>{console.error(e.message);process.exit(1);});};one();`;
  try {
    const ms = Number((await shellAsync(env, `node -e "${js}"`)).trim());
    return Math.round((n * 1000) / ms);
  } finally {
    srv.close();
  }
}

async function forwardedLatency(hostPort: number): Promise<{ rr: number; crr: number }> {
  const payload = Buffer.alloc(64, 0x61);
  const roundTrip = (s: net.Socket) =>
    new Promise<void>((resolve, reject) => {
      let got = 0;
      const onData = (d: Buffer) => {
        got += d.length;
        if (got >= payload.length) {
          s.off('data', onData);
          s.off('error', reject);
          resolve();
        }
      };
      s.on('data', onData);
      s.on('error', reject);
      s.write(payload);
    });
  const connect = () =>
    new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(hostPort, '127.0.0.1', () => resolve(s));
      s.setNoDelay(true);
      s.once('error', reject);
    });
  // Warm up (first connections pay for lazy setup on every path).
  for (let i = 0; i < 3; i++) {
    const s = await connect();
    await roundTrip(s);
    s.destroy();
  }
  const rr: number[] = [];
  const s = await connect();
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    await roundTrip(s);
    rr.push((performance.now() - t0) * 1000);
  }
  s.destroy();
  const crr: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t0 = performance.now();
    const c = await connect();
    await roundTrip(c);
    c.end();
    await new Promise((r) => c.once('close', r));
    crr.push((performance.now() - t0) * 1000);
  }
  return { rr: Math.round(median(rr)), crr: Math.round(median(crr)) };
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

