import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { E } from './errno.js';
import { FidBudget, MAX_FIDS, P9Session } from './p9-session.js';
import { QidMap } from './qids.js';
import { Share } from './share.js';
import { MessageDecoder, QTDIR, QTFILE, QTSYMLINK, T } from './p9-wire.js';
import { Msg, TestClient, decodeReply, errno } from '../../test/support/p9-test-client.js';
import { snapshotTree, treeChanges } from '../../test/support/tree-snapshot.js';

/**
 * The 9P2000.L server against a temporary folder: every operation the Linux client uses, the
 * errno it must see, and one attack per security rule of docs/files.md (no path outside the share:
 * "..", symlinks in the middle or at the end, symlinks swapped in after a walk, names with "/" or
 * NUL, device nodes and FIFOs, set-uid bits, read-only shares, hostile bytes).
 */
const O = { RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, TRUNC: 0o1000, DIRECTORY: 0o200000 };
const AT_REMOVEDIR = 0x200;

function setup(t: TestContext, opts: { readOnly?: boolean; budget?: FidBudget; openFiles?: { session: number; total: number } } = {}): { dir: string; outside: string; c: TestClient; root: number; session: P9Session } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-9p-'));
  const dir = path.join(base, 'share');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(dir);
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'secret'), 'host secret');
  fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello world');
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.writeFileSync(path.join(dir, 'sub', 'a.txt'), 'a');
  const share = new Share({ id: 'home', path: dir, readOnly: opts.readOnly ?? false });
  const fidLimits = opts.budget ? { maxFids: MAX_FIDS, budget: opts.budget } : undefined;
  const session = new P9Session({ shares: new Map([['home', share]]), share: 'home', maxMsize: 1 << 20, qids: new QidMap(), log: () => {}, fidLimits, ...(opts.openFiles ? { openFileLimits: opts.openFiles } : {}) });
  const c = new TestClient(session);
  c.version();
  const root = c.attach('home', 1000);
  t.after(() => {
    session.close();
    share.close();
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { dir, outside, c, root, session };
}

test('version: msize is capped at the server maximum; an unknown version is answered "unknown"', () => {
  const s = new P9Session({ shares: new Map(), share: 'home', maxMsize: 512 * 1024, qids: new QidMap(), log: () => {} });
  const c = new TestClient(s);
  assert.deepEqual(c.version(8 << 20), { msize: 512 * 1024, version: '9P2000.L' });
  assert.equal(c.version(65536, '9P2000.u').version, 'unknown');
});

test('attach names the share the connection was opened for, and only that one', (t) => {
  const { c } = setup(t);
  assert.equal(errno(() => c.attach('wrong:home')), E.EACCES);
  assert.equal(errno(() => c.attach('secret-token:home')), E.EACCES, 'the old token form');
  assert.equal(errno(() => c.attach('other')), E.EACCES);
  assert.equal(typeof c.attach('home'), 'number');
});

test('walk and getattr: qids are the host (dev, ino); owners as on the host; shared modes writable for all, private ones kept', (t) => {
  const { dir, c, root } = setup(t);
  const { fid, qids } = c.walk(root, ['sub', 'a.txt']);
  assert.equal(qids.length, 2);
  assert.equal(qids[0]!.type, QTDIR);
  assert.equal(qids[1]!.type, QTFILE);
  const a = c.getattr(fid);
  const st = fs.lstatSync(path.join(dir, 'sub', 'a.txt'), { bigint: true });
  assert.equal(a.qid.path & ((1n << 48n) - 1n), st.ino);
  assert.equal(a.size, 1n);
  assert.equal(a.uid, Number(st.uid));
  fs.chmodSync(path.join(dir, 'sub', 'a.txt'), 0o644);
  assert.equal(c.getattr(fid).mode & 0o777, 0o666, '644 is shown 666: another uid may write where the host user can');
  fs.chmodSync(path.join(dir, 'sub', 'a.txt'), 0o600);
  assert.equal(c.getattr(fid).mode & 0o777, 0o600, 'private files stay private (ssh keys)');
  fs.chmodSync(path.join(dir, 'sub', 'a.txt'), 0o444);
  assert.equal(c.getattr(fid).mode & 0o777, 0o444, 'read-only for the owner stays read-only');
  fs.chmodSync(path.join(dir, 'sub'), 0o755);
  assert.equal(c.getattr(c.walk(root, ['sub']).fid).mode & 0o777, 0o777);
  assert.equal(a.mtimeSec, st.mtimeNs / 1_000_000_000n);
  assert.equal(a.mtimeNsec, st.mtimeNs % 1_000_000_000n);
  // A walk of zero names clones the fid.
  assert.deepEqual(c.walk(fid, []).qids, []);
  // The first name missing: Rlerror ENOENT; a later one missing: a partial Rwalk, and no new fid.
  assert.equal(errno(() => c.walk(root, ['nope'])), E.ENOENT);
  const partial = c.walk(root, ['sub', 'nope'], 555);
  assert.equal(partial.qids.length, 1);
  assert.equal(errno(() => c.getattr(555)), E.EBADF);
});

test('hard links share a qid; different files never do', (t) => {
  const { dir, c, root } = setup(t);
  fs.linkSync(path.join(dir, 'hello.txt'), path.join(dir, 'hello-link'));
  const q1 = c.walk(root, ['hello.txt']).qids[0]!;
  const q2 = c.walk(root, ['hello-link']).qids[0]!;
  const q3 = c.walk(root, ['sub', 'a.txt']).qids[1]!;
  assert.equal(q1.path, q2.path);
  assert.notEqual(q1.path, q3.path);
});

test('open, read, write, create, big offsets beyond 4 GiB', (t) => {
  const { dir, c, root } = setup(t);
  const f = c.walk(root, ['hello.txt']).fid;
  c.lopen(f, O.RDONLY);
  assert.equal(c.read(f, 0, 100).toString(), 'hello world');
  assert.equal(c.read(f, 6, 3).toString(), 'wor');
  assert.equal(c.read(f, 100, 10).length, 0);
  assert.equal(errno(() => c.write(f, 0, Buffer.from('x'))), E.EBADF, 'not open for writing');
  c.clunk(f);
  const d = c.walk(root, []).fid;
  const q = c.lcreate(d, 'new.bin', O.RDWR, 0o644);
  assert.equal(q.type, QTFILE);
  const big = 5n * 1024n ** 3n; // past 4 GiB: offsets are 64-bit
  assert.equal(c.write(d, big, Buffer.from('tail')), 4);
  assert.equal(c.getattr(d).size, big + 4n);
  assert.equal(c.read(d, big, 10).toString(), 'tail');
  assert.equal(fs.statSync(path.join(dir, 'new.bin')).size, Number(big) + 4);
  assert.equal(errno(() => c.lcreate(c.walk(root, []).fid, 'new.bin', O.RDWR, 0o644)), E.EEXIST);
});

test('offsets beyond 2^53: Twrite and a Tsetattr size are refused with EFBIG and change nothing; Tread keeps its exact offset', (t) => {
  const { dir, c, root } = setup(t);
  const f = c.walk(root, []).fid;
  c.lcreate(f, 'big.bin', O.RDWR, 0o644);
  c.write(f, 0, Buffer.from('abc'));
  const limit = 2n ** 53n;
  assert.equal(errno(() => c.write(f, limit, Buffer.from('x'))), E.EFBIG);
  assert.equal(errno(() => c.write(f, limit - 2n, Buffer.from('xyz'))), E.EFBIG, 'the end of the write counts');
  assert.equal(errno(() => c.write(f, 2n ** 64n - 1n, Buffer.from('x'))), E.EFBIG);
  assert.equal(errno(() => c.setattr(f, { valid: 0x8, size: limit })), E.EFBIG);
  assert.equal(errno(() => c.setattr(c.walk(root, ['big.bin']).fid, { valid: 0x8, size: 2n ** 64n - 1n })), E.EFBIG);
  assert.equal(fs.readFileSync(path.join(dir, 'big.bin'), 'utf8'), 'abc', 'nothing written at a rounded offset or at the current position');
  assert.equal(c.read(f, limit + 1n, 10).length, 0, 'read past the end at an exact offset');
  assert.equal(c.read(f, 1n, 10).toString(), 'bc');
  assert.equal(errno(() => c.read(f, 2n ** 64n - 1n, 10)), E.EINVAL, 'beyond off_t: EINVAL, as pread says');
});

test('unlink while open: the open fid keeps reading', (t) => {
  const { dir, c, root } = setup(t);
  const f = c.walk(root, ['hello.txt']).fid;
  c.lopen(f, O.RDONLY);
  c.unlinkat(root, 'hello.txt');
  assert.equal(fs.existsSync(path.join(dir, 'hello.txt')), false);
  assert.equal(c.read(f, 0, 5).toString(), 'hello');
});

test('readdir: ".", "..", every entry with its real qid and type; offsets resume', (t) => {
  const { dir, c, root } = setup(t);
  fs.symlinkSync('hello.txt', path.join(dir, 'link'));
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(dir, 'sub', `f${i}`), '');
  const d = c.walk(root, []).fid;
  c.lopen(d, O.RDONLY | O.DIRECTORY);
  const names = c.readdir(d, 512).map((e) => e.name).sort();
  assert.deepEqual(names, ['.', '..', 'hello.txt', 'link', 'sub'].sort());
  const entries = c.readdir(d);
  const link = entries.find((e) => e.name === 'link')!;
  assert.equal(link.qid.type, QTSYMLINK);
  assert.equal(link.type, 10 /* DT_LNK */);
  const s = c.walk(root, ['sub']).fid;
  c.lopen(s, O.RDONLY);
  const all = c.readdir(s, 256); // small count: many round trips, resumed by offset
  assert.equal(all.length, 2 + 301);
  const sub = all.find((e) => e.name === 'f7')!;
  assert.equal(sub.qid.path & ((1n << 48n) - 1n), fs.lstatSync(path.join(dir, 'sub', 'f7'), { bigint: true }).ino);
});

