import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChangeEvents, type ChangeEventsLimits } from './change-events.js';
import type { GoneEntry } from './p9-session.js';
import { Share } from './share.js';
import { REPLAYED_OPS, type ActRequest } from '../control/actuator.js';

/** The actuator uid of these tests' file server. */
const ACTOR = 1_234_567_890;
import { shareWithOutwardLinks } from '../../test/support/outward-links.js';

/**
 * Change events (docs/files.md "Change events") against a temporary folder: host changes made
 * with node:fs in a watched folder become actuator requests, in order, and the actuator's view of
 * the tree during each request is what the guest knew before the change.
 */

type View = ReturnType<ChangeEvents['hooks']['view']>;

interface Setup {
  /** The share's folder (its guest path is the same). */
  dir: string;
  /** The watched folder inside it (a container's bind-mount source). */
  watched: string;
  /** Outside the watched folder, still inside the share. */
  other: string;
  share: Share;
  ce: ChangeEvents;
  reqs: ActRequest[];
  /** Runs inside the fake actuate, before it resolves (views are checked from here). */
  during: { fn: ((req: ActRequest) => void | Promise<void>) | undefined };
  /** Guest path of a path relative to the watched folder. */
  g: (...rel: string[]) => string;
  /** Host path of a path relative to the watched folder. */
  h: (...rel: string[]) => string;
  /** Share-relative components of a path relative to the watched folder. */
  comps: (...rel: string[]) => string[];
}

async function setup(t: TestContext, prepare?: (watched: string) => void, limits?: ChangeEventsLimits): Promise<Setup> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ce-'));
  const dir = path.join(base, 'share');
  const watched = path.join(dir, 'watched');
  const other = path.join(dir, 'other');
  fs.mkdirSync(watched, { recursive: true });
  fs.mkdirSync(other);
  prepare?.(watched);
  const share = new Share({ id: 'home', path: dir, readOnly: false });
  const reqs: ActRequest[] = [];
  const during: Setup['during'] = { fn: undefined };
  const ce = new ChangeEvents(
    [share],
    async (req) => {
      // The uid is checked once (below); the other tests compare what is replayed.
      const { uid, ...rest } = req;
      if (REPLAYED_OPS.includes(req.op)) assert.equal(uid, ACTOR, `${req.op} carries the actuator's uid`);
      else assert.equal(uid, undefined);
      reqs.push(rest);
      await during.fn?.(rest);
    },
    () => {},
    limits,
    ACTOR,
  );
  t.after(async () => {
    ce.close();
    await ce.settled();
    share.close();
    fs.rmSync(base, { recursive: true, force: true });
  });
  ce.setRoots([watched]);
  await sleep(30); // let the recursive watcher settle on the existing tree
  return {
    dir,
    watched,
    other,
    share,
    ce,
    reqs,
    during,
    g: (...rel) => path.posix.join(dir, 'watched', ...rel),
    h: (...rel) => path.join(watched, ...rel),
    comps: (...rel) => ['watched', ...rel],
  };
}

/** Waits for at least `n` requests (up to 2 s), then a little longer for any that should not come. */
async function requests(s: Setup, n: number, ms = 2000): Promise<ActRequest[]> {
  const end = Date.now() + ms;
  while (s.reqs.length < n && Date.now() < end) await sleep(10);
  await sleep(80); // > the 50 ms window: a stray burst would have been flushed by now
  await s.ce.settled();
  return s.reqs.splice(0);
}

/** Waits past the window for requests that must not come. */
async function none(s: Setup): Promise<ActRequest[]> {
  await sleep(160);
  await s.ce.settled();
  return s.reqs.splice(0);
}

function ino(p: string): bigint {
  return fs.lstatSync(p, { bigint: true }).ino;
}

function goneIno(v: View): bigint | undefined {
  return v && 'gone' in v ? v.gone.ino : undefined;
}

test('hooks carry the actuator uid', async (t) => {
  const s = await setup(t);
  assert.equal(s.ce.hooks.uid, s.ce.actuatorUid);
  assert.equal(s.ce.hooks.view(s.share, s.comps('nothing')), undefined);
});

