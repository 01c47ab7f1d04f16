import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SharedFolders } from './shared-folders.js';
import { silentLogger } from '../util/log.js';

/**
 * The agent's pins (docs/files.md "Change events") on a temporary folder of this Linux host: real
 * O_PATH descriptors, and /proc/self/fd to tell where their entries are now. The actuator's
 * replays need the VM (busybox as the actuator's uid) and are covered by test/e2e/files.test.ts;
 * here only the ops that replay nothing: `pin` and `sweep`.
 */

function setup(t: TestContext): { root: string; folders: SharedFolders; p: (...rel: string[]) => string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-pins-'));
  const folders = new SharedFolders(silentLogger);
  t.after(() => {
    folders.close();
    fs.rmSync(root, { recursive: true, force: true });
  });
  return { root, folders, p: (...rel) => path.join(root, ...rel) };
}

/** Descriptors of this process whose target is under `dir`, by /proc/self/fd. */
function heldUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (target === dir || target.startsWith(`${dir}/`)) out.push(target);
    } catch {
      // closed while listing (the listing's own descriptor)
    }
  }
  return out.sort();
}

test('pin holds every folder and file under the root', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('dist', 'js'), { recursive: true });
  fs.writeFileSync(p('dist', 'js', 'app.js'), 'x');
  fs.writeFileSync(p('top.txt'), 'x');
  const r = await folders.pin(root);
  assert.deepEqual(r, { pinned: 3, files: 2, truncated: false });
  for (const x of [root, p('dist'), p('dist', 'js'), p('dist', 'js', 'app.js'), p('top.txt')]) assert.ok(folders.holds(x), x);
  assert.equal(heldUnder(root).length, 5);
});

test('sweep: what the guest deleted is let go; a folder made again under the same name is pinned anew (rm -rf dist && mkdir dist)', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('dist', 'js'), { recursive: true });
  fs.writeFileSync(p('dist', 'js', 'app.js'), 'x');
  fs.writeFileSync(p('keep.txt'), 'x');
  await folders.pin(root);
  const before = fs.statSync(p('dist')).ino;
  fs.rmSync(p('dist'), { recursive: true });
  fs.mkdirSync(p('dist'));
  assert.notEqual(fs.statSync(p('dist')).ino, before);
  // What the host sends for the guest's own rm -rf and mkdir: a sweep of the folder above (then
  // a pin of dist, when Node reported the new folder).
  await folders.act({ op: 'sweep', path: root });
  assert.ok(!folders.holds(p('dist', 'js', 'app.js')), 'the old dist/js/app.js is let go');
  assert.ok(!folders.holds(p('dist', 'js')));
  assert.ok(folders.holds(p('keep.txt')), 'entries that stayed keep their pins');
  assert.ok(!heldUnder(root).some((x) => x.endsWith(' (deleted)')), `no descriptor of a deleted entry is held: ${heldUnder(root).join(', ')}`);
  assert.ok(folders.holds(p('dist')), 'the new dist is pinned by the sweep');
  await folders.act({ op: 'pin', path: p('dist') });
  assert.deepEqual(
    heldUnder(root).filter((x) => x === p('dist')),
    [p('dist')],
    'the new dist is held once',
  );
  assert.equal(folders.pinnedCount, 3); // root, keep.txt, the new dist
});

test('pin of a name whose pin is of a deleted folder: the folder standing there now is pinned (the host could not tell them apart)', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('out'));
  await folders.pin(root);
  fs.rmdirSync(p('out'));
  fs.mkdirSync(p('out'));
  await folders.act({ op: 'pin', path: p('out') });
  assert.deepEqual(heldUnder(root).filter((x) => x.startsWith(p('out'))), [p('out')]);
});