test('mkdir, symlink, readlink, link, renameat (fids follow the rename), unlinkat with errnos', (t) => {
  const { dir, c, root } = setup(t);
  assert.equal(c.mkdir(root, 'd1').type, QTDIR);
  assert.equal(errno(() => c.mkdir(root, 'd1')), E.EEXIST);
  const q = c.symlink(root, 'abs', '/etc/passwd');
  assert.equal(q.type, QTSYMLINK);
  assert.equal(fs.readlinkSync(path.join(dir, 'abs')), '/etc/passwd');
  assert.equal(c.readlink(c.walk(root, ['abs']).fid), '/etc/passwd');
  c.link(root, c.walk(root, ['hello.txt']).fid, 'hard');
  assert.equal(fs.statSync(path.join(dir, 'hard')).nlink, 2);
  const inside = c.walk(root, ['sub', 'a.txt']).fid;
  c.renameat(root, 'sub', root, 'moved');
  assert.equal(c.getattr(inside).size, 1n, 'the fid under the renamed directory still resolves');
  assert.ok(fs.existsSync(path.join(dir, 'moved', 'a.txt')));
  // rename over an existing file replaces it
  fs.writeFileSync(path.join(dir, 'target'), 'old');
  c.renameat(root, 'hello.txt', root, 'target');
  assert.equal(fs.readFileSync(path.join(dir, 'target'), 'utf8'), 'hello world');
  assert.equal(errno(() => c.unlinkat(root, 'moved', AT_REMOVEDIR)), E.ENOTEMPTY);
  assert.equal(errno(() => c.unlinkat(root, 'moved')), E.EISDIR);
  assert.equal(errno(() => c.unlinkat(root, 'nope')), E.ENOENT);
  c.unlinkat(root, 'd1', AT_REMOVEDIR);
  assert.equal(fs.existsSync(path.join(dir, 'd1')), false);
});