test('a new file: create, with its size', async (t) => {
  const s = await setup(t);
  fs.writeFileSync(s.h('full.txt'), 'content');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('full.txt'), size: 7 }]);
  fs.writeFileSync(s.h('empty.txt'), '');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('empty.txt'), size: 0 }]);
});

test('a folder that appears with content (cp -r): mkdir, then its entries, shallowest first, each once', async (t) => {
  const s = await setup(t);
  const src = path.join(s.other, 'tree');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a.txt'), 'a');
  fs.writeFileSync(path.join(src, 'empty'), '');
  fs.writeFileSync(path.join(src, 'sub', 'z'), 'z');
  fs.cpSync(src, s.h('copy'), { recursive: true });
  assert.deepEqual(await requests(s, 5), [
    { op: 'mkdir', path: s.g('copy') },
    { op: 'create', path: s.g('copy', 'a.txt'), size: 1 },
    { op: 'create', path: s.g('copy', 'empty'), size: 0 },
    { op: 'mkdir', path: s.g('copy', 'sub') },
    { op: 'create', path: s.g('copy', 'sub', 'z'), size: 1 },
  ]);
});

test('mkdir -p a/b, then a file in it: no duplicates although a/b is both an event and an entry of a', async (t) => {
  const s = await setup(t);
  fs.mkdirSync(s.h('a', 'b'), { recursive: true });
  assert.deepEqual(await requests(s, 2), [
    { op: 'mkdir', path: s.g('a') },
    { op: 'mkdir', path: s.g('a', 'b') },
  ]);
  // The new folders are followed: a later file inside them is one create.
  fs.writeFileSync(s.h('a', 'b', 'f'), 'x');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('a', 'b', 'f'), size: 1 }]);
});

test('an append to an existing file: modify', async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'log'), 'one\n'));
  fs.appendFileSync(s.h('log'), 'two\n');
  assert.deepEqual(await requests(s, 1), [{ op: 'modify', path: s.g('log'), size: 8 }]);
});

test('a deleted file: delete; a removed empty folder: rmdir', async (t) => {
  const s = await setup(t, (w) => {
    fs.writeFileSync(path.join(w, 'f'), 'x');
    fs.mkdirSync(path.join(w, 'd'));
  });
  fs.unlinkSync(s.h('f'));
  assert.deepEqual(await requests(s, 1), [{ op: 'delete', path: s.g('f') }]);
  fs.rmdirSync(s.h('d'));
  assert.deepEqual(await requests(s, 1), [{ op: 'rmdir', path: s.g('d') }]);
});

test('a renamed file: one rename (paired by inode)', async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'old.txt'), 'x'));
  fs.renameSync(s.h('old.txt'), s.h('new.txt'));
  assert.deepEqual(await requests(s, 1), [{ op: 'rename', path: s.g('old.txt'), to: s.g('new.txt') }]);
});

test('a file moved over an existing one (mv -f, atomic save): the old target is not deleted after the rename', async (t) => {
  const s = await setup(t, (w) => {
    fs.writeFileSync(path.join(w, 'a'), 'new content');
    fs.writeFileSync(path.join(w, 'b'), 'old');
  });
  fs.renameSync(s.h('a'), s.h('b'));
  const got = await requests(s, 1);
  // Either the rename alone (a rename replaces its target) or the delete first is correct; a delete
  // of b after the rename leaves the guest without b while the host has it.
  const renameAt = got.findIndex((r) => r.op === 'rename');
  const deleteAt = got.findIndex((r) => r.op === 'delete' && r.path === s.g('b'));
  assert.deepEqual(got[renameAt], { op: 'rename', path: s.g('a'), to: s.g('b') });
  assert.ok(deleteAt < renameAt, `requests: ${JSON.stringify(got)}`);
});

test('a renamed folder: one rename; later changes inside it use the new path', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'old'));
    fs.writeFileSync(path.join(w, 'old', 'x'), '1');
  });
  fs.renameSync(s.h('old'), s.h('new'));
  const got = await requests(s, 1);
  assert.deepEqual(got[0], { op: 'rename', path: s.g('old'), to: s.g('new') });
  fs.appendFileSync(s.h('new', 'x'), '2');
  assert.deepEqual(await requests(s, 1), [{ op: 'modify', path: s.g('new', 'x'), size: 2 }]);
  fs.unlinkSync(s.h('new', 'x'));
  assert.deepEqual(await requests(s, 1), [{ op: 'delete', path: s.g('new', 'x') }]);
});

