import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { E } from './errno.js';
import { P9Session, type ActuatorHooks, type GoneEntry } from './p9-session.js';
import { QidMap } from './qids.js';
import { Share, type ShareSpec } from './share.js';
import { QTDIR, QTFILE, T } from './p9-wire.js';
import { Msg, TestClient, errno } from '../../test/support/p9-test-client.js';
import { ACTUATOR_UID_MAX, ACTUATOR_UID_MIN, isActuatorUid, randomActuatorUid } from '../control/actuator.js';

const ACTUATOR_UID = randomActuatorUid();

/**
 * The file server's side of change events (docs/files.md "Change events"): fids attached as the
 * actuator uid change nothing on the host, pass read-only shares, see the tree through
 * `ActuatorHooks.view`, and report their changes through `done`; every other uid's changes are
 * reported through `guestChanged` (their host events are echoes).
 */
const O = { RDONLY: 0, WRONLY: 1, RDWR: 2, TRUNC: 0o1000 };
const AT_REMOVEDIR = 0x200;
const USER = 1000;

type View = { absent: true } | { gone: GoneEntry };

interface FakeHooks extends ActuatorHooks {
  /** "a/b" → what the actuator sees there. */
  views: Map<string, View>;
  /** The comps `done` was called with, joined by "/". */
  dones: string[];
}

function fakeHooks(): FakeHooks {
  const views = new Map<string, View>();
  const dones: string[] = [];
  return {
    uid: ACTUATOR_UID,
    views,
    dones,
    view: (_share, comps) => views.get(comps.join('/')),
    done: (_share, comps) => {
      dones.push(comps.join('/'));
      views.delete(comps.join('/'));
    },
  };
}

interface Setup {
  dir: string;
  spec: ShareSpec;
  share: Share;
  hooks: FakeHooks;
  /** What `guestChanged` was called with, joined by "/". */
  changed: string[];
  c: TestClient;
  /** Root fid of the ordinary uid. */
  user: number;
  /** Root fid of the actuator uid. */
  act: number;
}