test('setattr: chmod (set-uid stripped), truncate, times; chown accepted and ignored', (t) => {
  const { dir, c, root } = setup(t);
  const f = c.walk(root, ['hello.txt']).fid;
  c.setattr(f, { valid: 0x1, mode: 0o4755 });
  assert.equal(fs.statSync(path.join(dir, 'hello.txt')).mode & 0o7777, 0o755, 'set-uid is never set on the host');
  c.setattr(f, { valid: 0x8, size: 5n });
  assert.equal(fs.readFileSync(path.join(dir, 'hello.txt'), 'utf8'), 'hello');
  c.setattr(f, { valid: 0x20 | 0x100, mtime: [1_000_000_000n, 500_000_000n] });
  assert.equal(Math.round(fs.statSync(path.join(dir, 'hello.txt')).mtimeMs), 1_000_000_000_500);
  c.setattr(f, { valid: 0x2 | 0x4 }); // chown: tolerated
  const created = c.walk(root, []).fid;
  c.lcreate(created, 'suid', O.RDWR, 0o6755);
  assert.equal(fs.statSync(path.join(dir, 'suid')).mode & 0o7000, 0, 'no set-uid/set-gid on created files');
});

test('security: ".." never leaves the share', (t) => {
  const { c, root } = setup(t);
  const rootQid = c.getattr(root).qid;
  const { qids } = c.walk(root, ['..', '..', '..']);
  assert.equal(qids.at(-1)!.path, rootQid.path);
  const up = c.walk(root, ['sub', '..', '..', '..']);
  assert.equal(up.qids.at(-1)!.path, rootQid.path);
});

