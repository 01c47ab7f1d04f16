import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Mux } from './mux.js';
import { call, serveRpc } from './rpc.js';
import { linkPair } from './memory-link.js';
import { BerthError } from '../util/errors.js';
import { ExecRecordDecoder, ExecRecordType, encodeExecRecord } from './exec-protocol.js';

test('rpc: results, errors with code and hint, unknown methods, timeouts', async () => {
  const [a, b] = linkPair({ split: true });
  const host = new Mux(a, { role: 'host', helloIntervalMs: 20 });
  const guest = new Mux(b, { role: 'guest', helloIntervalMs: 20 });
  await once(host, 'session');
  serveRpc(guest, {
    add: async (p) => (p as { x: number; y: number }).x + (p as { x: number; y: number }).y,
    fail: async () => {
      throw Object.assign(new Error('engine is on fire'), { code: 'ENGINE_FAILED', hint: 'call the fire brigade' });
    },
    slow: () => new Promise((r) => setTimeout(r, 1000)),
  });
  assert.equal(await call(host, 'add', { x: 2, y: 3 }, 1000), 5);
  await assert.rejects(call(host, 'fail', null, 1000), (e: unknown) => e instanceof BerthError && e.code === 'ENGINE_FAILED' && e.hint === 'call the fire brigade');
  await assert.rejects(call(host, 'toString', null, 1000), /no such method/);
  await assert.rejects(call(host, 'slow', null, 100), /did not answer slow within/);
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
