import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DockerProxy, type BeforeRun } from './docker-proxy.js';
import { DEFAULT_VM_PATHS } from './mount-policy.js';
import { silentLogger } from '../util/log.js';

/**
 * The HTTP-aware Docker socket against a fake engine on a Unix socket: everything it does not
 * refuse reaches the engine byte for byte; container creates with a mount outside the shares are
 * answered 400 by the proxy and never reach the engine; a successful hijack turns the connection
 * into raw bytes, a refused one keeps checking later requests; container and exec starts wait for
 * the before-run hook.
 */

interface Engine {
  received(): Buffer;
  /** Answers the next request: the function gets the bytes received so far. */
  reply: (sock: net.Socket, soFar: Buffer) => void;
  sockets: net.Socket[];
}

async function setup(t: TestContext, reply: Engine['reply'], beforeRun?: BeforeRun): Promise<{ engine: Engine; connect: () => Promise<net.Socket> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-proxy-'));
  const enginePath = path.join(dir, 'engine.sock');
  const proxyPath = path.join(dir, 'docker.sock');
  let got = Buffer.alloc(0);
  const engine: Engine = { received: () => got, reply, sockets: [] };
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    engine.sockets.push(s);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      engine.reply(s, got);
    });
  });
  await new Promise<void>((r) => srv.listen(enginePath, () => r()));
  const proxy = new DockerProxy(proxyPath, async () => net.connect(enginePath), silentLogger, () => ({ shares: [{ path: '/home/me', readOnly: false }], vmPaths: DEFAULT_VM_PATHS }), beforeRun);
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
    });
  return { engine, connect };
}

function request(method: string, target: string, body?: string, extra: string[] = []): string {
  const headers = [`${method} ${target} HTTP/1.1`, 'Host: docker', ...extra];
  if (body !== undefined) headers.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`);
  return `${headers.join('\r\n')}\r\n\r\n${body ?? ''}`;
}

function chunked(method: string, target: string, body: string): string {
  const half = Math.floor(body.length / 2);
  const chunks = [body.slice(0, half), body.slice(half)].map((c) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`).join('');
  return `${method} ${target} HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n${chunks}0\r\n\r\n`;
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

const OK = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('requests that name no host path reach the engine byte for byte, several on one connection', async (t) => {
  const { engine, connect } = await setup(t, (s, soFar) => {
    if (soFar.toString().split('\r\n\r\n').length > 1) s.write(OK);
  });
  const c = await connect();
  const a = request('GET', '/v1.41/containers/json?all=1');
  const b = request('POST', '/v1.41/containers/create?name=x', JSON.stringify({ Image: 'busybox', HostConfig: { Binds: ['/home/me/src:/src', 'vol:/v'] } }));
  c.write(a);
  await readUntil(c, /\{\}$/);
  c.write(b);
  await sleep(200);
  assert.equal(engine.received().toString(), a + b);
  c.destroy();
});

test('a container create with a bind outside the shares is answered 400 by berth and never reaches the engine', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  for (const body of [{ HostConfig: { Binds: ['/etc:/host-etc'] } }, { HostConfig: { Mounts: [{ Type: 'bind', Source: '/etc', Target: '/x' }] } }]) {
    const c = await connect();
    c.write(request('POST', '/v1.43/containers/create', JSON.stringify({ Image: 'busybox', ...body })));
    const res = await readUntil(c, /\}$/);
    assert.match(res, /^HTTP\/1\.1 400 Bad Request/);
    const json = JSON.parse(res.slice(res.indexOf('\r\n\r\n') + 4)) as { message: string };
    assert.match(json.message, /\/etc .*cannot be mounted: it is not inside a shared folder/);
    assert.match(json.message, /"shares" setting/);
  }
  await sleep(100);
  assert.equal(engine.received().length, 0, 'nothing reached the engine');
});

test('chunked bodies are decoded for the check and forwarded exactly as sent', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  const good = chunked('POST', '/containers/create', JSON.stringify({ HostConfig: { Mounts: [{ Type: 'bind', Source: '/home/me/x', Target: '/x' }] } }));
  const c = await connect();
  for (const ch of good) c.write(ch); // one byte at a time
  await sleep(300);
  assert.equal(engine.received().toString(), good);
  const c2 = await connect();
  c2.write(chunked('POST', '/containers/create', JSON.stringify({ HostConfig: { Mounts: [{ Type: 'bind', Source: '/root', Target: '/x' }] } })));
  assert.match(await readUntil(c2, /\}$/), /^HTTP\/1\.1 400/);
});

test('Expect: 100-continue on a checked request is answered by the proxy, the header is not forwarded', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  const c = await connect();
  const body = JSON.stringify({ HostConfig: { Binds: ['/home/me:/h'] } });
  c.write(`POST /containers/create HTTP/1.1\r\nHost: docker\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`);
  assert.match(await readUntil(c, /\r\n\r\n/), /^HTTP\/1\.1 100 Continue/);
  c.write(body);
  await sleep(200);
  const got = engine.received().toString();
  assert.doesNotMatch(got, /expect/i);
  assert.ok(got.endsWith(body));
});

test('volume create with bind options outside the shares is refused too', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  const c = await connect();
  c.write(request('POST', '/v1.41/volumes/create', JSON.stringify({ Name: 'v', Driver: 'local', DriverOpts: { type: 'none', o: 'bind', device: '/var/lib' } })));
  assert.match(await readUntil(c, /\}$/), /^HTTP\/1\.1 400[\s\S]*\/var\/lib/);
  assert.equal(engine.received().length, 0);
});