test('security: names with "/" or NUL, and over-long names, are refused', (t) => {
  const { c, root } = setup(t);
  for (const bad of ['a/b', '../outside', 'a\0b', '/etc']) {
    assert.equal(errno(() => c.walk(root, [bad])), E.EINVAL, JSON.stringify(bad));
    assert.equal(errno(() => c.mkdir(root, bad)), E.EINVAL, JSON.stringify(bad));
  }
  assert.equal(errno(() => c.mkdir(root, 'x'.repeat(256))), E.ENAMETOOLONG);
  assert.equal(errno(() => c.renameat(root, 'hello.txt', root, 'x/../../y')), E.EINVAL);
});

test('security: a symlink in the middle of a walk is never followed (absolute or relative)', (t) => {
  const { dir, outside, c, root } = setup(t);
  fs.symlinkSync(outside, path.join(dir, 'abs'));
  fs.symlinkSync('../outside', path.join(dir, 'rel'));
  for (const link of ['abs', 'rel']) {
    assert.equal(errno(() => c.walk(root, [link, 'secret'])), E.ELOOP, link);
    // The link itself can be walked to (the client resolves it), but not opened or listed through.
    const f = c.walk(root, [link]).fid;
    assert.equal(errno(() => c.lopen(f, O.RDONLY)), E.ELOOP);
    assert.equal(errno(() => c.lcreate(f, 'planted', O.RDWR, 0o644)), E.ELOOP);
    assert.equal(errno(() => c.mkdir(f, 'planted')), E.ELOOP);
  }
  assert.equal(fs.existsSync(path.join(outside, 'planted')), false);
});

test('security: a directory swapped for a symlink after the walk is not followed (CVE-2016-9602)', (t) => {
  const { dir, outside, c, root } = setup(t);
  const d = c.walk(root, ['sub']).fid;
  const file = c.walk(root, ['sub', 'a.txt']).fid;
  // The guest (through another fid) or a race replaces the walked directory by a symlink outward.
  fs.renameSync(path.join(dir, 'sub'), path.join(dir, 'sub-old'));
  fs.symlinkSync(outside, path.join(dir, 'sub'));
  fs.writeFileSync(path.join(outside, 'a.txt'), 'outside a');
  assert.equal(errno(() => c.lcreate(d, 'planted', O.RDWR, 0o644)), E.ELOOP);
  assert.equal(errno(() => c.mkdir(d, 'planted')), E.ELOOP);
  assert.equal(errno(() => c.walk(d, ['secret'])), E.ELOOP);
  assert.equal(errno(() => c.getattr(file)), E.ELOOP);
  assert.equal(errno(() => c.lopen(file, O.RDONLY)), E.ELOOP);
  assert.equal(errno(() => c.unlinkat(d, 'secret')), E.ELOOP);
  assert.equal(errno(() => c.renameat(d, 'secret', root, 'stolen')), E.ELOOP);
  const listed = c.walk(root, ['sub']).fid;
  assert.equal(errno(() => c.lopen(listed, O.RDONLY)), E.ELOOP, 'the symlink itself is not opened as a directory');
  assert.equal(fs.existsSync(path.join(outside, 'planted')), false);
  assert.equal(fs.existsSync(path.join(outside, 'secret')), true);
});

