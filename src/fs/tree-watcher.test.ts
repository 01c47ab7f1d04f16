import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TreeWatcher } from './tree-watcher.js';
import { Share } from './share.js';
import { shareWithOutwardLinks } from '../../test/support/outward-links.js';

/** A TreeWatcher on the folder `root` of a share in a temporary folder of this host; names reported, as 'a/b' strings. */
function setup(t: TestContext, prepare?: (root: string) => void, maxDirs = 1000) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-tw-'));
  const root = path.join(base, 'root');
  fs.mkdirSync(root);
  prepare?.(root);
  const seen = new Set<string>();
  const limits: string[] = [];
  const share = new Share({ id: 's', path: base, readOnly: false });
  const w = new TreeWatcher(share, ['root'], { onChange: (rel) => seen.add(rel.join('/')), onLimit: (i) => limits.push(`${i.dir}: ${i.reason}`), maxDirs });
  t.after(() => {
    w.close();
    share.close();
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { base, root, w, seen, limits, h: (...rel: string[]) => path.join(root, ...rel) };
}

/** Waits until `pred` holds (up to 2 s). */
async function until(pred: () => boolean): Promise<void> {
  const end = Date.now() + 2000;
  while (!pred() && Date.now() < end) await sleep(10);
}

test('every one of 600 removals in a folder is reported (Node 20 recursive fs.watch reported 10)', async (t) => {
  const s = setup(t, (r) => {
    fs.mkdirSync(path.join(r, 'bulk'));
    for (let i = 0; i < 600; i++) fs.writeFileSync(path.join(r, 'bulk', `f${i}`), 'x');
  });
  for (let i = 0; i < 600; i++) fs.rmSync(s.h('bulk', `f${i}`));
  await until(() => s.seen.size >= 600);
  for (let i = 0; i < 600; i++) assert.ok(s.seen.has(`bulk/f${i}`), `bulk/f${i} not reported`);
});

test('folders made later are watched too, nested ones included', async (t) => {
  const s = setup(t);
  fs.mkdirSync(s.h('x', 'y', 'z'), { recursive: true });
  await until(() => s.w.size === 4);
  assert.equal(s.w.size, 4, 'root, x, x/y, x/y/z');
  s.seen.clear();
  fs.writeFileSync(s.h('x', 'y', 'z', 'deep.txt'), 'x');
  fs.appendFileSync(s.h('x', 'y', 'z', 'deep.txt'), 'more');
  await until(() => s.seen.has('x/y/z/deep.txt'));
  assert.ok(s.seen.has('x/y/z/deep.txt'), [...s.seen].join(', '));
});

test('a removed folder is no longer watched; a renamed one is watched under its new name', async (t) => {
  const s = setup(t, (r) => {
    fs.mkdirSync(path.join(r, 'gone', 'inner'), { recursive: true });
    fs.mkdirSync(path.join(r, 'old'));
  });
  assert.equal(s.w.size, 4);
  fs.rmSync(s.h('gone'), { recursive: true });
  await until(() => s.w.size === 2);
  assert.equal(s.w.size, 2, 'root and old');
  fs.renameSync(s.h('old'), s.h('new'));
  await until(() => s.seen.has('new'));
  s.seen.clear();
  fs.writeFileSync(s.h('new', 'f'), 'x');
  await until(() => s.seen.has('new/f'));
  assert.ok(s.seen.has('new/f'), [...s.seen].join(', '));
});

test('a folder removed and made again under the same name at once is watched again (rm -rf d && mkdir d)', async (t) => {
  const s = setup(t, (r) => fs.mkdirSync(path.join(r, 'dist', 'js'), { recursive: true }));
  fs.rmSync(s.h('dist'), { recursive: true });
  fs.mkdirSync(s.h('dist'));
  await until(() => s.seen.has('dist'));
  await sleep(50);
  s.seen.clear();
  fs.writeFileSync(s.h('dist', 'new.txt'), 'x');
  await until(() => s.seen.has('dist/new.txt'));
  assert.ok(s.seen.has('dist/new.txt'), [...s.seen].join(', '));
  assert.equal(s.w.size, 2, 'root and the new dist');
});

test('symbolic links are not followed: changes behind a link to a folder outside are not reported', async (t) => {
  const s = setup(t);
  const outside = path.join(s.base, 'outside');
  fs.mkdirSync(outside);
  fs.symlinkSync(outside, s.h('link'));
  await until(() => s.seen.has('link'));
  s.seen.clear();
  fs.writeFileSync(path.join(outside, 'secret'), 'x');
  fs.writeFileSync(s.h('here'), 'x');
  await until(() => s.seen.has('here'));
  await sleep(50);
  assert.deepEqual([...s.seen], ['here']);
  assert.equal(s.w.size, 1);
});

test('a folder that is a symlink to one outside the share, or lies behind one, is not watched: nothing outside is reported', async (t) => {
  const { dir, outside } = shareWithOutwardLinks(t, 'berth-tw-');
  const share = new Share({ id: 's', path: dir, readOnly: false });
  const seen: string[] = [];
  const opts = { onChange: (rel: string[]) => seen.push(rel.join('/')), onLimit: () => {}, maxDirs: 1000 };
  const link = new TreeWatcher(share, ['link'], opts);
  const behind = new TreeWatcher(share, ['behind', 'sub'], opts);
  t.after(() => {
    link.close();
    behind.close();
    share.close();
  });
  assert.equal(link.size, 0);
  assert.equal(behind.size, 0);
  fs.writeFileSync(path.join(outside, 'x'), 'x');
  fs.writeFileSync(path.join(outside, 'sub', 'y'), 'y');
  fs.mkdirSync(path.join(outside, 'sub', 'new'));
  await sleep(100);
  assert.deepEqual(seen, []);
});

test('a watched folder moved out of the share and replaced by a symlink to it is no longer watched', async (t) => {
  const s = setup(t, (r) => fs.mkdirSync(path.join(r, 'd', 'inner'), { recursive: true }));
  assert.equal(s.w.size, 3);
  const away = path.join(s.base, 'away');
  fs.renameSync(s.h('d'), away);
  fs.symlinkSync(away, s.h('d'));
  await until(() => s.w.size === 1);
  assert.equal(s.w.size, 1, 'the root only');
  s.seen.clear();
  fs.writeFileSync(path.join(away, 'secret'), 'x');
  fs.writeFileSync(path.join(away, 'inner', 'secret'), 'x');
  fs.writeFileSync(s.h('here'), 'x');
  await until(() => s.seen.has('here'));
  await sleep(50);
  assert.deepEqual([...s.seen], ['here']);
});

test('over maxDirs: the rest is left out and onLimit is called once', async (t) => {
  const s = setup(
    t,
    (r) => {
      for (let i = 0; i < 5; i++) fs.mkdirSync(path.join(r, `d${i}`));
    },
    3,
  );
  assert.equal(s.w.size, 3);
  fs.mkdirSync(s.h('d9'));
  await until(() => s.seen.has('d9'));
  assert.equal(s.limits.length, 1, s.limits.join('; '));
  assert.match(s.limits[0]!, /more than 3 folders/);
});
