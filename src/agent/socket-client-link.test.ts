import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { SocketClientLink } from './socket-client-link.js';
import { silentLogger } from '../util/log.js';

test('socket-client link: dials until the host listens, bytes both ways, dials again after the host goes, output without a host is dropped', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-scl-'));
  const sock = path.join(dir, 'control.sock');
  const link = new SocketClientLink(sock, silentLogger, 20);
  let server: net.Server | undefined;
  try {
    assert.equal(link.write(Buffer.from('nobody listens')), true, 'dropped, not queued');
    let disconnects = 0;
    link.on('host-disconnected', () => disconnects++);
    const got: Buffer[] = [];
    link.on('data', (d: Buffer) => got.push(d));

    await new Promise((r) => setTimeout(r, 60));
    server = net.createServer();
    server.listen(sock);
    const [first] = (await once(server, 'connection')) as [net.Socket];
    first.write('from host');
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(Buffer.concat(got).toString(), 'from host');
    link.write(Buffer.from('from guest'));
    const [d] = (await once(first, 'data')) as [Buffer];
    assert.equal(d.toString(), 'from guest');

    first.destroy();
    const [second] = (await once(server, 'connection')) as [net.Socket];
    assert.equal(disconnects, 1);
    // The server sees the connection before the link's own connect event: give it a moment.
    await new Promise((r) => setTimeout(r, 30));
    link.write(Buffer.from('again'));
    const [d2] = (await once(second, 'data')) as [Buffer];
    assert.equal(d2.toString(), 'again');
    second.destroy();
  } finally {
    link.close();
    server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