test('security: every operation through a folder swapped for a symlink outward after the walk fails with ELOOP and touches nothing outside', (t) => {
  const { dir, outside, c, root } = setup(t);
  fs.mkdirSync(path.join(dir, 'sub', 'deeper'));
  fs.writeFileSync(path.join(dir, 'sub', 'deeper', 'b.txt'), 'b');
  fs.symlinkSync('a.txt', path.join(dir, 'sub', 'lnk'));
  // The outside folder has every name the requests use, so a request that got through would show.
  fs.writeFileSync(path.join(outside, 'a.txt'), 'outside a');
  fs.mkdirSync(path.join(outside, 'deeper'));
  fs.writeFileSync(path.join(outside, 'deeper', 'b.txt'), 'outside b');
  fs.mkdirSync(path.join(outside, 'empty'));
  fs.symlinkSync('outside-target', path.join(outside, 'lnk'));
  fs.chmodSync(path.join(outside, 'secret'), 0o600);
  // Fids walked while sub was real, each used once after the swap; deeper/b.txt's folder is two
  // names deep, so the share keeps a handle on it (share.ts) that the swap must make unusable.
  const w = (...names: string[]) => c.walk(root, names).fid;
  const fids = { sub: Array.from({ length: 12 }, () => w('sub')), a: Array.from({ length: 12 }, () => w('sub', 'a.txt')) };
  const deep = w('sub', 'deeper', 'b.txt');
  assert.equal(c.getattr(deep).size, 1n);
  const listed = w('sub', 'deeper');
  c.lopen(listed, O.RDONLY);
  const lnk = w('sub', 'lnk');
  const hello = w('hello.txt');
  const before = snapshotTree(outside);
  fs.renameSync(path.join(dir, 'sub'), path.join(dir, 'sub-old'));
  fs.symlinkSync(outside, path.join(dir, 'sub'));
  const sub = () => fids.sub.pop()!;
  const a = () => fids.a.pop()!;
  const ops: [string, () => unknown][] = [
    ['walk from it', () => c.walk(sub(), ['a.txt'])],
    ['walk through it', () => c.walk(root, ['sub', 'a.txt'])],
    ['getattr', () => c.getattr(a())],
    ['getattr two deep', () => c.getattr(deep)],
    ['lopen read', () => c.lopen(a(), O.RDONLY)],
    ['lopen write', () => c.lopen(a(), O.WRONLY | O.TRUNC)],
    ['lopen the folder', () => c.lopen(sub(), O.RDONLY)],
    ['readdir of a folder opened before', () => c.readdir(listed)],
    ['lcreate', () => c.lcreate(sub(), 'planted', O.RDWR, 0o644)],
    ['mkdir', () => c.mkdir(sub(), 'planted')],
    ['symlink', () => c.symlink(sub(), 'planted', '/')],
    ['mknod', () => c.rpc(T.mknod, new Msg().u32(sub()).str('planted').u32(0o100644).u32(0).u32(0).u32(0))],
    ['link into it', () => c.link(sub(), hello, 'planted')],
    ['link from it', () => c.link(root, a(), 'stolen')],
    ['rename from it', () => c.rpc(T.rename, new Msg().u32(a()).u32(root).str('stolen'))],
    ['renameat from it', () => c.renameat(sub(), 'a.txt', root, 'stolen')],
    ['renameat into it', () => c.renameat(root, 'hello.txt', sub(), 'planted')],
    ['unlinkat', () => c.unlinkat(sub(), 'a.txt')],
    ['unlinkat a folder', () => c.unlinkat(sub(), 'empty', AT_REMOVEDIR)],
    ['remove', () => c.rpc(T.remove, new Msg().u32(a()))],
    ['chmod', () => c.setattr(a(), { valid: 0x1, mode: 0o777 })],
    ['truncate', () => c.setattr(a(), { valid: 0x8, size: 0n })],
    ['utimes', () => c.setattr(a(), { valid: 0x20 | 0x100, mtime: [1n, 0n] })],
    ['readlink', () => c.readlink(lnk)],
  ];
  for (const [name, op] of ops) assert.equal(errno(op), E.ELOOP, name);
  // statfs answers for the share whatever the fid; it names no path.
  assert.equal(c.rpc(T.statfs, new Msg().u32(a())).body.readUInt32LE(0), 0x01021997);
  assert.deepEqual(treeChanges(before, snapshotTree(outside)), []);
  assert.ok(!fs.existsSync(path.join(dir, 'stolen')), 'nothing was moved or linked out of the outside folder');
  assert.equal(fs.readFileSync(path.join(dir, 'hello.txt'), 'utf8'), 'hello world');
});

