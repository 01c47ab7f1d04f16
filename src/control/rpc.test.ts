import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Mux } from './mux.js';
import { call, serveAgentApi } from './rpc.js';
import { fakeAgentHandlers } from '../../test/support/fake-agent.js';
import { linkPair } from './memory-link.js';
import { BerthError } from '../util/errors.js';
import { ExecRecordDecoder, ExecRecordType, encodeExecRecord } from './exec-protocol.js';

/** A host and a guest Mux over an in-memory link, with a session between them. */
async function pair(): Promise<{ host: Mux; guest: Mux }> {
  const [a, b] = linkPair({ split: true });
  const host = new Mux(a, { role: 'host', helloIntervalMs: 20 });
  const guest = new Mux(b, { role: 'guest', helloIntervalMs: 20 });
  await once(host, 'session');
  return { host, guest };
}

/** The document an `rpc` stream answers for `method`. */
async function rawCall(host: Mux, method: string, body: string): Promise<unknown> {
  const stream = await host.open('rpc', { method });
  stream.end(body);
  const parts: Buffer[] = [];
  for await (const d of stream) parts.push(d as Buffer);
  return JSON.parse(Buffer.concat(parts).toString('utf8'));
}

test('rpc transport: unknown methods and unreadable params answer an error; a silent agent times out', async () => {
  const { host, guest } = await pair();
  serveAgentApi(guest, {
    ...fakeAgentHandlers(),
    'engine.status': () => new Promise((r) => setTimeout(() => r({ state: 'ready' }), 1000)),
  });
  assert.deepEqual(await rawCall(host, 'toString', 'null'), { ok: false, error: { code: 'USAGE', message: 'no such method "toString"' } });
  const bad = (await rawCall(host, 'fs.unpin', '{not json')) as { ok: boolean; error: { code: string } };
  assert.equal(bad.ok, false);
  assert.equal(bad.error.code, 'INTERNAL');
  assert.deepEqual(await rawCall(host, 'fs.unpin', JSON.stringify({ paths: ['/a'] })), { ok: true, result: { total: 0 } });
  await assert.rejects(call(host, 'engine.status', {}, 100), (e: unknown) => e instanceof BerthError && e.code === 'AGENT_UNREACHABLE' && /did not answer engine.status within/.test(e.message));
  host.close();
});

test('rpc transport: an answer that is not JSON, or not an object, is a protocol error', async () => {
  const { host, guest } = await pair();
  const answers = ['{"ok":tru', 'null', '[1]', '"ok"'];
  guest.handle('rpc', (stream) => {
    stream.resume();
    stream.end(answers.shift());
  });
  for (let i = 0; i < 4; i++) {
    await assert.rejects(call(host, 'engine.status', {}, 1000), (e: unknown) => e instanceof BerthError && e.code === 'MUX_PROTOCOL', `answer ${i}`);
  }
  host.close();
});

test('exec records: round trip across arbitrary chunking; bad input throws', () => {
  const wire = Buffer.concat([
    encodeExecRecord(ExecRecordType.Stdout, Buffer.from('out')),
    encodeExecRecord(ExecRecordType.Exit, Buffer.from('{"code":3}')),
    encodeExecRecord(ExecRecordType.StdinEof, Buffer.alloc(0)),
  ]);
  const d = new ExecRecordDecoder();
  const got = [...wire].flatMap((b) => d.push(Buffer.from([b])));
  assert.deepEqual(got.map((r) => [r.type, r.payload.toString()]), [
    [ExecRecordType.Stdout, 'out'],
    [ExecRecordType.Exit, '{"code":3}'],
    [ExecRecordType.StdinEof, ''],
  ]);
  assert.throws(() => new ExecRecordDecoder().push(Buffer.from([9, 0, 0, 0, 0])), /unknown exec record type/);
  assert.throws(() => new ExecRecordDecoder().push(Buffer.from([1, 0xff, 0, 0, 0])), /exceeds/);
});
