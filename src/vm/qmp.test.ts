import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, type QmpEvent } from './qmp.js';
import { BerthError } from '../util/errors.js';

/** A scripted QMP peer: greets, accepts capabilities, answers by command name. */
async function fakeQemu(answers: Record<string, unknown>): Promise<{ path: string; server: net.Server; clients: net.Socket[] }> {
  const p = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'berth-qmp-')), 'qmp.sock');
  const clients: net.Socket[] = [];
  const server = net.createServer((c) => {
    clients.push(c);
    c.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 } }, capabilities: [] } }) + '\r\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') c.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
        else if (msg.execute === 'silent') {
          /* never answers */
        } else if (msg.execute in answers) {
          // An unrelated event arrives before the reply: replies are matched by id, not order.
          c.write(JSON.stringify({ event: 'RTC_CHANGE', data: { offset: 1 } }) + '\r\n');
          c.write(JSON.stringify({ return: answers[msg.execute], id: msg.id }) + '\r\n');
        } else c.write(JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` }, id: msg.id }) + '\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(p, r));
  return { path: p, server, clients };
}

test('QMP: greeting, capabilities, commands, events, errors, close', async () => {
  const f = await fakeQemu({ 'query-status': { status: 'running', running: true } });
  const q = await QmpClient.connect(f.path);
  assert.equal(q.version?.qemu.major, 7);
  const events: QmpEvent[] = [];
  q.on('event', (e: QmpEvent) => events.push(e));
  assert.deepEqual(await q.execute('query-status'), { status: 'running', running: true });
  assert.equal(events[0]?.event, 'RTC_CHANGE');
  await assert.rejects(q.execute('nope'), (e: unknown) => e instanceof BerthError && e.code === 'QMP_FAILED' && /has not been found/.test((e as Error).message));
  await assert.rejects(q.execute('silent', undefined, 100), /did not answer silent within 100 ms/);
  const pending = q.execute('silent', undefined, 5000);
  const closed = new Promise((r) => q.once('close', r));
  f.clients[0]!.destroy();
  await closed;
  await assert.rejects(pending, /closed before QEMU answered/);
  assert.equal(q.isClosed, true);
  f.server.close();
});

test('QMP: a socket nobody greets on times out with a clear error', async () => {
  const p = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'berth-qmp-')), 'qmp.sock');
  const server = net.createServer(() => {});
  await new Promise<void>((r) => server.listen(p, r));
  await assert.rejects(QmpClient.connect(p, 200), /did not greet within 200 ms/);
  server.close();
});
