import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DockerProxy, type BeforeRun, type Limits } from './proxy.js';
import { DEFAULT_VM_PATHS } from './mount-policy.js';
import { BodyReader, parseRequestHead, requestFraming } from './http1.js';
import { silentLogger } from '../util/log.js';

/**
 * The Docker socket against a fake engine on a Unix socket. The engine records each request as
 * it arrives (the proxy rebuilds requests, so tests look at what dockerd would parse), answers
 * with `reply`, and can be made to hijack. Each attack is a request that reached
 * containers/create unchecked, or confused the connection, before the proxy decided on parsed
 * values.
 */
interface Received {
  method: string;
  target: string;
  headers: [string, string][];
  body: string;
}

interface Engine {
  requests: Received[];
  raw: () => string;
  sockets: net.Socket[];
  closed: number;
}

type Reply = (sock: net.Socket, req: Received, engine: Engine) => void;

const OK = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function setup(t: TestContext, reply: Reply = (s) => s.write(OK), opts: { beforeRun?: BeforeRun; limits?: Partial<Limits>; openDelayMs?: number } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-proxy-'));
  const enginePath = path.join(dir, 'engine.sock');
  const proxyPath = path.join(dir, 'docker.sock');
  let raw = '';
  const engine: Engine = { requests: [], raw: () => raw, sockets: [], closed: 0 };
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    engine.sockets.push(s);
    let buf = Buffer.alloc(0);
    let hijacked = false;
    s.on('end', () => {
      engine.closed++;
      s.end();
    });
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      raw += d.toString('latin1');
      if (hijacked) return;
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const h = parseRequestHead(buf);
        if (h.kind !== 'head') return;
        const framing = requestFraming(h.head);
        let body = '';
        const reader = new BodyReader(framing.kind === 'error' ? { kind: 'none' } : framing, (b) => (body += b.toString('latin1')));
        const n = reader.push(buf.subarray(h.used));
        if (!reader.done) return;
        buf = buf.subarray(h.used + n);
        const req = { method: h.head.method, target: h.head.target, headers: h.head.headers, body };
        engine.requests.push(req);
        if (/attach|exec\/.*\/start/.test(req.target)) hijacked = true;
        reply(s, req, engine);
      }
    });
  });
  await new Promise<void>((r) => srv.listen(enginePath, () => r()));
  const proxy = new DockerProxy({
    socketPath: proxyPath,
    open: async () => {
      if (opts.openDelayMs) await sleep(opts.openDelayMs);
      return net.connect({ path: enginePath, allowHalfOpen: true });
    },
    log: silentLogger,
    policy: () => ({ shares: [{ path: '/home/me', readOnly: false }], vmPaths: DEFAULT_VM_PATHS, host: { kind: (p) => (p.startsWith('/home/me') ? 'dir' : 'missing'), readlink: () => '', exists: () => false } }),
    ...(opts.beforeRun ? { beforeRun: opts.beforeRun } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
  });
  await proxy.listen();
  t.after(async () => {
    await proxy.close();
    for (const s of engine.sockets) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const connect = () =>
    new Promise<net.Socket>((resolve) => {
      const c = net.connect(proxyPath, () => resolve(c));
      c.on('error', () => {});
    });
  return { engine, connect, proxy };
}

function request(method: string, target: string, body?: string, extra: string[] = []): string {
  const headers = [`${method} ${target} HTTP/1.1`, 'Host: docker', ...extra];
  if (body !== undefined) headers.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`);
  return `${headers.join('\r\n')}\r\n\r\n${body ?? ''}`;
}

function readUntil(sock: net.Socket, pattern: RegExp, ms = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`timeout; got ${JSON.stringify(text)}`)), ms);
    const on = (d: Buffer) => {
      text += d.toString('latin1');
      if (pattern.test(text)) {
        clearTimeout(timer);
        sock.off('data', on);
        resolve(text);
      }
    };
    sock.on('data', on);
  });
}

function ended(sock: net.Socket, ms = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`not ended; got ${JSON.stringify(text)}`)), ms);
    sock.on('data', (d: Buffer) => (text += d.toString('latin1')));
    sock.on('end', () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
}

test('requests are rebuilt: canonical target, end-to-end headers kept, framing the proxy’s own', async (t) => {
  const { engine, connect } = await setup(t);
  const c = await connect();
  c.write('GET /v1.41/containers/json?all=1&filters=%7B%7D HTTP/1.1\r\nHost: docker\r\nUser-Agent: Docker-Client/24\r\nX-Registry-Auth: abc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
  await readUntil(c, /\{\}$/);
  c.write(request('POST', '/v1.41/containers/create?name=x', JSON.stringify({ Image: 'busybox', HostConfig: { Binds: ['/home/me/src:/src', 'vol:/v'] } })));
  await readUntil(c, /\{\}$/);
  assert.equal(engine.requests.length, 2);
  const [get, create] = engine.requests;
  assert.equal(get!.target, '/v1.41/containers/json?all=1&filters=%7B%7D');
  assert.deepEqual(get!.headers.map(([n]) => n), ['host', 'user-agent', 'x-registry-auth'], 'the body of a GET is dropped with its framing');
  assert.equal(create!.target, '/v1.41/containers/create?name=x');
  assert.deepEqual(JSON.parse(create!.body), { HostConfig: { Binds: ['/home/me/src:/src', 'vol:/v'] }, Image: 'busybox' });
  c.destroy();
});

test('attacks on the route and the body never reach the engine', async (t) => {
  const { engine, connect } = await setup(t);
  const bad = JSON.stringify({ Image: 'busybox', HostConfig: { Binds: ['/etc:/host-etc'] } });
  const attacks = [
    request('POST', '/v1.41/containers/cr%65ate', bad),
    request('POST', '/v1.41.0/containers/create', bad),
    request('POST', '/v1..41/%63ontainers/create', bad),
    request('POST', 'http://docker/v1.41/containers/create', bad),
    request('POST', '/containers/create', '{"Image":"x","Ho\u017ftConfig":{"Binds":["/etc:/x"]}}'),
    request('POST', '/containers/create', '{"Image":"x","Binds":["/etc:/x"]}'),
    request('POST', '/containers/create', '{"HostConfig":{"Binds":["/home/me:/x"]},"hostconfig":{"Binds":["/etc:/x"]}}'),
    request('POST', '/containers/create', '{"HostConfig":{"Binds":["/home/me:/x"]}}{"HostConfig":{"Binds":["/etc:/x"]}}'),
    request('POST', '/containers/create', '{"HostConfig":{"Binds":["/etc:/x"]'),
    request('POST', '/volumes/create', JSON.stringify({ Name: 'v', DriverOpts: { type: 'none', o: 'bind', device: '/etc' } })),
    request('POST', '/plugins/pull?remote=x', JSON.stringify([{ Name: 'mount', Value: ['/etc'] }])),
    request('POST', '/services/create', JSON.stringify({ TaskTemplate: { ContainerSpec: { Mounts: [{ Type: 'bind', Source: '/etc', Target: '/x' }] } } })),
    request('POST', '/v1.23/containers/x/start', JSON.stringify({ Binds: ['/etc:/x'] })),
    request('POST', '/v1.41/containers/x/checkpoints', JSON.stringify({ CheckpointDir: '/etc' })),
    request('POST', '/v1.41/not/an/endpoint', bad),
    'POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n{}{}{',
    'POST /containers/create HTTP/1.1\nHost: d\n\n',
    'POST /containers/create HTTP/1.1\r\nHost: d\r\nX: y\r\n  folded\r\n\r\n',
  ];
  for (const a of attacks) {
    const c = await connect();
    c.write(a);
    const res = await ended(c);
    assert.match(res, /^HTTP\/1\.1 (400|404|413) /, JSON.stringify(a.slice(0, 80)));
    assert.match(res, /"message":"berth: /);
  }
  await sleep(50);
  assert.deepEqual(engine.requests, [], 'nothing reached the engine');
});

test('a chunked body is decided on whole and forwarded with a Content-Length; Expect: 100-continue is answered by the proxy', async (t) => {
  const { engine, connect } = await setup(t);
  const body = JSON.stringify({ HostConfig: { Mounts: [{ Type: 'bind', Source: '/home/me/x', Target: '/x' }] } });
  const half = body.length >> 1;
  const c = await connect();
  c.write(`POST /containers/create HTTP/1.1\r\nHost: docker\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n`);
  assert.match(await readUntil(c, /\r\n\r\n/), /^HTTP\/1\.1 100 Continue/);
  const chunks = `${half.toString(16)}\r\n${body.slice(0, half)}\r\n${(body.length - half).toString(16)}\r\n${body.slice(half)}\r\n0\r\n\r\n`;
  for (const ch of chunks) c.write(ch);
  await readUntil(c, /\{\}$/);
  const got = engine.requests[0]!;
  assert.equal(got.body, body);
  assert.ok(got.headers.some(([n, v]) => n === 'content-length' && v === String(body.length)));
  assert.ok(!got.headers.some(([n]) => n === 'expect' || n === 'transfer-encoding'));
  c.destroy();
});

test('after a successful hijack (101) bytes flow raw both ways; an attach body never becomes stdin', async (t) => {
  const { engine, connect } = await setup(t, (s, req) => {
    if (/attach/.test(req.target)) s.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\noutput');
  });
  const c = await connect();
  // dockerode sends its options as a JSON body; dockerd hijacks after the head.
  c.write(request('POST', '/v1.41/containers/abc/attach?stream=1&stdin=1', '{"stdin":true}', ['Connection: Upgrade', 'Upgrade: tcp']));
  await readUntil(c, /output/);
  const stdin = request('POST', '/containers/create', JSON.stringify({ HostConfig: { Binds: ['/etc:/e'] } }));
  c.write(stdin);
  await sleep(200);
  const raw = engine.raw();
  assert.ok(!raw.includes('"stdin":true'), 'the attach body was dropped');
  assert.ok(raw.endsWith(stdin), 'stdin of the hijacked stream is not HTTP and passes unchanged');
  c.destroy();
});

test('a refused hijack (404) leaves the connection in HTTP: a later bad mount is still refused', async (t) => {
  const { engine, connect } = await setup(t, (s) => s.write('HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'));
  const c = await connect();
  c.write(request('POST', '/containers/nope/attach?stream=1', undefined, ['Connection: Upgrade', 'Upgrade: tcp']));
  c.write(request('POST', '/containers/create', JSON.stringify({ HostConfig: { Binds: ['/etc:/e'] } })));
  const res = await ended(c);
  assert.match(res, /^HTTP\/1\.1 404[\s\S]*HTTP\/1\.1 400 Bad Request/);
  assert.equal(engine.requests.length, 1, 'the create never reached the engine');
});

test('a refused pipelined request waits for the responses before it, in order', async (t) => {
  const { connect } = await setup(t, (s) => setTimeout(() => s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst'), 300));
  const c = await connect();
  c.write(request('GET', '/containers/json') + request('POST', '/containers/create', JSON.stringify({ HostConfig: { Binds: ['/etc:/e'] } })));
  const res = await ended(c);
  assert.match(res, /^HTTP\/1\.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst(HTTP\/1\.1 400 Bad Request)/);
});

test('a client that leaves in the middle of a request ends its engine stream at once', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  for (const half of ['POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\n{"Ima', 'GET /containers/js', 'PUT /containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\nContent-Length: 1000\r\n\r\nabc']) {
    const before = engine.closed;
    const c = await connect();
    c.write(half);
    await sleep(50);
    c.end();
    const deadline = Date.now() + 2000;
    while (engine.closed === before && Date.now() < deadline) await sleep(10);
    assert.equal(engine.closed, before + 1, JSON.stringify(half));
  }
});

test('when the engine closes the connection the client gets everything and the stream ends both ways', async (t) => {
  const { engine, connect, proxy } = await setup(t, (s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'));
  const c = await connect();
  c.write(request('GET', '/_ping', undefined, ['Connection: close']));
  assert.match(await ended(c), /\{\}$/);
  const deadline = Date.now() + 2000;
  while ((engine.closed === 0 || proxy.connectionCount > 0) && Date.now() < deadline) await sleep(10);
  assert.equal(engine.closed, 1);
  assert.equal(proxy.connectionCount, 0, 'the proxy let go of the connection although the client kept its socket open');
  c.destroy();
});

test('limits: connections beyond the cap get 503 and status says degraded; decided bodies are bounded in total', async (t) => {
  const { connect, proxy } = await setup(t, () => {}, { limits: { connections: 3, decidedBody: 1000, decidedTotal: 1500 } });
  const held = [await connect(), await connect(), await connect()];
  const extra = await connect();
  assert.match(await ended(extra), /^HTTP\/1\.1 503[\s\S]*more than 3 Docker API connections/);
  assert.equal(proxy.health().state, 'degraded');
  held[0]!.write('POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 900\r\n\r\n' + 'x'.repeat(899));
  held[1]!.write('POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 900\r\n\r\n' + 'x'.repeat(899));
  assert.match(await ended(held[1]!), /^HTTP\/1\.1 503[\s\S]*too many large requests/);
  held[2]!.write('POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 5000\r\n\r\n' + 'x'.repeat(5000));
  assert.match(await ended(held[2]!), /^HTTP\/1\.1 413/);
  for (const h of held) h.destroy();
});

test('container starts and restarts are held for the before-run hook, which may refuse them', async (t) => {
  const hooked: string[] = [];
  let release!: (v: void | { refuse: string }) => void;
  const { engine, connect } = await setup(t, undefined, {
    beforeRun: (run) => {
      hooked.push(`${run.kind} ${run.id}`);
      return new Promise((r) => (release = r));
    },
  });
  const c = await connect();
  c.write(request('POST', '/v1.43/containers/abc%2Fdef/start', '') + request('GET', '/v1.43/containers/abc/json'));
  await sleep(100);
  assert.deepEqual(hooked, ['start abc/def']);
  assert.equal(engine.requests.length, 0, 'the start waits for the hook');
  release();
  await readUntil(c, /\{\}HTTP[^]*\{\}$/);
  // dockerd decodes %2F before routing, so the canonical path writes the slash itself.
  assert.deepEqual(engine.requests.map((r) => r.target), ['/v1.43/containers/abc/def/start', '/v1.43/containers/abc/json']);
  c.write(request('POST', '/containers/x/restart'));
  await sleep(100);
  release({ refuse: 'berth: no.' });
  assert.match(await ended(c), /400 Bad Request[\s\S]*berth: no\./);
  assert.equal(engine.requests.length, 2, 'the refused restart never reached the engine');
});

test('an exec start is held, sent with its body in one piece, then hijacks', async (t) => {
  const { engine, connect } = await setup(t, (s) => s.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nexec output'), { beforeRun: async () => {} });
  const c = await connect();
  const start = request('POST', '/v1.41/exec/e1/start', JSON.stringify({ Detach: false, Tty: false }), ['Connection: Upgrade', 'Upgrade: tcp']);
  c.write(start + 'stdin bytes');
  await readUntil(c, /exec output/);
  await sleep(100);
  assert.equal(engine.requests[0]!.body, JSON.stringify({ Detach: false, Tty: false }));
  assert.ok(engine.raw().endsWith('stdin bytes'));
  c.destroy();
});

test('a plugin archive streams to the engine; a refused one never arrives whole (its stream is reset)', async (t) => {
  const { engine, connect } = await setup(t);
  const cfg = (src: string) => JSON.stringify({ Mounts: [{ Name: 'm', Source: src, Destination: '/m', Type: 'bind' }] });
  const tarOf = (json: string) => {
    const h = Buffer.alloc(512);
    h.write('config.json', 0);
    h.write(`${json.length.toString(8).padStart(11, '0')}\0`, 124);
    h.write('0', 156);
    const pad = Buffer.alloc((512 - (json.length % 512)) % 512);
    return Buffer.concat([h, Buffer.from(json), pad, Buffer.alloc(1024)]);
  };
  const send = async (archive: Buffer) => {
    const c = await connect();
    c.write(`POST /plugins/create?name=p HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: ${archive.length}\r\n\r\n`);
    c.write(archive);
    return c;
  };
  assert.match(await readUntil(await send(tarOf(cfg('/home/me/x'))), /\{\}$/), /^HTTP\/1\.1 200/);
  assert.equal(engine.requests.length, 1);
  assert.equal(engine.requests[0]!.body.length, tarOf(cfg('/home/me/x')).length, 'the whole archive arrived');
  const res = await ended(await send(tarOf(cfg('/etc'))));
  assert.match(res, /^HTTP\/1\.1 400[\s\S]*\/etc/);
  await sleep(100);
  assert.equal(engine.requests.length, 1, 'the refused archive never completed at the engine');
});

test('a client that leaves while its stream to the VM is still being opened is let go of at once; one that half-closes after a whole request is answered', async (t) => {
  const { connect, proxy, engine } = await setup(t, undefined, { openDelayMs: 1000 });
  const gone: net.Socket[] = [];
  for (let i = 0; i < 20; i++) {
    const c = await connect();
    c.write('POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\n{"Im');
    c.end();
    gone.push(c);
  }
  await sleep(300);
  assert.equal(proxy.connectionCount, 0, 'the abandoned connections were freed before their streams opened');
  const polite = await connect();
  polite.end(request('GET', '/_ping'));
  assert.match(await ended(polite), /\{\}$/);
  await sleep(1200);
  assert.deepEqual(engine.requests.map((r) => r.target), ['/_ping'], 'only the whole request reached the engine');
});