function setup(t: TestContext, opts: { readOnly?: boolean; noActuator?: boolean } = {}): Setup {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-9pa-'));
  const dir = path.join(base, 'share');
  fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello world');
  fs.writeFileSync(path.join(dir, 'sub', 'a.txt'), 'a');
  fs.mkdirSync(path.join(dir, 'empty'));
  const spec: ShareSpec = { id: 'home', path: dir, readOnly: opts.readOnly ?? false };
  const share = new Share(spec);
  const hooks = fakeHooks();
  const changed: string[] = [];
  const session = new P9Session({
    shares: new Map([['home', share]]),
    share: 'home',
    maxMsize: 1 << 20,
    qids: new QidMap(),
    log: () => {},
    ...(opts.noActuator ? {} : { actuator: hooks }),
    guestChanged: (s, comps) => {
      assert.equal(s, share);
      changed.push(comps.join('/'));
    },
  });
  const c = new TestClient(session);
  c.version();
  const user = c.attach('home', USER);
  const act = c.attach('home', ACTUATOR_UID);
  t.after(() => {
    session.close();
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { dir, spec, share, hooks, changed, c, user, act };
}

/** Every entry under `dir`: type, inode, mode, size, mtime and content (files), to compare. */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const visit = (rel: string) => {
    const p = path.join(dir, rel);
    const st = fs.lstatSync(p, { bigint: true });
    const content = st.isFile() ? fs.readFileSync(p, 'utf8') : st.isSymbolicLink() ? `-> ${fs.readlinkSync(p)}` : '';
    out[rel || '.'] = `${st.ino} ${st.mode.toString(8)} ${st.size} ${st.mtimeNs} ${st.nlink} ${content}`;
    if (st.isDirectory()) for (const name of fs.readdirSync(p).sort()) visit(path.join(rel, name));
  };
  visit('');
  return out;
}

function gone(p: string): GoneEntry {
  const st = fs.lstatSync(p, { bigint: true });
  return { dev: st.dev, ino: st.ino, mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: st.size, mtimeNs: st.mtimeNs };
}

test('the actuator uid is drawn at random from a range Node can spawn, never the old fixed one', () => {
  const seen = new Set(Array.from({ length: 50 }, () => randomActuatorUid()));
  assert.ok(seen.size > 45, 'random');
  for (const u of seen) assert.ok(isActuatorUid(u) && u >= ACTUATOR_UID_MIN && u <= ACTUATOR_UID_MAX && u < 2 ** 31);
  assert.equal(isActuatorUid(0), false);
  assert.equal(isActuatorUid(2 ** 31), false, 'Node spawns int32 uids only');
});

test('a container process with the old fixed actuator uid (2147483646) is an ordinary user: its writes are applied', (t) => {
  const { c, dir } = setup(t);
  const f = c.walk(c.attach('home', 2147483646), []).fid;
  c.lcreate(f, 'written.txt', 0o1 /* O_WRONLY */, 0o644);
  c.write(f, 0n, Buffer.from('mine'));
  assert.equal(fs.readFileSync(path.join(dir, 'written.txt'), 'utf8'), 'mine');
});

test('actuator lcreate of a name the host already has: the real qid, nothing created; writes counted, not applied', (t) => {
  const s = setup(t);
  fs.writeFileSync(path.join(s.dir, 'new.txt'), 'made on the host');
  s.hooks.views.set('new.txt', { absent: true });
  const real = s.c.walk(s.user, ['new.txt']).qids[0]!;
  const before = tree(s.dir);
  const d = s.c.walk(s.act, []).fid;
  const q = s.c.lcreate(d, 'new.txt', O.RDWR, 0o644);
  assert.deepEqual(q, real);
  assert.equal(q.type, QTFILE);
  assert.equal(s.c.write(d, 0, Buffer.from('guest bytes')), 11);
  assert.equal(s.c.write(d, 1n << 33n, Buffer.from('far')), 3);
  assert.equal(s.c.read(d, 0, 100).length, 0, 'the actuator reads nothing');
  assert.deepEqual(tree(s.dir), before, 'nothing changed on disk');
  assert.equal(fs.readFileSync(path.join(s.dir, 'new.txt'), 'utf8'), 'made on the host');
  assert.deepEqual(s.hooks.dones, ['new.txt']);
  assert.equal(s.hooks.views.has('new.txt'), false);
  assert.equal(s.c.getattr(d).size, 16n, 'getattr after the create: the real file');
  assert.deepEqual(s.changed, []);
  // A name the host does not have cannot be "created" by the actuator, and nothing appears.
  assert.equal(errno(() => s.c.lcreate(s.c.walk(s.act, []).fid, 'nope', O.RDWR, 0o644)), E.ENOENT);
  assert.equal(fs.existsSync(path.join(s.dir, 'nope')), false);
});

test('actuator open for writing, write and truncate change nothing', (t) => {
  const s = setup(t);
  const before = tree(s.dir);
  const f = s.c.walk(s.act, ['hello.txt']).fid;
  s.c.lopen(f, O.WRONLY | O.TRUNC);
  assert.equal(s.c.write(f, 0, Buffer.from('overwritten')), 11);
  s.c.clunk(f);
  s.c.setattr(s.c.walk(s.act, ['hello.txt']).fid, { valid: 0x8, size: 0n });
  s.c.setattr(s.c.walk(s.act, ['hello.txt']).fid, { valid: 0x1 | 0x20 | 0x100, mode: 0o600, mtime: [1n, 0n] });
  assert.deepEqual(tree(s.dir), before);
  assert.equal(fs.readFileSync(path.join(s.dir, 'hello.txt'), 'utf8'), 'hello world');
  assert.deepEqual(s.changed, []);
});

test('actuator mkdir, unlinkat, rmdir, renameat, remove, symlink, link change nothing and call done', (t) => {
  const s = setup(t);
  fs.mkdirSync(path.join(s.dir, 'hostdir'));
  const before = tree(s.dir);
  const real = s.c.walk(s.user, ['hostdir']).qids[0]!;
  const q = s.c.mkdir(s.act, 'hostdir');
  assert.deepEqual(q, real);
  assert.equal(q.type, QTDIR);
  assert.equal(errno(() => s.c.mkdir(s.act, 'not-on-host')), E.ENOENT);
  s.c.unlinkat(s.act, 'hello.txt');
  s.c.unlinkat(s.act, 'empty', AT_REMOVEDIR);
  const sub = s.c.walk(s.act, ['sub']).fid;
  s.c.unlinkat(sub, 'a.txt');
  s.c.renameat(s.act, 'sub', s.act, 'moved');
  s.c.rpc(T.remove, new Msg().u32(s.c.walk(s.act, ['hostdir']).fid));
  s.c.symlink(s.act, 'hostdir', 'target'); // answers with what the host has there
  s.c.link(s.act, s.c.walk(s.act, ['hello.txt']).fid, 'hard');
  assert.equal(errno(() => s.c.rpc(T.mknod, new Msg().u32(s.act).str('node').u32(0o100644).u32(0).u32(0).u32(0))), E.EPERM);
  assert.deepEqual(tree(s.dir), before, 'nothing changed on disk');
  assert.deepEqual(s.hooks.dones, ['hostdir', 'hello.txt', 'empty', 'sub/a.txt', 'sub', 'moved', 'hostdir']);
  assert.deepEqual(s.changed, []);
});

test('actuator rename: fids under the old name follow it (the host already moved it)', (t) => {
  const s = setup(t);
  // Fids the guest holds under the folder, the actuator's and an ordinary process's.
  const actInside = s.c.walk(s.act, ['sub', 'a.txt']).fid;
  const userInside = s.c.walk(s.user, ['sub', 'a.txt']).fid;
  fs.renameSync(path.join(s.dir, 'sub'), path.join(s.dir, 'moved'));
  assert.equal(errno(() => s.c.getattr(userInside)), E.ENOENT, 'stale until the rename is replayed');
  s.hooks.views.set('sub', { gone: gone(path.join(s.dir, 'moved')) });
  s.hooks.views.set('moved', { absent: true });
  const before = tree(s.dir);
  s.c.renameat(s.act, 'sub', s.act, 'moved');
  assert.deepEqual(tree(s.dir), before);
  assert.deepEqual(s.hooks.dones, ['sub', 'moved']);
  assert.equal(s.hooks.views.size, 0);
  assert.equal(s.c.getattr(actInside).size, 1n, 'the fid now names moved/a.txt, which the host has');
  assert.equal(s.c.getattr(userInside).size, 1n, "an ordinary process's fid follows too");
  assert.deepEqual(s.changed, []);
});

test('actuator walk: a name viewed absent is ENOENT although the host has it; other uids are not affected', (t) => {
  const s = setup(t);
  s.hooks.views.set('hello.txt', { absent: true });
  s.hooks.views.set('sub/a.txt', { absent: true });
  assert.equal(errno(() => s.c.walk(s.act, ['hello.txt'])), E.ENOENT);
  const partial = s.c.walk(s.act, ['sub', 'a.txt'], 777);
  assert.equal(partial.qids.length, 1, 'a partial walk: the folder, not the absent file');
  assert.equal(errno(() => s.c.getattr(777)), E.EBADF, 'no fid for a partial walk');
  assert.equal(s.c.walk(s.user, ['hello.txt']).qids.length, 1, 'the ordinary uid sees the host');
  assert.equal(s.c.walk(s.user, ['sub', 'a.txt']).qids.length, 2);
});

test('actuator walk and getattr of a name the host removed: what the guest knew (the gone entry)', (t) => {
  const s = setup(t);
  const p = path.join(s.dir, 'deleted.txt');
  fs.writeFileSync(p, 'x'.repeat(1234));
  fs.chmodSync(p, 0o640);
  const uf = s.c.walk(s.user, ['deleted.txt']);
  const was = s.c.getattr(uf.fid);
  const entry = gone(p);
  fs.unlinkSync(p);
  s.hooks.views.set('deleted.txt', { gone: entry });
  assert.equal(errno(() => s.c.walk(s.user, ['deleted.txt'])), E.ENOENT, 'the host has no such file');
  const w = s.c.walk(s.act, ['deleted.txt']);
  assert.deepEqual(w.qids, uf.qids, 'the same qid as before the delete');
  const a = s.c.getattr(w.fid);
  assert.equal(a.size, 1234n);
  assert.equal(a.size, was.size);
  assert.equal(a.mode, was.mode, 'the mode as the guest saw it');
  assert.equal(a.mode & 0o170000, 0o100000);
  assert.deepEqual([a.uid, a.gid, a.mtimeSec, a.mtimeNsec], [was.uid, was.gid, was.mtimeSec, was.mtimeNsec]);
  assert.deepEqual(a.qid, was.qid);
  // The actuator's unlink of it goes through without touching the host.
  s.c.unlinkat(s.act, 'deleted.txt');
  assert.deepEqual(s.hooks.dones, ['deleted.txt']);
  assert.equal(errno(() => s.c.walk(s.act, ['deleted.txt'])), E.ENOENT, 'after done: the host again');
});

test('actuator walks through and from a folder the host removed (rm -r)', (t) => {
  const s = setup(t);
  fs.mkdirSync(path.join(s.dir, 'tree', 'inner'), { recursive: true });
  fs.writeFileSync(path.join(s.dir, 'tree', 'inner', 'f'), 'ff');
  const qTree = s.c.walk(s.user, ['tree', 'inner', 'f']).qids;
  const entries = {
    tree: gone(path.join(s.dir, 'tree')),
    'tree/inner': gone(path.join(s.dir, 'tree', 'inner')),
    'tree/inner/f': gone(path.join(s.dir, 'tree', 'inner', 'f')),
  };
  fs.rmSync(path.join(s.dir, 'tree'), { recursive: true });
  for (const [k, e] of Object.entries(entries)) s.hooks.views.set(k, { gone: e });

  assert.deepEqual(s.c.walk(s.act, ['tree', 'inner', 'f']).qids, qTree, 'one walk through gone folders');
  const t1 = s.c.walk(s.act, ['tree']);
  assert.equal(t1.qids[0]!.type, QTDIR);
  const a = s.c.getattr(t1.fid);
  assert.equal(a.mode & 0o170000, 0o040000, 'a directory');
  const inner = s.c.walk(t1.fid, ['inner']);
  assert.deepEqual(inner.qids, [qTree[1]!], 'a walk starting from a gone fid');
  const f = s.c.walk(inner.fid, ['f']);
  assert.deepEqual(f.qids, [qTree[2]!]);
  assert.equal(s.c.getattr(f.fid).size, 2n);
  assert.equal(s.c.walk(inner.fid, []).qids.length, 0, 'cloning a gone fid');
  assert.equal(errno(() => s.c.walk(inner.fid, ['other'])), E.ENOENT, 'a name with no view under a gone folder');
  // The ordinary uid: gone is gone.
  assert.equal(errno(() => s.c.walk(s.user, ['tree'])), E.ENOENT);
  // The replay of rm -r: deepest first, from the gone fids.
  s.c.unlinkat(inner.fid, 'f');
  s.c.unlinkat(t1.fid, 'inner', AT_REMOVEDIR);
  s.c.unlinkat(s.act, 'tree', AT_REMOVEDIR);
  assert.deepEqual(s.hooks.dones, ['tree/inner/f', 'tree/inner', 'tree']);
  assert.deepEqual(s.changed, []);
});

test('read-only share: the ordinary uid gets EROFS, the actuator passes (and still changes nothing)', (t) => {
  const s = setup(t, { readOnly: true });
  fs.writeFileSync(path.join(s.dir, 'host-new'), 'made on the host');
  const before = tree(s.dir);
  assert.equal(errno(() => s.c.lcreate(s.c.walk(s.user, []).fid, 'x', O.RDWR, 0o644)), E.EROFS);
  assert.equal(errno(() => s.c.lcreate(s.c.walk(s.user, []).fid, 'host-new', O.RDWR, 0o644)), E.EROFS);
  assert.equal(errno(() => s.c.mkdir(s.user, 'd')), E.EROFS);
  assert.equal(errno(() => s.c.lopen(s.c.walk(s.user, ['hello.txt']).fid, O.WRONLY)), E.EROFS);
  assert.equal(errno(() => s.c.unlinkat(s.user, 'hello.txt')), E.EROFS);
  assert.equal(errno(() => s.c.renameat(s.user, 'hello.txt', s.user, 'y')), E.EROFS);

  const d = s.c.walk(s.act, []).fid;
  assert.equal(s.c.lcreate(d, 'host-new', O.RDWR, 0o644).type, QTFILE);
  assert.equal(s.c.write(d, 0, Buffer.from('nope')), 4);
  s.c.mkdir(s.act, 'sub');
  const w = s.c.walk(s.act, ['hello.txt']).fid;
  s.c.lopen(w, O.WRONLY | O.TRUNC);
  assert.equal(s.c.write(w, 0, Buffer.from('nope')), 4);
  s.c.setattr(s.c.walk(s.act, ['hello.txt']).fid, { valid: 0x8, size: 0n });
  s.c.unlinkat(s.act, 'hello.txt');
  s.c.renameat(s.act, 'host-new', s.act, 'renamed');
  assert.deepEqual(tree(s.dir), before, 'nothing changed on disk');
  assert.deepEqual(s.changed, []);
});

test('read-only share: a write through an fid opened before the share became read-only is EROFS', (t) => {
  const s = setup(t);
  const f = s.c.walk(s.user, ['hello.txt']).fid;
  s.c.lopen(f, O.RDWR);
  s.spec.readOnly = true; // the write itself must check, not only the open
  assert.equal(errno(() => s.c.write(f, 0, Buffer.from('x'))), E.EROFS);
  assert.equal(fs.readFileSync(path.join(s.dir, 'hello.txt'), 'utf8'), 'hello world');
});

test('ordinary changes call guestChanged with the share-relative path; the actuator’s never do', (t) => {
  const s = setup(t);
  const d = s.c.walk(s.user, []).fid;
  s.c.lcreate(d, 'n1', O.RDWR, 0o644);
  s.c.write(d, 0, Buffer.from('data'));
  s.c.mkdir(s.user, 'dir');
  const sub = s.c.walk(s.user, ['sub']).fid;
  s.c.renameat(s.user, 'n1', sub, 'n2');
  s.c.setattr(s.c.walk(s.user, ['sub', 'n2']).fid, { valid: 0x8, size: 1n });
  s.c.symlink(sub, 'link', 'n2');
  s.c.link(sub, s.c.walk(s.user, ['hello.txt']).fid, 'hard');
  s.c.unlinkat(sub, 'n2');
  s.c.unlinkat(s.user, 'dir', AT_REMOVEDIR);
  s.c.rpc(T.remove, new Msg().u32(s.c.walk(s.user, ['sub', 'hard']).fid));
  assert.deepEqual(s.changed, ['n1', 'n1', 'dir', 'n1', 'sub/n2', 'sub/n2', 'sub/link', 'sub/hard', 'sub/n2', 'dir', 'sub/hard']);
  assert.deepEqual(s.hooks.dones, [], 'done is the actuator’s only');

  // The same kinds of change by the actuator (of what the host made meanwhile): no guestChanged.
  s.changed.length = 0;
  fs.writeFileSync(path.join(s.dir, 'm1'), 'host');
  fs.mkdirSync(path.join(s.dir, 'hostdir'));
  const a = s.c.walk(s.act, []).fid;
  s.c.lcreate(a, 'm1', O.RDWR, 0o644);
  s.c.write(a, 0, Buffer.from('data'));
  s.c.mkdir(s.act, 'hostdir');
  s.c.renameat(s.act, 'm1', s.act, 'm2');
  s.c.setattr(s.c.walk(s.act, ['m1']).fid, { valid: 0x8, size: 1n });
  s.c.unlinkat(s.act, 'm1');
  s.c.unlinkat(s.act, 'hostdir', AT_REMOVEDIR);
  assert.deepEqual(s.changed, []);
  assert.deepEqual(s.hooks.dones, ['m1', 'hostdir', 'm1', 'm2', 'm1', 'hostdir']);
});

test('without actuator hooks, the actuator uid is an ordinary uid: its changes are applied', (t) => {
  const s = setup(t, { noActuator: true });
  const d = s.c.walk(s.act, []).fid;
  s.c.lcreate(d, 'real', O.RDWR, 0o644);
  s.c.write(d, 0, Buffer.from('applied'));
  assert.equal(fs.readFileSync(path.join(s.dir, 'real'), 'utf8'), 'applied');
  s.c.unlinkat(s.act, 'hello.txt');
  assert.equal(fs.existsSync(path.join(s.dir, 'hello.txt')), false);
  assert.deepEqual(s.changed, ['real', 'real', 'hello.txt']);
  assert.deepEqual(s.hooks.dones, []);
});

test('walks from an actuator fid stay actuator fids; walks from ordinary fids stay ordinary', (t) => {
  const s = setup(t);
  const before = tree(s.dir);
  const actSub = s.c.walk(s.act, ['sub']).fid;
  s.c.unlinkat(actSub, 'a.txt'); // faked
  assert.deepEqual(tree(s.dir), before);
  const userSub = s.c.walk(s.user, ['sub']).fid;
  s.c.unlinkat(userSub, 'a.txt'); // real
  assert.equal(fs.existsSync(path.join(s.dir, 'sub', 'a.txt')), false);
  assert.deepEqual(s.changed, ['sub/a.txt']);
  assert.deepEqual(s.hooks.dones, ['sub/a.txt']);
});