test('a renamed folder with content: no create for the entries it carries (Node reports them too)', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'old', 'deep'), { recursive: true });
    fs.writeFileSync(path.join(w, 'old', 'x'), '1');
    fs.writeFileSync(path.join(w, 'old', 'deep', 'y'), '1');
  });
  fs.renameSync(s.h('old'), s.h('new'));
  assert.deepEqual(await requests(s, 1), [{ op: 'rename', path: s.g('old'), to: s.g('new') }]);
  fs.appendFileSync(s.h('new', 'deep', 'y'), '2');
  assert.deepEqual(await requests(s, 1), [{ op: 'modify', path: s.g('new', 'deep', 'y'), size: 2 }]);
});

test('a folder renamed, then a file in it appended to, in one burst: rename, then modify', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'old'));
    fs.writeFileSync(path.join(w, 'old', 'x'), '1');
  });
  fs.renameSync(s.h('old'), s.h('new'));
  fs.appendFileSync(s.h('new', 'x'), '2');
  assert.deepEqual(await requests(s, 2, 400), [
    { op: 'rename', path: s.g('old'), to: s.g('new') },
    { op: 'modify', path: s.g('new', 'x'), size: 2 },
  ]);
});

test('a folder renamed, then a file in it renamed, in one burst: both renames', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'old'));
    fs.writeFileSync(path.join(w, 'old', 'x'), '1');
  });
  fs.renameSync(s.h('old'), s.h('new'));
  fs.renameSync(s.h('new', 'x'), s.h('new', 'z'));
  assert.deepEqual(await requests(s, 2, 400), [
    { op: 'rename', path: s.g('old'), to: s.g('new') },
    { op: 'rename', path: s.g('new', 'x'), to: s.g('new', 'z') },
  ]);
});

test('a folder renamed, then a file in it deleted, in one burst: rename, then delete', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'old'));
    fs.writeFileSync(path.join(w, 'old', 'x'), '1');
  });
  fs.renameSync(s.h('old'), s.h('new'));
  fs.unlinkSync(s.h('new', 'x'));
  assert.deepEqual(await requests(s, 2, 400), [
    { op: 'rename', path: s.g('old'), to: s.g('new') },
    { op: 'delete', path: s.g('new', 'x') },
  ]);
});

test('a folder moved in from outside the watched folder: mkdir and its entries, like cp -r', async (t) => {
  const s = await setup(t);
  fs.mkdirSync(path.join(s.other, 'tree'));
  fs.writeFileSync(path.join(s.other, 'tree', 'f'), 'f');
  fs.renameSync(path.join(s.other, 'tree'), s.h('tree'));
  assert.deepEqual(await requests(s, 2), [
    { op: 'mkdir', path: s.g('tree') },
    { op: 'create', path: s.g('tree', 'f'), size: 1 },
  ]);
});

test('rm -r of a nested tree: deepest first (delete file, rmdir inner, rmdir outer)', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'outer', 'inner'), { recursive: true });
    fs.writeFileSync(path.join(w, 'outer', 'inner', 'f'), 'x');
  });
  fs.rmSync(s.h('outer'), { recursive: true });
  assert.deepEqual(await requests(s, 3), [
    { op: 'delete', path: s.g('outer', 'inner', 'f') },
    { op: 'rmdir', path: s.g('outer', 'inner') },
    { op: 'rmdir', path: s.g('outer') },
  ]);
});

test("echoes: the guest's own changes are not replayed; a folder the guest made is pinned", async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'edited'), 'x'));
  s.ce.guestChanged(s.share, s.comps('mine.txt'));
  fs.writeFileSync(s.h('mine.txt'), 'from the guest');
  s.ce.guestChanged(s.share, s.comps('edited'));
  fs.appendFileSync(s.h('edited'), 'more');
  assert.deepEqual(await none(s), []);
  s.ce.guestChanged(s.share, s.comps('made'));
  fs.mkdirSync(s.h('made'));
  assert.deepEqual(await requests(s, 1), [{ op: 'pin', path: s.g('made') }]);
  // An echo is only for the path the guest named: a host change next to it is replayed.
  s.ce.guestChanged(s.share, s.comps('mine2.txt'));
  fs.writeFileSync(s.h('mine2.txt'), '');
  fs.writeFileSync(s.h('host.txt'), '');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('host.txt'), size: 0 }]);
});