test('after a successful hijack (101) bytes flow raw both ways, even ones that look like requests', async (t) => {
  let upgraded = false;
  const { engine, connect } = await setup(t, (s) => {
    if (!upgraded) {
      upgraded = true;
      s.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n');
      s.write('output from the container');
    }
  });
  const c = await connect();
  const attach = request('POST', '/v1.41/containers/abc/attach?stream=1&stdin=1', undefined, ['Connection: Upgrade', 'Upgrade: tcp']);
  c.write(attach);
  await readUntil(c, /output from the container/);
  const stdin = request('POST', '/containers/create', JSON.stringify({ HostConfig: { Binds: ['/etc:/e'] } }));
  c.write(stdin);
  await sleep(200);
  assert.equal(engine.received().toString(), attach + stdin, 'stdin of the hijacked stream is not HTTP and passes unchanged');
});

test('a refused hijack (404) leaves the connection in HTTP: a later bad mount is still refused', async (t) => {
  let n = 0;
  const { engine, connect } = await setup(t, (s) => {
    if (n++ === 0) s.write('HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}');
  });
  const c = await connect();
  const attach = request('POST', '/containers/nope/attach?stream=1', undefined, ['Connection: Upgrade', 'Upgrade: tcp']);
  c.write(attach);
  // The smuggling attempt is sent right away, before the engine's answer.
  c.write(request('POST', '/containers/create', JSON.stringify({ HostConfig: { Binds: ['/etc:/e'] } })));
  const res = await readUntil(c, /400 Bad Request[\s\S]*\}$/);
  assert.match(res, /^HTTP\/1\.1 404/);
  assert.equal(engine.received().toString(), attach, 'the create never reached the engine');
});

test('malformed requests are refused: repeated Content-Length, both framings, bad chunk sizes', async (t) => {
  const { engine, connect } = await setup(t, () => {});
  for (const raw of [
    'POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}',
    'POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}',
    'POST /containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
    'NOT A REQUEST\r\n\r\n',
  ]) {
    const c = await connect();
    c.write(raw);
    assert.match(await readUntil(c, /\}$/), /^HTTP\/1\.1 400/, JSON.stringify(raw));
  }
  assert.equal(engine.received().length, 0);
});

test('a container start is held until the before-run hook is done, then sent on unchanged with what followed it', async (t) => {
  let release!: () => void;
  const hooked: string[] = [];
  const { engine, connect } = await setup(
    t,
    (s, soFar) => {
      const requests = soFar.toString().split('\r\n\r\n').length - 1;
      for (let i = (s as net.Socket & { answered?: number }).answered ?? 0; i < requests; i++) s.write(OK);
      (s as net.Socket & { answered?: number }).answered = requests;
    },
    (run) => {
      hooked.push(`${run.kind} ${run.id}`);
      return new Promise<void>((r) => (release = r));
    },
  );
  const c = await connect();
  const start = request('POST', '/v1.43/containers/abc%2Fdef/start', '');
  const next = request('GET', '/v1.43/containers/abc/json');
  c.write(start + next);
  await sleep(200);
  assert.deepEqual(hooked, ['start abc/def']);
  assert.equal(engine.received().length, 0, 'the start waits for the hook');
  release();
  await readUntil(c, /\{\}HTTP[^]*\{\}$/);
  assert.equal(engine.received().toString(), start + next);
  c.destroy();
});

test('an exec start is held until the before-run hook is done, then hijacks as usual', async (t) => {
  let release!: () => void;
  const hooked: string[] = [];
  const { engine, connect } = await setup(
    t,
    (s) => {
      s.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nexec output');
    },
    (run) => {
      hooked.push(`${run.kind} ${run.id}`);
      return new Promise<void>((r) => (release = r));
    },
  );
  const c = await connect();
  const start = request('POST', '/v1.41/exec/e1/start', JSON.stringify({ Detach: false, Tty: false }), ['Connection: Upgrade', 'Upgrade: tcp']);
  const stdin = 'GET /not/a/request HTTP/1.1\r\n\r\n';
  c.write(start + stdin);
  await sleep(200);
  assert.deepEqual(hooked, ['exec e1']);
  assert.equal(engine.received().length, 0, 'the exec start waits for the hook');
  release();
  await readUntil(c, /exec output/);
  await sleep(100);
  assert.equal(engine.received().toString(), start + stdin, 'the stdin that followed passes unchanged once hijacked');
  c.destroy();
});

test('a start whose id is a malformed %-escape is passed to the engine without the hook', async (t) => {
  const hooked: string[] = [];
  const { engine, connect } = await setup(t, (s) => s.write(OK), async (run) => void hooked.push(run.id));
  const c = await connect();
  const start = request('POST', '/containers/%E0%A4%A/start', '');
  c.write(start);
  await readUntil(c, /\{\}$/);
  assert.equal(engine.received().toString(), start);
  assert.deepEqual(hooked, []);
  c.destroy();
});

test('a failing before-run hook does not block the start', async (t) => {
  const { engine, connect } = await setup(t, (s) => s.write(OK), () => Promise.reject(new Error('agent gone')));
  const c = await connect();
  const start = request('POST', '/containers/x/start', '');
  c.write(start);
  await readUntil(c, /\{\}$/);
  assert.equal(engine.received().toString(), start);
  c.destroy();
});