test('a folder the share keeps a handle on is looked up again once the host renamed or replaced it', (t) => {
  const { dir, c, root } = setup(t);
  fs.mkdirSync(path.join(dir, 'a', 'b'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'a', 'b', 'c.txt'), 'old');
  const f = c.walk(root, ['a', 'b', 'c.txt']).fid;
  assert.equal(c.getattr(f).size, 3n);
  // Replaced by the host (rm -rf a/b && mkdir a/b): the fid names the new file.
  fs.renameSync(path.join(dir, 'a', 'b'), path.join(dir, 'a', 'old-b'));
  fs.mkdirSync(path.join(dir, 'a', 'b'));
  fs.writeFileSync(path.join(dir, 'a', 'b', 'c.txt'), 'newer');
  assert.equal(c.getattr(f).size, 5n);
  // Removed: gone, though the share held the folder open.
  fs.rmSync(path.join(dir, 'a', 'b'), { recursive: true });
  assert.equal(errno(() => c.getattr(f)), E.ENOENT);
  // The folder above renamed: the old path is gone too.
  fs.mkdirSync(path.join(dir, 'a', 'b'));
  fs.writeFileSync(path.join(dir, 'a', 'b', 'c.txt'), 'again');
  assert.equal(c.getattr(f).size, 5n);
  fs.renameSync(path.join(dir, 'a'), path.join(dir, 'z'));
  assert.equal(errno(() => c.getattr(f)), E.ENOENT);
  // A guest rename through the server: fids follow it.
  fs.renameSync(path.join(dir, 'z'), path.join(dir, 'a'));
  c.renameat(root, 'a', root, 'y');
  assert.equal(c.getattr(f).size, 5n);
});

test('security: a symlink as the last component is never followed by open, truncate or chmod', (t) => {
  const { dir, outside, c, root } = setup(t);
  fs.symlinkSync(path.join(outside, 'secret'), path.join(dir, 'link'));
  const f = c.walk(root, ['link']).fid;
  assert.equal(errno(() => c.lopen(f, O.RDWR)), E.ELOOP);
  assert.equal(errno(() => c.setattr(f, { valid: 0x8, size: 0n })), E.EINVAL);
  c.setattr(f, { valid: 0x1, mode: 0o777 });
  assert.equal(fs.readFileSync(path.join(outside, 'secret'), 'utf8'), 'host secret');
  assert.notEqual(fs.statSync(path.join(outside, 'secret')).mode & 0o777, 0o777);
});

test('security: FIFOs and device nodes are never opened, nor created (CVE-2023-2861)', (t) => {
  const { dir, c, root } = setup(t);
  execFileSync('mkfifo', [path.join(dir, 'fifo')]);
  const f = c.walk(root, ['fifo']).fid;
  const t0 = Date.now();
  assert.equal(errno(() => c.lopen(f, O.RDONLY)), E.EACCES);
  assert.equal(errno(() => c.lopen(c.walk(root, ['fifo']).fid, O.WRONLY)), E.ENXIO);
  assert.ok(Date.now() - t0 < 1000, 'opening a FIFO never blocks the server');
  const mk = (mode: number) => c.rpc(T.mknod, new Msg().u32(root).str('dev').u32(mode).u32(1).u32(3).u32(0));
  assert.equal(errno(() => mk(0o020666)), E.EPERM, 'character device');
  assert.equal(errno(() => mk(0o010666)), E.EPERM, 'FIFO');
  assert.equal(fs.existsSync(path.join(dir, 'dev')), false);
});