test("echoes: the guest's own removals and renames sweep the agent's pins in their folder, before a folder it made again is pinned", async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'dist', 'js'), { recursive: true });
    fs.writeFileSync(path.join(w, 'dist', 'js', 'app.js'), 'x');
    fs.mkdirSync(path.join(w, 'out', 'css'), { recursive: true });
    fs.writeFileSync(path.join(w, 'out', 'css', 'site.css'), 'x');
    fs.mkdirSync(path.join(w, 'src'));
    fs.writeFileSync(path.join(w, 'src', 'a.ts'), 'x');
  });
  // rm -rf dist, then mkdir dist, by the guest: one sweep of the folder above (not one per
  // entry), then the pin of the new folder.
  for (const rel of [['dist', 'js', 'app.js'], ['dist', 'js'], ['dist']]) s.ce.guestChanged(s.share, s.comps(...rel));
  fs.rmSync(s.h('dist'), { recursive: true });
  assert.deepEqual(await requests(s, 1), [{ op: 'sweep', path: s.g() }]);
  fs.mkdirSync(s.h('dist'));
  assert.deepEqual(await requests(s, 1), [{ op: 'pin', path: s.g('dist') }]);
  // Both at once (out may get its old inode number and look unchanged): a sweep that covers
  // out, which the agent pins again as it stands now.
  for (const rel of [['out', 'css', 'site.css'], ['out', 'css'], ['out']]) s.ce.guestChanged(s.share, s.comps(...rel));
  fs.rmSync(s.h('out'), { recursive: true });
  fs.mkdirSync(s.h('out'));
  const sweep = (await requests(s, 1)).find((r) => r.op === 'sweep');
  assert.ok(sweep && (sweep.path === s.g() || sweep.path === s.g('out')), JSON.stringify(sweep));
  // A rename by the guest: the folder it left is swept (the agent re-keys the pins that moved).
  s.ce.guestChanged(s.share, s.comps('src', 'a.ts'));
  s.ce.guestChanged(s.share, s.comps('src', 'b.ts'));
  fs.renameSync(s.h('src', 'a.ts'), s.h('src', 'b.ts'));
  assert.deepEqual(await requests(s, 1), [{ op: 'sweep', path: s.g('src') }]);
  // A file the guest only wrote is not swept.
  s.ce.guestChanged(s.share, s.comps('src', 'b.ts'));
  fs.appendFileSync(s.h('src', 'b.ts'), 'more');
  assert.deepEqual(await none(s), []);
});

test('rm -r of a folder holding folders: its rmdir covers what the watcher did not report, and the tree made again is only created', async (t) => {
  const s = await setup(t, (w) => {
    for (const d of ['a', 'b']) {
      fs.mkdirSync(path.join(w, 'big', d), { recursive: true });
      for (let i = 0; i < 4; i++) fs.writeFileSync(path.join(w, 'big', d, `f${i}`), 'x');
    }
  });
  fs.rmSync(s.h('big'), { recursive: true });
  const removed = await requests(s, 1);
  // Deepest first, ending with big itself (which makes the VM forget all of it).
  assert.deepEqual(removed.at(-1), { op: 'rmdir', path: s.g('big') });
  assert.ok(removed.every((r) => r.op === 'delete' || r.op === 'rmdir'), JSON.stringify(removed));
  // Made again: no delete of the entries the VM no longer has (the snapshot forgot them).
  fs.mkdirSync(s.h('big', 'b'), { recursive: true });
  fs.writeFileSync(s.h('big', 'b', 'f3'), 'y');
  assert.deepEqual(await requests(s, 3), [
    { op: 'mkdir', path: s.g('big') },
    { op: 'mkdir', path: s.g('big', 'b') },
    { op: 'create', path: s.g('big', 'b', 'f3'), size: 1 },
  ]);
});

