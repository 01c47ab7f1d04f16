import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DockerProxy } from '../src/docker/proxy.js';
import { DEFAULT_VM_PATHS } from '../src/docker/mount-policy.js';
import { silentLogger } from '../src/util/log.js';
import { median, type BenchResult, type Row } from './report.js';

/**
 * The Docker API proxy's own cost per request (docs/docker-proxy.md), on the host, without a VM:
 * a client on one keep-alive connection sends requests one after the other and waits for each
 * answer, to an engine stand-in on a Unix socket that answers at once. The anchor is the same
 * client talking to the stand-in directly, in the same run; the proxy row's ratio is its time per
 * request over the anchor's, and "added" is the difference.
 *
 * - GET /_ping: a request without a body (routed, rebuilt, its answer's framing followed);
 * - POST /containers/create with a 1 KiB body and two binds in a share: decoded with Go's JSON
 *   rules, checked (with the host's symlink resolution in a real temporary folder), encoded again;
 * - a new connection per GET /_ping (the docker CLI opens one per command): accept, a stream
 *   opened (here a Unix socket), the request, the close.
 */
const REQUESTS = 2000;

function engine(sockPath: string): Promise<net.Server> {
  const srv = net.createServer((s) => {
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const len = Number(/content-length: (\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        buf = buf.slice(end + 4 + len);
        s.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}');
      }
    });
    s.on('error', () => {});
  });
  return new Promise((r) => srv.listen(sockPath, () => r(srv)));
}

/** Sends `n` requests on one connection, one at a time; microseconds per request. */
async function keepAlive(sockPath: string, req: string, n: number): Promise<number> {
  const c = net.connect(sockPath);
  await new Promise((r) => c.once('connect', r));
  let pending: (() => void) | undefined;
  let got = '';
  c.on('data', (d: Buffer) => {
    got += d.toString('latin1');
    if (got.endsWith('{}')) {
      got = '';
      pending?.();
    }
  });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    await new Promise<void>((r) => {
      pending = r;
      c.write(req);
    });
  }
  const us = Number(process.hrtime.bigint() - t0) / 1000 / n;
  c.destroy();
  return us;
}

/** A new connection per request; microseconds per request. */
async function perConnection(sockPath: string, req: string, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    await new Promise<void>((resolve) => {
      const c = net.connect(sockPath, () => c.write(req));
      c.on('data', (d: Buffer) => {
        if (d.toString('latin1').endsWith('{}')) c.destroy();
      });
      c.on('close', () => resolve());
      c.on('error', () => resolve());
    });
  }
  return Number(process.hrtime.bigint() - t0) / 1000 / n;
}

export async function benchProxy(runs: number): Promise<BenchResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-bench-proxy-'));
  const share = path.join(dir, 'share');
  fs.mkdirSync(path.join(share, 'project', 'src'), { recursive: true });
  const enginePath = path.join(dir, 'engine.sock');
  const proxyPath = path.join(dir, 'docker.sock');
  const srv = await engine(enginePath);
  const proxy = new DockerProxy({
    socketPath: proxyPath,
    open: async () => net.connect(enginePath),
    log: silentLogger,
    policy: () => ({ shares: [{ path: share, readOnly: false }], vmPaths: DEFAULT_VM_PATHS }),
  });
  await proxy.listen();
  const ping = 'GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: bench\r\n\r\n';
  const body = JSON.stringify({
    Image: 'busybox:latest',
    Cmd: ['sh', '-c', 'echo hello'],
    Env: Array.from({ length: 12 }, (_, i) => `VAR_${i}=value-${i}`),
    Labels: { 'com.docker.compose.project': 'bench', 'com.docker.compose.service': 'web' },
    HostConfig: { Binds: [`${share}/project:/src`, `${share}/project/src:/app/src:ro`], Memory: 0, NetworkMode: 'default', RestartPolicy: { Name: 'no' } },
    NetworkingConfig: { EndpointsConfig: {} },
  }).padEnd(1024, ' ');
  const create = `POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const cases: [string, (p: string) => Promise<number>][] = [
    ['GET /_ping, keep-alive', (p) => keepAlive(p, ping, REQUESTS)],
    ['POST /containers/create (1 KiB, two binds), keep-alive', (p) => keepAlive(p, create, REQUESTS)],
    ['GET /_ping, a connection each', (p) => perConnection(p, ping, REQUESTS / 4)],
  ];
  const rows: Row[] = [];
  try {
    for (const [name, fn] of cases) {
      const direct: number[] = [];
      const through: number[] = [];
      await fn(proxyPath); // warm-up
      for (let r = 0; r < runs; r++) {
        direct.push(await fn(enginePath));
        through.push(await fn(proxyPath));
      }
      const d = median(direct.map((x) => Math.round(x)));
      const p = median(through.map((x) => Math.round(x)));
      rows.push({ name: `${name}: direct (anchor)`, value: d, unit: 'µs' });
      rows.push({ name: `${name}: through berth`, value: p, unit: 'µs', ratio: p / d, note: `added ${p - d} µs per request` });
    }
  } finally {
    await proxy.close();
    await new Promise<void>((r) => srv.close(() => r()));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { title: `Docker API proxy, per request (host only, ${REQUESTS} requests per run, medians of ${runs} runs)`, rows };
}