test('security: a read-only share refuses every change with EROFS', (t) => {
  const { dir, c, root } = setup(t, { readOnly: true });
  const f = c.walk(root, ['hello.txt']).fid;
  assert.equal(errno(() => c.lopen(f, O.RDWR)), E.EROFS);
  assert.equal(errno(() => c.lopen(c.walk(root, ['hello.txt']).fid, O.WRONLY | O.TRUNC)), E.EROFS);
  assert.equal(errno(() => c.lcreate(c.walk(root, []).fid, 'x', O.RDWR, 0o644)), E.EROFS);
  assert.equal(errno(() => c.mkdir(root, 'x')), E.EROFS);
  assert.equal(errno(() => c.unlinkat(root, 'hello.txt')), E.EROFS);
  assert.equal(errno(() => c.renameat(root, 'hello.txt', root, 'y')), E.EROFS);
  assert.equal(errno(() => c.setattr(c.walk(root, ['hello.txt']).fid, { valid: 0x8, size: 0n })), E.EROFS);
  assert.equal(errno(() => c.symlink(root, 's', 'x')), E.EROFS);
  assert.equal(fs.readFileSync(path.join(dir, 'hello.txt'), 'utf8'), 'hello world');
  c.lopen(c.walk(root, ['hello.txt']).fid, O.RDONLY); // reading still works
});

test('hostile messages get Rlerror or nothing, never an exception; fids are bounded by what the client allocates', (t) => {
  const { session } = setup(t);
  const cases: Buffer[] = [
    Buffer.from([7, 0, 0, 0, 110, 1, 0]), // Twalk with no body
    new Msg().u32(1).u32(2).u16(17).build(T.walk, 3), // 17 names > MAXWELEM
    new Msg().u32(1).u64(0).u32(0xffffffff).build(T.write, 4), // count beyond the message
    new Msg().u32(1).build(200, 5), // unknown type
    new Msg().u32(1).str(Buffer.alloc(10)).u32(0).raw(Buffer.from([1, 2, 3])).build(T.mkdir, 6), // trailing bytes
  ];
  for (const m of cases) {
    const r = session.handle(m);
    assert.ok(r, 'an answer');
    assert.equal(decodeReply(r).type, T.lerror + 1);
  }
  assert.equal(session.handle(Buffer.from([1, 2, 3])), undefined, 'no tag: no answer');
  let rng = 42;
  const rand = () => ((rng = (rng * 1103515245 + 12345) & 0x7fffffff), rng);
  for (let i = 0; i < 20_000; i++) {
    const len = 7 + (rand() % 64);
    const b = Buffer.alloc(len);
    for (let j = 0; j < len; j++) b[j] = rand() & 0xff;
    b.writeUInt32LE(len, 0);
    b[4] = [T.walk, T.getattr, T.lopen, T.read, T.write, T.readdir, T.mkdir, T.renameat, T.unlinkat, T.attach, T.xattrwalk, T.setattr][rand() % 12]!;
    session.handle(b); // must not throw
  }
  assert.ok(session.fidCount < 100);
});

test(`fids are bounded: the ${MAX_FIDS}th fid and beyond get EMFILE, the session keeps answering, and clunked fids make room`, (t) => {
  const { c, root, session } = setup(t);
  const deep = c.walk(root, ['sub', 'a.txt']).fid;
  let n = session.fidCount;
  for (; n < MAX_FIDS; n++) c.walk(root, []); // clones: a fid costs no host call
  assert.equal(session.fidCount, MAX_FIDS);
  assert.equal(errno(() => c.walk(root, [])), E.EMFILE);
  assert.equal(errno(() => c.walk(root, ['sub'])), E.EMFILE);
  assert.equal(errno(() => c.attach('home')), E.EMFILE);
  // Walking a fid onto itself makes no new one.
  assert.equal(c.walk(deep, [], deep).fid, deep);
  assert.equal(c.getattr(deep).size, 1n, 'the session keeps answering');
  for (const fid of [root + 1, root + 2, root + 3]) c.clunk(fid);
  const again = c.walk(root, ['sub', 'a.txt']).fid;
  assert.equal(c.getattr(again).size, 1n);
  c.walk(root, []);
  c.walk(root, []);
  assert.equal(errno(() => c.walk(root, [])), E.EMFILE);
});