test('more host changes in a burst than the replays follow: the first are replayed, and the VM lets go of the names removed beyond them (unpin, outermost only)', async (t) => {
  const s = await setup(
    t,
    (w) => {
      fs.mkdirSync(path.join(w, 'flat'));
      for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(w, 'flat', `f${i}`), 'x');
      fs.writeFileSync(path.join(w, 'old.txt'), 'x');
    },
    { maxActsPerBurst: 5 },
  );
  for (let i = 0; i < 8; i++) fs.rmSync(s.h('flat', `f${i}`));
  fs.renameSync(s.h('old.txt'), s.h('new.txt'));
  const reqs = await requests(s, 8);
  // The rename goes first, then four deletes; the other four files are let go of one by one
  // (their folder stays).
  assert.equal(reqs.length, 9, JSON.stringify(reqs));
  assert.deepEqual(reqs[0], { op: 'rename', path: s.g('old.txt'), to: s.g('new.txt') });
  assert.deepEqual(
    reqs.slice(1).map((r) => r.op),
    ['delete', 'delete', 'delete', 'delete', 'unpin', 'unpin', 'unpin', 'unpin'],
  );
  const named = reqs.slice(1).map((r) => r.path).sort();
  assert.deepEqual(named, [0, 1, 2, 3, 4, 5, 6, 7].map((i) => s.g('flat', `f${i}`)).sort());
});

test('a burst lasts while the host keeps changing (30 ms apart), not a fixed 50 ms from its first change: one burst, over the limit', async (t) => {
  const s = await setup(
    t,
    (w) => {
      fs.mkdirSync(path.join(w, 'slow'));
      for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(w, 'slow', `f${i}`), 'x');
    },
    { maxActsPerBurst: 5 },
  );
  // A loaded machine: the removals of one `rm` come 30 ms apart.
  for (let i = 0; i < 8; i++) {
    fs.rmSync(s.h('slow', `f${i}`));
    await sleep(30);
  }
  const reqs = await requests(s, 8);
  assert.deepEqual(
    reqs.map((r) => r.op),
    ['delete', 'delete', 'delete', 'delete', 'delete', 'unpin', 'unpin', 'unpin'],
    'one burst of eight: five replayed, three let go of',
  );
});

test('unpin covers what is under a folder the host removed beyond the replays', async (t) => {
  const s = await setup(
    t,
    (w) => {
      for (const d of ['p', 'q']) {
        fs.mkdirSync(path.join(w, d));
        for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(w, d, `f${i}`), 'x');
      }
    },
    { maxActsPerBurst: 2 },
  );
  fs.rmSync(s.h('p'), { recursive: true });
  fs.rmSync(s.h('q'), { recursive: true });
  const reqs = await requests(s, 3);
  // Whatever the watcher reported: two replays, and each removed folder is either replayed (rmdir) or
  // let go of (unpin); no unpin is inside another one's folder.
  assert.equal(reqs.filter((r) => r.op !== 'unpin').length, 2, JSON.stringify(reqs));
  for (const d of ['p', 'q']) assert.ok(reqs.some((r) => (r.op === 'rmdir' || r.op === 'unpin') && r.path === s.g(d)), `${d}: ${JSON.stringify(reqs)}`);
  const unpins = reqs.filter((r) => r.op === 'unpin').map((r) => r.path);
  for (const u of unpins) assert.ok(!unpins.some((o) => u.startsWith(`${o}/`)), `${u} is inside another unpin`);
});


test('changes outside the watched folder, and roots outside every share, produce nothing', async (t) => {
  const s = await setup(t);
  fs.writeFileSync(path.join(s.other, 'f'), 'x');
  fs.mkdirSync(path.join(s.other, 'd'));
  fs.writeFileSync(path.join(s.dir, 'top'), 'x');
  s.ce.setRoots([s.watched, path.join(path.dirname(s.dir), 'not-shared'), '/definitely/not/shared']);
  fs.writeFileSync(path.join(s.other, 'g'), 'x');
  assert.deepEqual(await none(s), []);
});

