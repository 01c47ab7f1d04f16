import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { once } from 'node:events';
import { Mux } from './mux.js';
import type { MuxStream } from './mux-stream.js';
import { linkPair, type TestLinkEnd } from './memory-link.js';
import { FrameType, encodeFrame } from './frame.js';
import { BerthError } from '../util/errors.js';

const FAST = { helloIntervalMs: 20 };

async function pair(opts: { capacity?: number; split?: boolean; window?: number } = {}): Promise<{ host: Mux; guest: Mux; a: TestLinkEnd; b: TestLinkEnd }> {
  const [a, b] = linkPair({ split: true, ...opts });
  const host = new Mux(a, { role: 'host', ...FAST, ...(opts.window ? { window: opts.window } : {}) });
  const guest = new Mux(b, { role: 'guest', ...FAST, info: () => ({ bootId: 'b1' }), ...(opts.window ? { window: opts.window } : {}) });
  if (!host.isEstablished) await once(host, 'session');
  return { host, guest, a, b };
}

function echo(mux: Mux): void {
  mux.handle('echo', (s) => {
    s.pipe(s);
  });
}

function readAll(s: MuxStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

test('session: the host gets the guest info; open, echo, close', async () => {
  const [a, b] = linkPair({ split: true });
  const host = new Mux(a, { role: 'host', ...FAST });
  const sessionInfo = once(host, 'session');
  const guest = new Mux(b, { role: 'guest', ...FAST, info: () => ({ bootId: 'b1' }) });
  assert.deepEqual((await sessionInfo)[0], { bootId: 'b1' });
  echo(guest);
  const s = await host.open('echo', { x: 1 });
  const closed = once(s, 'close');
  s.end('hello');
  assert.equal((await readAll(s)).toString(), 'hello');
  await closed;
  assert.equal(host.streamCount, 0);
  host.close();
});

test('unknown service: OPEN_FAIL with the code; a throwing handler resets the stream', async () => {
  const { host, guest } = await pair();
  await assert.rejects(host.open('nope'), (e: unknown) => e instanceof BerthError && e.code === 'MUX_OPEN_FAILED' && e.details?.code === 'NO_SUCH_SERVICE');
  guest.handle('boom', () => {
    throw new Error('handler exploded');
  });
  const s = await host.open('boom');
  await assert.rejects(readAll(s), (e: unknown) => e instanceof BerthError && e.code === 'MUX_RESET' && /handler exploded/.test((e as Error).message));
  host.close();
});

test('half-close both ways: one side ends, the other keeps sending, then ends', async () => {
  const { host, guest } = await pair();
  guest.handle('later', (s) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('end', () => {
      // Our read side is over; we can still write.
      s.write('you said: ');
      setTimeout(() => s.end(Buffer.concat(got)), 20);
    });
  });
  const s = await host.open('later');
  s.end('question');
  assert.equal((await readAll(s)).toString(), 'you said: question');
  host.close();
});

test('RESET propagates as an error on the peer stream', async () => {
  const { host, guest } = await pair();
  const gotStream = new Promise<MuxStream>((r) => guest.handle('x', (s) => r(s)));
  const s = await host.open('x');
  const g = await gotStream;
  const err = once(g, 'error').catch((e: unknown) => e);
  s.on('error', () => {});
  s.destroy(new Error('client went away'));
  const [e] = (await err) as [BerthError];
  assert.equal(e.code, 'MUX_RESET');
  assert.match(e.message, /client went away/);
  host.close();
});

test('32 MiB each way intact over a splitting, back-pressured link', async () => {
  const { host, guest } = await pair({ capacity: 256 * 1024 });
  echo(guest);
  const data = crypto.randomBytes(32 * 1024 * 1024);
  const s = await host.open('echo');
  const t0 = performance.now();
  const result = readAll(s);
  s.end(data);
  const back = await result;
  const ms = performance.now() - t0;
  assert.equal(back.length, data.length);
  assert.equal(sha(back), sha(data));
  console.log(`# mux echo of 32 MiB over the in-memory link: ${ms.toFixed(0)} ms (${((2 * 32 * 8) / (ms / 1000)).toFixed(0)} Mbit/s counting both directions)`);
  host.close();
});