test('fids are bounded by the memory they take too: long names get ENFILE past the budget, and every byte comes back', (t) => {
  const budget = new FidBudget(64 * 1024);
  const { dir, c, root, session } = setup(t, { budget });
  const long = (i: number) => `${i}`.padStart(255, 'x');
  const names = Array.from({ length: 12 }, (_, i) => long(i)); // 3 KiB: the host's paths end at 4 KiB
  fs.mkdirSync(path.join(dir, ...names), { recursive: true });
  const fids: number[] = [];
  const refused = errno(() => {
    for (;;) fids.push(c.walk(root, names).fid);
  });
  assert.equal(refused, E.ENFILE);
  assert.ok(budget.used <= budget.limit);
  // Names are held once however many fids hold them: many fids fit before the budget ends.
  assert.ok(fids.length > 50, `${fids.length} fids of 12 names of 255 bytes in 64 KiB`);
  for (const f of fids.splice(0, 10)) c.clunk(f);
  fids.push(c.walk(root, names).fid);
  c.walk(root, ['sub'], 999);
  const used = budget.used;
  for (let i = 0; i < 100; i++) c.walk(999, [], 999); // a fid walked onto itself again and again costs no more
  assert.equal(budget.used, used);
  c.clunk(999);
  // Creates, renames that fids follow, removes: the budget follows them.
  const d = c.walk(root, ['sub']).fid;
  c.lcreate(d, 'made', O.RDWR, 0o644);
  c.renameat(root, 'sub', root, long(99));
  c.rpc(T.remove, new Msg().u32(d));
  const spare = c.walk(root, []).fid;
  assert.equal(
    errno(() => {
      for (;;) fids.push(c.walk(root, []).fid);
    }),
    E.ENFILE,
  );
  assert.equal(errno(() => c.lcreate(spare, long(98), O.RDWR, 0o644)), E.ENFILE, 'nothing is created when its fid would be over the budget');
  assert.equal(fs.existsSync(path.join(dir, long(98))), false);
  session.close();
  assert.equal(budget.used, 0);
});

test('the framer refuses sizes below the header or above msize, and splits pipelined messages', () => {
  const d = new MessageDecoder(8192);
  const got: string[] = [];
  const two = Buffer.concat([new Msg().u32(1).build(T.clunk, 1), new Msg().u32(2).build(T.clunk, 2)]);
  for (let i = 0; i < two.length; i++) d.push(two.subarray(i, i + 1), (r) => got.push(r.kind === 'message' ? `m${r.msg.readUInt16LE(5)}` : r.reason));
  assert.deepEqual(got, ['m1', 'm2']);
  const e1: string[] = [];
  new MessageDecoder(8192).push(Buffer.from([3, 0, 0, 0, 0, 0, 0]), (r) => e1.push(r.kind));
  const e2: string[] = [];
  new MessageDecoder(8192).push(Buffer.from([0x01, 0x20, 0, 0, 0, 0, 0]), (r) => e2.push(r.kind));
  assert.deepEqual([e1, e2], [['error'], ['error']]);
});

test('statfs, fsync, lock and getlock answer; xattrs are absent (ENODATA) and cannot be set', (t) => {
  const { c, root } = setup(t);
  const st = c.rpc(T.statfs, new Msg().u32(root)).body;
  assert.equal(st.readUInt32LE(0), 0x01021997);
  const f = c.walk(root, ['hello.txt']).fid;
  c.lopen(f, O.RDWR);
  c.rpc(T.fsync, new Msg().u32(f).u32(0));
  assert.equal(c.rpc(T.lock, new Msg().u32(f).u8(1).u32(0).u64(0).u64(0).u32(1).str('guest')).body[0], 0);
  assert.equal(errno(() => c.rpc(T.xattrwalk, new Msg().u32(f).u32(999).str('user.x'))), E.ENODATA);
  assert.equal(errno(() => c.rpc(T.xattrcreate, new Msg().u32(f).str('user.x').u64(1).u32(0))), E.EOPNOTSUPP);
});

test('open files are bounded per session: beyond, EMFILE and no host descriptor; a clunk makes room; the session answers on', (t) => {
  const { c, root } = setup(t, { openFiles: { session: 3, total: 100 } });
  const open = () => {
    const f = c.walk(root, ['hello.txt']).fid;
    c.lopen(f, 0);
    return f;
  };
  const held = [open(), open(), open()];
  const extra = c.walk(root, ['hello.txt']).fid;
  assert.equal(errno(() => c.lopen(extra, 0)), E.EMFILE);
  assert.equal(errno(() => c.lcreate(c.walk(root, []).fid, 'new.txt', 1, 0o644)), E.EMFILE, 'a create is refused too, before anything is made');
  c.clunk(held[0]!);
  c.lopen(extra, 0);
  assert.equal(c.read(extra, 0, 5).toString(), 'hello');
});