test('a bind-mount source that is a symlink to a folder outside the share, or lies behind one, is not watched: a warning names it, and changes there are not replayed', async (t) => {
  const { dir, outside } = shareWithOutwardLinks(t, 'berth-ce-');
  const share = new Share({ id: 'home', path: dir, readOnly: false });
  const reqs: ActRequest[] = [];
  const warnings: string[] = [];
  const ce = new ChangeEvents(
    [share],
    async (req) => {
      const { uid: _uid, ...rest } = req;
      reqs.push(rest);
    },
    (level, msg, fields) => {
      if (level === 'warn') warnings.push(`${String(fields?.path)}: ${msg}`);
    },
  );
  t.after(async () => {
    ce.close();
    await ce.settled();
    share.close();
  });
  const roots = [path.join(dir, 'link'), path.join(dir, 'behind', 'sub')];
  ce.setRoots(roots);
  assert.deepEqual(
    warnings.map((w) => w.slice(0, w.indexOf(':'))),
    roots,
  );
  assert.match(warnings[0]!, /symlink/);
  fs.writeFileSync(path.join(outside, 'new.txt'), 'x');
  fs.appendFileSync(path.join(outside, 'file'), 'more');
  fs.writeFileSync(path.join(outside, 'sub', 'new.txt'), 'x');
  fs.mkdirSync(path.join(outside, 'sub', 'dir'));
  await sleep(200);
  await ce.settled();
  assert.deepEqual(reqs, []);
  // Setting the same roots again does not warn again.
  ce.setRoots(roots);
  assert.equal(warnings.length, 2);
});

test('setRoots([]) stops requests; setting the root again resumes them', async (t) => {
  const s = await setup(t);
  s.ce.setRoots([]);
  fs.writeFileSync(s.h('unseen'), 'x');
  assert.deepEqual(await none(s), []);
  s.ce.setRoots([s.watched]);
  await sleep(30);
  fs.writeFileSync(s.h('seen'), '');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('seen'), size: 0 }]);
});

test('a failing actuate does not stop later requests (same burst or later)', async (t) => {
  const s = await setup(t);
  s.during.fn = (req) => {
    if (req.path.endsWith('/fail')) throw new Error('guest said no');
  };
  fs.writeFileSync(s.h('fail'), '');
  fs.writeFileSync(s.h('fine'), '');
  const got = await requests(s, 2);
  assert.deepEqual(
    got.map((r) => r.path).sort(),
    [s.g('fail'), s.g('fine')].sort(),
  );
  fs.writeFileSync(s.h('later'), '');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('later'), size: 0 }]);
});

test('hooks.view during a replay: delete sees the old inode, create sees nothing; cleared afterwards', async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'doomed'), 'abc'));
  const oldIno = ino(s.h('doomed'));
  const oldSize = fs.lstatSync(s.h('doomed')).size;
  const seen: Record<string, View> = {};
  s.during.fn = (req) => {
    if (req.op === 'delete') seen.delete = s.ce.hooks.view(s.share, s.comps('doomed'));
    if (req.op === 'create') seen.create = s.ce.hooks.view(s.share, s.comps('fresh'));
  };
  fs.unlinkSync(s.h('doomed'));
  assert.deepEqual(await requests(s, 1), [{ op: 'delete', path: s.g('doomed') }]);
  const v = seen.delete;
  assert.ok(v && 'gone' in v, `view during delete: ${String(v)}`);
  const gone: GoneEntry = v.gone;
  assert.equal(gone.ino, oldIno);
  assert.equal(gone.size, BigInt(oldSize));
  assert.equal(gone.mode & 0o170000, 0o100000, 'a regular file');
  assert.equal(s.ce.hooks.view(s.share, s.comps('doomed')), undefined, 'cleared after the request');

  fs.writeFileSync(s.h('fresh'), '');
  assert.deepEqual(await requests(s, 1), [{ op: 'create', path: s.g('fresh'), size: 0 }]);
  assert.deepEqual(seen.create, { absent: true });
  assert.equal(s.ce.hooks.view(s.share, s.comps('fresh')), undefined);
});

test('hooks.view during a rename: the old name is gone (old inode), the new one absent', async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'from'), 'x'));
  const oldIno = ino(s.h('from'));
  let from: View;
  let to: View;
  s.during.fn = () => {
    from = s.ce.hooks.view(s.share, s.comps('from'));
    to = s.ce.hooks.view(s.share, s.comps('to'));
  };
  fs.renameSync(s.h('from'), s.h('to'));
  assert.deepEqual(await requests(s, 1), [{ op: 'rename', path: s.g('from'), to: s.g('to') }]);
  assert.equal(goneIno(from), oldIno);
  assert.deepEqual(to, { absent: true });
  assert.equal(s.ce.hooks.view(s.share, s.comps('from')), undefined);
  assert.equal(s.ce.hooks.view(s.share, s.comps('to')), undefined);
});