test('flow control: a consumer that does not read stops the sender after one window', async () => {
  const window = 64 * 1024;
  const { host, guest } = await pair({ window });
  const gotStream = new Promise<MuxStream>((r) =>
    guest.handle('sink', (s) => {
      s.pause(); // never reads
      r(s);
    }),
  );
  const s = await host.open('sink');
  const g = await gotStream;
  let accepted = 0;
  const chunk = Buffer.alloc(16 * 1024);
  // Write until the stream pushes back, then give the mux time to move whatever it can.
  for (let i = 0; i < 1000; i++) {
    const more = s.write(chunk);
    accepted += chunk.length; // a write that returns false is still queued
    if (!more) break;
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(g.readableLength <= window, `receiver buffered ${g.readableLength} > window ${window}`);
  assert.ok(accepted < 4 * 1024 * 1024, 'the writer was pushed back');
  // Now read: everything arrives.
  const total = accepted + 16 * 1024;
  s.end(chunk);
  let got = 0;
  g.on('data', (d: Buffer) => (got += d.length));
  g.resume();
  await once(g, 'end');
  assert.equal(got, total);
  host.close();
});

test('fairness: a small request completes while another stream pushes 64 MiB', async () => {
  const { host, guest } = await pair({ capacity: 128 * 1024 });
  let bulkReceived = 0;
  let bulkDone = false;
  guest.handle('bulk', (s) => {
    s.on('data', (d: Buffer) => (bulkReceived += d.length));
    s.on('end', () => {
      bulkDone = true;
      s.end();
    });
  });
  echo(guest);
  const bulk = await host.open('bulk');
  const big = Buffer.alloc(1024 * 1024, 7);
  const writer = (async () => {
    for (let i = 0; i < 64; i++) if (!bulk.write(big)) await once(bulk, 'drain');
    bulk.end();
  })();
  await new Promise((r) => setTimeout(r, 50)); // let the bulk stream get going
  const before = bulkReceived;
  const small = await host.open('echo');
  small.end('ping');
  assert.equal((await readAll(small)).toString(), 'ping');
  const meanwhile = bulkReceived - before;
  assert.equal(bulkDone, false, 'the small request finished before the bulk transfer');
  console.log(`# bulk bytes delivered while the small request was served: ${meanwhile}`);
  assert.ok(meanwhile < 8 * 1024 * 1024, `small request waited behind ${meanwhile} bulk bytes`);
  await writer;
  host.close();
});

test('the guest starting late: the host re-sends HELLO until answered', async () => {
  const [a, b] = linkPair();
  b.detached = true;
  a.detached = true; // nobody listens yet: host HELLOs are lost
  const host = new Mux(a, { role: 'host', ...FAST });
  await new Promise((r) => setTimeout(r, 60));
  a.detached = false;
  b.detached = false;
  const session = once(host, 'session');
  new Mux(b, { role: 'guest', ...FAST, info: () => ({ n: 2 }) });
  assert.deepEqual((await session)[0], { n: 2 });
  host.close();
});

test('guest agent restart with half a frame in the pipe: new session, old streams closed, new ones work', async () => {
  const { host, guest, a, b } = await pair();
  const gotStream = new Promise<MuxStream>((r) => guest.handle('hold', (s) => r(s)));
  const old = await host.open('hold');
  await gotStream;
  const oldErr = once(old, 'error').catch((e: unknown) => e);
  // The old agent dies mid-frame: the host receives a header promising 60000 bytes and 10 of them.
  const half = encodeFrame(FrameType.Data, 2, Buffer.alloc(60000)).subarray(0, 22);
  a.emit('data', half);
  // A new agent takes over the same port.
  b.removeAllListeners('data');
  b.removeAllListeners('drain');
  b.removeAllListeners('close');
  guest.removeAllListeners();
  const lost = once(host, 'session-lost');
  const fresh = new Mux(b, { role: 'guest', ...FAST, info: () => ({ bootId: 'b1', restarted: true }) });
  echo(fresh);
  await lost;
  const [e] = (await oldErr) as [BerthError];
  assert.equal(e.code, 'MUX_CLOSED');
  if (!host.isEstablished) await once(host, 'session');
  const s = await host.open('echo');
  s.end('after restart');
  assert.equal((await readAll(s)).toString(), 'after restart');
  host.close();
});

test('host restart with half a frame left in the guest decoder: resync', async () => {
  const { guest, a, b } = await pair();
  echo(guest);
  // The old host wrote half a frame and died.
  b.emit('data', encodeFrame(FrameType.Data, 1, Buffer.alloc(50000)).subarray(0, 100));
  a.removeAllListeners();
  const host2 = new Mux(a, { role: 'host', ...FAST });
  await once(host2, 'session');
  const s = await host2.open('echo');
  s.end('resynced');
  assert.equal((await readAll(s)).toString(), 'resynced');
  host2.close();
});

test('garbage from the peer: framing error, resync, and the channel keeps working', async () => {
  const { host, guest, a } = await pair();
  echo(guest);
  const lost = once(host, 'session-lost');
  a.emit('data', Buffer.from([0xb7, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
  await lost;
  await once(host, 'session');
  const s = await host.open('echo');
  s.end('still alive');
  assert.equal((await readAll(s)).toString(), 'still alive');
  host.close();
});

test('a peer sending beyond its credit gets its stream reset (FLOW_CONTROL)', async () => {
  const { host, guest, b } = await pair({ window: 1024 });
  const gotStream = new Promise<MuxStream>((r) =>
    guest.handle('x', (s) => {
      s.pause();
      r(s);
    }),
  );
  const s = await host.open('x');
  const g = await gotStream;
  const err = once(g, 'error').catch((e: unknown) => e);
  // Bypass the host's accounting: forge DATA frames straight onto the guest's link.
  b.emit('data', encodeFrame(FrameType.Data, s.id, Buffer.alloc(1000)));
  b.emit('data', encodeFrame(FrameType.Data, s.id, Buffer.alloc(1000)));
  const [e] = (await err) as [BerthError];
  assert.equal(e.code, 'MUX_RESET');
  assert.match(e.message, /beyond the receive window/);
  host.close();
});

test('stream limit and ping', async () => {
  const [a, b] = linkPair();
  const host = new Mux(a, { role: 'host', ...FAST, maxStreams: 3 });
  const guest = new Mux(b, { role: 'guest', ...FAST });
  await once(host, 'session');
  guest.handle('idle', () => {});
  const streams = await Promise.all([host.open('idle'), host.open('idle'), host.open('idle')]);
  await assert.rejects(host.open('idle'), (e: unknown) => e instanceof BerthError && e.details?.code === 'TOO_MANY_STREAMS');
  streams[0]!.destroy();
  await once(streams[0]!, 'close');
  const again = await host.open('idle');
  assert.ok(again.id > 0);
  const ms = await host.ping();
  assert.ok(ms >= 0 && ms < 1000);
  host.close();
});

test('closing the link fails pending opens and destroys streams with MUX_CLOSED', async () => {
  const { host, guest } = await pair();
  guest.handle('idle', () => {});
  const s = await host.open('idle');
  const err = once(s, 'error').catch((e: unknown) => e);
  host.close();
  const [e] = (await err) as [BerthError];
  assert.equal(e.code, 'MUX_CLOSED');
  await assert.rejects(host.open('idle'), (x: unknown) => x instanceof BerthError && x.code === 'MUX_CLOSED');
});
