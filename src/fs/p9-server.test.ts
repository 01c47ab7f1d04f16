import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { P9Server, type ServerLimits } from './p9-server.js';
import { QidMap } from './qids.js';
import { Share } from './share.js';
import { TicketBook, newTicket } from './tickets.js';
import { Msg } from '../../test/support/p9-test-client.js';
import { NOFID } from './p9-wire.js';

/**
 * Who may open the file server (docs/security.md rule 8): only a connection that first proves a
 * single-use ticket for one share, which then attaches to that share only; and how many may try
 * at once (rule 10). The server runs on a Unix socket with real connections.
 */
async function setup(t: TestContext, limits: Partial<ServerLimits> = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-9psrv-'));
  fs.mkdirSync(path.join(dir, 'a'));
  fs.mkdirSync(path.join(dir, 'b'));
  const shares = new Map([
    ['a', new Share({ id: 'a', path: path.join(dir, 'a'), readOnly: false })],
    ['b', new Share({ id: 'b', path: path.join(dir, 'b'), readOnly: false })],
  ]);
  const tickets = new TicketBook();
  const logs: string[] = [];
  const server = new P9Server({ shares, tickets, maxMsize: 65536, qids: new QidMap(), log: (_l, m) => void logs.push(m), limits });
  const sock = path.join(dir, '9p.sock');
  await server.listen(sock);
  t.after(async () => {
    await server.close();
    for (const s of shares.values()) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const ticket = (share: string, ttl = 60_000) => {
    const t = newTicket();
    tickets.add({ ticket: t, share, expiresAt: Date.now() + ttl });
    return t;
  };
  return { server, sock, ticket, logs };
}

class Conn {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly s: net.Socket) {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiters.splice(0).forEach((w) => w());
    });
    s.on('close', () => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    });
    s.on('error', () => {});
  }
  static open(p: string): Promise<Conn> {
    return new Promise((resolve) => {
      const s = net.connect(p, () => resolve(new Conn(s)));
    });
  }
  async until(pred: (b: Buffer) => boolean, ms = 3000): Promise<Buffer> {
    const end = Date.now() + ms;
    while (!pred(this.buf)) {
      if (this.closed || Date.now() > end) return this.buf;
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.buf;
  }
  take(n: number): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Sends a message and returns the reply's type. */
  async rpc(m: Buffer): Promise<number> {
    this.s.write(m);
    const b = await this.until((x) => x.length >= 4 && x.length >= x.readUInt32LE(0));
    if (b.length < 4) return -1;
    return this.take(b.readUInt32LE(0))[4]!;
  }
}

const tversion = () => new Msg().u32(65536).str('9P2000.L').build(100, 0xffff);
const tattach = (fid: number, aname: string) => new Msg().u32(fid).u32(NOFID).str('root').str(aname).u32(1000).build(104, 1);

test('a proven connection serves 9P for its share, and attaches only to that share', async (t) => {
  const { sock, ticket } = await setup(t);
  const c = await Conn.open(sock);
  c.s.write(`berth-9p ${ticket('a')}\n`);
  assert.equal((await c.until((b) => b.includes(0x0a))).toString(), 'ok\n');
  c.take(3);
  assert.equal(await c.rpc(tversion()), 101);
  assert.equal(await c.rpc(tattach(1, 'a')), 105, 'Rattach');
  assert.equal(await c.rpc(tattach(2, 'b')), 7, 'Rlerror: another share');
  c.s.destroy();
});

test('no proof, a wrong, spent, expired or malformed ticket: the connection is closed before any 9P', async (t) => {
  const { sock, ticket } = await setup(t);
  const spent = ticket('a');
  const first = await Conn.open(sock);
  first.s.write(`berth-9p ${spent}\n`);
  await first.until((b) => b.includes(0x0a));
  const expired = ticket('a', -1);
  for (const line of [`berth-9p ${spent}\n`, `berth-9p ${expired}\n`, `berth-9p ${newTicket()}\n`, `berth-9p ${ticket('a').toUpperCase()}\n`, 'hello\n', tversion().toString('latin1')]) {
    const c = await Conn.open(sock);
    c.s.write(Buffer.from(line, 'latin1'));
    const got = await c.until(() => false, 500);
    assert.ok(!got.toString().startsWith('ok'), JSON.stringify(line.slice(0, 30)));
    assert.ok(c.closed || got.toString() === 'refused\n', JSON.stringify(line.slice(0, 30)));
    c.s.destroy();
  }
  first.s.destroy();
});

test('a connection that does not prove itself in time is closed; one that sends a long line is closed at once', async (t) => {
  const { sock } = await setup(t, { proveMs: 200 });
  const slow = await Conn.open(sock);
  slow.s.write('berth-9p ');
  await slow.until(() => false, 600);
  assert.ok(slow.closed);
  const long = await Conn.open(sock);
  long.s.write('x'.repeat(1000));
  await long.until(() => false, 300);
  assert.ok(long.closed);
});

test('unproven and total connections are bounded; a proven connection keeps being served through a flood', async (t) => {
  const { sock, ticket, server } = await setup(t, { connections: 6, unproven: 3, proveMs: 60_000 });
  const good = await Conn.open(sock);
  good.s.write(`berth-9p ${ticket('a')}\n`);
  await good.until((b) => b.includes(0x0a));
  good.take(3);
  const flood: Conn[] = [];
  for (let i = 0; i < 10; i++) flood.push(await Conn.open(sock));
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(flood.filter((c) => !c.closed).length, 3, 'three unproven connections at most');
  assert.equal(server.connectionCount, 4);
  assert.equal(await good.rpc(tversion()), 101, 'the proven connection still answers');
  assert.equal(await good.rpc(tattach(1, 'a')), 105);
  for (const c of flood) c.s.destroy();
  good.s.destroy();
});