test('hooks.view during rm -r: folders removed in the same burst are gone too, until their own rmdir', async (t) => {
  const s = await setup(t, (w) => {
    fs.mkdirSync(path.join(w, 'outer', 'inner'), { recursive: true });
    fs.writeFileSync(path.join(w, 'outer', 'inner', 'f'), 'x');
  });
  const inos = { outer: ino(s.h('outer')), inner: ino(s.h('outer', 'inner')), f: ino(s.h('outer', 'inner', 'f')) };
  const seen: { op: string; f?: bigint | undefined; inner?: bigint | undefined; outer?: bigint | undefined }[] = [];
  s.during.fn = (req) => {
    seen.push({
      op: req.op,
      f: goneIno(s.ce.hooks.view(s.share, s.comps('outer', 'inner', 'f'))),
      inner: goneIno(s.ce.hooks.view(s.share, s.comps('outer', 'inner'))),
      outer: goneIno(s.ce.hooks.view(s.share, s.comps('outer'))),
    });
  };
  fs.rmSync(s.h('outer'), { recursive: true });
  assert.equal((await requests(s, 3)).length, 3);
  assert.deepEqual(seen, [
    { op: 'delete', f: inos.f, inner: inos.inner, outer: inos.outer },
    { op: 'rmdir', f: undefined, inner: inos.inner, outer: inos.outer },
    { op: 'rmdir', f: undefined, inner: undefined, outer: inos.outer },
  ]);
  for (const c of [['outer'], ['outer', 'inner'], ['outer', 'inner', 'f']]) assert.equal(s.ce.hooks.view(s.share, s.comps(...c)), undefined);
  // The watched folder itself was not removed: never a view.
  assert.equal(s.ce.hooks.view(s.share, s.comps()), undefined);
});

test('hooks.done clears a view during the request (the actuator’s change went through)', async (t) => {
  const s = await setup(t, (w) => fs.writeFileSync(path.join(w, 'x'), 'x'));
  const seen: View[] = [];
  s.during.fn = () => {
    seen.push(s.ce.hooks.view(s.share, s.comps('x')));
    s.ce.hooks.done(s.share, s.comps('x'));
    seen.push(s.ce.hooks.view(s.share, s.comps('x')));
  };
  fs.unlinkSync(s.h('x'));
  assert.deepEqual(await requests(s, 1), [{ op: 'delete', path: s.g('x') }]);
  assert.ok(seen[0] && 'gone' in seen[0]);
  assert.equal(seen[1], undefined);
});

test('a replay waits for the previous one: requests are sent one at a time, in order', async (t) => {
  const s = await setup(t);
  let active = 0;
  let most = 0;
  s.during.fn = async () => {
    active++;
    most = Math.max(most, active);
    await sleep(150);
    active--;
  };
  fs.writeFileSync(s.h('one'), '');
  await sleep(80);
  fs.writeFileSync(s.h('two'), '');
  assert.deepEqual(await requests(s, 2), [
    { op: 'create', path: s.g('one'), size: 0 },
    { op: 'create', path: s.g('two'), size: 0 },
  ]);
  assert.equal(most, 1);
});

test('drain: a change made just before is replayed by the time drain resolves, without waiting for the burst window', async (t) => {
  const s = await setup(t);
  let acted = 0;
  s.during.fn = async () => {
    await sleep(30); // a slow actuator: drain must wait for it too
    acted++;
  };
  for (let i = 0; i < 5; i++) {
    fs.writeFileSync(s.h(`f${i}.txt`), 'new\n');
    const t0 = performance.now();
    await s.ce.drain();
    assert.equal(acted, i + 1, `change ${i} not replayed when drain resolved`);
    assert.ok(performance.now() - t0 < 1000);
  }
  // Nothing pending: drain resolves at once and asks nothing of the actuator.
  await s.ce.drain();
  assert.equal(acted, 5);
  assert.deepEqual(
    s.reqs.map((r) => [r.op, r.path]),
    [0, 1, 2, 3, 4].map((i) => ['create', s.g(`f${i}.txt`)]),
  );
});