test('sweep: what the guest renamed keeps its pin under the new name, or lets go of it when it left the pinned roots', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('src', 'lib'), { recursive: true });
  fs.writeFileSync(p('src', 'lib', 'a.js'), 'x');
  fs.mkdirSync(p('elsewhere'));
  const inner = p('inner');
  fs.mkdirSync(inner);
  fs.writeFileSync(path.join(inner, 'b.js'), 'x');
  await folders.pin(p('src'));
  await folders.pin(inner);
  fs.renameSync(p('src', 'lib'), p('src', 'code'));
  await folders.act({ op: 'sweep', path: p('src') });
  assert.ok(folders.holds(p('src', 'code')));
  assert.ok(folders.holds(p('src', 'code', 'a.js')), 'the pins inside the renamed folder follow it');
  assert.ok(!folders.holds(p('src', 'lib')));
  // Out of every pinned root: no longer held.
  fs.renameSync(path.join(inner, 'b.js'), p('elsewhere', 'b.js'));
  await folders.act({ op: 'sweep', path: inner });
  assert.ok(!folders.holds(path.join(inner, 'b.js')));
  assert.ok(!folders.holds(p('elsewhere', 'b.js')));
  assert.deepEqual(heldUnder(p('elsewhere')), []);
});

test('sweep leaves pins outside its folder alone, and unpin closes what no root covers', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('a'));
  fs.mkdirSync(p('b'));
  fs.writeFileSync(p('b', 'f'), 'x');
  await folders.pin(root);
  fs.rmSync(p('b', 'f'));
  await folders.act({ op: 'sweep', path: p('a') });
  assert.ok(folders.holds(p('b', 'f')), 'a sweep of a/ does not look at b/');
  await folders.act({ op: 'sweep', path: p('b') });
  assert.ok(!folders.holds(p('b', 'f')));
  folders.unpin(root);
  assert.equal(folders.pinnedCount, 0);
  assert.deepEqual(heldUnder(root), []);
});

test('unpin lets go of the pins at a path and below (the host removed more than the replays followed)', async (t) => {
  const { root, folders, p } = setup(t);
  fs.mkdirSync(p('gen', 'deep'), { recursive: true });
  fs.writeFileSync(p('gen', 'deep', 'x.js'), 'x');
  fs.writeFileSync(p('keep.txt'), 'x');
  await folders.pin(root);
  await folders.act({ op: 'unpin', path: p('gen') });
  assert.deepEqual(heldUnder(p('gen')), []);
  assert.ok(folders.holds(p('keep.txt')));
  assert.ok(folders.holds(root));
});

test('sweep of a root given through a symlink keeps the pins that are where they were (the kernel names them by their real path)', async (t) => {
  const { folders, p } = setup(t);
  fs.mkdirSync(p('real', 'sub'), { recursive: true });
  fs.writeFileSync(p('real', 'sub', 'a.txt'), 'x');
  fs.writeFileSync(p('real', 'gone.txt'), 'x');
  fs.symlinkSync('real', p('link'));
  await folders.pin(p('link'));
  fs.rmSync(p('real', 'gone.txt'));
  // Count the descriptors the sweep closes: only gone.txt's (a pin closed and opened again would
  // hold a new inode in the VM's 9P mount, and a watcher's would no longer be the pinned one).
  const closed: number[] = [];
  const closeSync = fs.closeSync;
  fs.closeSync = (fd: number) => {
    closed.push(fd);
    closeSync(fd);
  };
  try {
    await folders.act({ op: 'sweep', path: p('link') });
  } finally {
    fs.closeSync = closeSync;
  }
  assert.equal(closed.length, 1, `closed ${closed.length} descriptors`);
  assert.ok(folders.holds(p('link', 'sub')));
  assert.ok(folders.holds(p('link', 'sub', 'a.txt')));
  assert.ok(!folders.holds(p('link', 'gone.txt')));
  await folders.act({ op: 'pin', path: p('link', 'sub') });
  assert.deepEqual(heldUnder(p('real', 'sub')), [p('real', 'sub'), p('real', 'sub', 'a.txt')], 'nothing was pinned twice');
});
