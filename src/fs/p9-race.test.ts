import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { P9Session } from './p9-session.js';
import { QidMap } from './qids.js';
import { Share } from './share.js';
import { T } from './p9-wire.js';
import { Msg, TestClient, P9Error } from '../../test/support/p9-test-client.js';
import type { RacerData } from '../../test/support/p9-racer.js';
import { snapshotTree, treeChanges } from '../../test/support/tree-snapshot.js';

/**
 * The file server against an attacker who swaps a folder inside a share for a symlink to a folder
 * outside it, and back, in a tight loop while the server handles requests through that folder
 * (docs/files.md "Security"; CVE-2016-9602). The attacker runs in a worker thread
 * (test/support/p9-racer.ts), truly at the same time as the synchronous server: once as a host
 * process with plain renames (another local user in /tmp, a share by default), once as a
 * container through a second 9P session on the same share.
 *
 * The outside folder holds a 0600 `secret` of the same name as the one inside, a `victim` of the
 * same name too, and names that exist only outside (and the same again in its folder `d`, for the
 * attack one level up). For a few seconds the test walks, reads, writes, creates, makes folders,
 * removes, renames, links, chmods, truncates, sets times and lists through the swapped folder,
 * with fids walked for each request and with one fid walked once at the start; every request may
 * fail, but afterwards the outside folder must be byte for byte, mode for mode and name for name
 * as it was, and no reply may have carried anything of it (the secret's bytes, its attributes,
 * its names). The attacked folder is two names deep in two of the tests, so that the share's
 * cached handles on deep folders (share.ts) are attacked too: once the folder the handle holds is
 * swapped, once the folder above it.
 */
const RACE_MS = Number(process.env.BERTH_RACE_MS) || 3000;
const SECRET = 'TOP-SECRET host key material, never to be read through a share\n';
const O = { RDONLY: 0, WRONLY: 1, RDWR: 2 };
const AT_REMOVEDIR = 0x200;

/** The share with the attacked folder `target` (its names) and its contents; the outside folder. */
function layout(t: TestContext, target: string[]) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-race-'));
  const share = path.join(base, 'share');
  const outside = path.join(base, 'outside');
  const dir = path.join(share, ...target);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'secret'), 'inside, harmless');
  fs.writeFileSync(path.join(dir, 'victim'), 'inside victim');
  fs.writeFileSync(path.join(share, 'hello'), 'hello');
  for (const d of [outside, path.join(outside, 'd')]) {
    fs.mkdirSync(path.join(d, 'outside-dir'), { recursive: true });
    fs.writeFileSync(path.join(d, 'secret'), SECRET);
    fs.writeFileSync(path.join(d, 'victim'), 'outside victim');
    fs.writeFileSync(path.join(d, 'only-outside'), 'x');
    fs.writeFileSync(path.join(d, 'only-outside-2'), 'y');
    fs.chmodSync(path.join(d, 'secret'), 0o600);
    fs.chmodSync(path.join(d, 'victim'), 0o640);
  }
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return { share, outside };
}

/** Starts the attacker; `stop()` ends it and resolves with the number of swaps it made. */
function startRacer(mode: RacerData['mode'], share: string, swapped: string[], outside: string): { stop: () => Promise<number> } {
  const control = new SharedArrayBuffer(8);
  const data: RacerData = { mode, share, dir: swapped.slice(0, -1), name: swapped.at(-1)!, outside, control };
  const worker = new Worker(new URL('../../test/support/p9-racer.js', import.meta.url), { workerData: data });
  let failure: Error | undefined;
  worker.on('error', (err) => (failure = err));
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  return {
    stop: async () => {
      const view = new Int32Array(control);
      Atomics.store(view, 0, 1);
      await exited;
      if (failure) throw failure;
      return Atomics.load(view, 1);
    },
  };
}

/**
 * Drives the server through the folder `target` for RACE_MS while it races; returns what escaped
 * (empty: nothing) and how many requests were made and answered without an error, by kind.
 */
function attack(share: string, outside: string, target: string[]): { escapes: string[]; requests: number; succeeded: Map<string, number> } {
  const s = new Share({ id: 's', path: share, readOnly: false });
  const session = new P9Session({ shares: new Map([['s', s]]), share: 's', maxMsize: 1 << 16, qids: new QidMap(), log: () => {} });
  const c = new TestClient(session);
  c.version(1 << 16);
  const root = c.attach('s', 1000);
  const ino = (p: string) => fs.lstatSync(p, { bigint: true }).ino;
  const secretInos = new Set([ino(path.join(outside, 'secret')), ino(path.join(outside, 'd', 'secret'))]);
  const outsideInos = new Set([outside, path.join(outside, 'd')].flatMap((d) => fs.readdirSync(d).map((n) => ino(path.join(d, n)))));
  const escapes = new Set<string>();
  let requests = 0;
  const succeeded = new Map<string, number>();
  // A fid on the attacked folder walked once, while it is still real: every request through it
  // resolves the folder again (a clone of it is used, since a create turns its fid into the file).
  const long = c.walk(root, target).fid;
  /**
   * One kind of request on target/<names>, through a fid walked for it (or, for the folder
   * itself, every other time a clone of the long-lived one), clunked after. Rlerror is an
   * expected answer; anything else fails the test.
   */
  const at = (kind: string, names: string[], i: number, fn: (fid: number) => void) => {
    requests++;
    try {
      const { fid, qids } = names.length === 0 && i % 2 ? c.walk(long, []) : c.walk(root, [...target, ...names]);
      try {
        for (const q of qids) if (outsideInos.has(q.path & ((1n << 48n) - 1n))) escapes.add(`walk to ${[...target, ...names].join('/')} answered the qid of an outside file`);
        fn(fid);
      } finally {
        c.clunk(fid);
      }
      succeeded.set(kind, (succeeded.get(kind) ?? 0) + 1);
    } catch (err) {
      if (!(err instanceof P9Error)) throw err;
    }
  };
  const end = Date.now() + RACE_MS;
  for (let i = 0; Date.now() < end; i++) {
    at('getattr', ['secret'], i, (f) => {
      const a = c.getattr(f);
      if (secretInos.has(a.qid.path & ((1n << 48n) - 1n)) || a.size === BigInt(SECRET.length)) escapes.add('getattr reported the outside secret');
    });
    at('read', ['secret'], i, (f) => {
      c.lopen(f, O.RDONLY);
      if (c.read(f, 0, 4096).toString().includes('TOP-SECRET')) escapes.add('read returned the outside secret');
    });
    at('write', ['victim'], i, (f) => {
      c.lopen(f, O.WRONLY);
      c.write(f, 0, Buffer.from('PWNED'));
    });
    at('chmod', ['victim'], i, (f) => c.setattr(f, { valid: 0x1, mode: i % 2 ? 0o600 : 0o644 }));
    at('truncate', ['victim'], i, (f) => c.setattr(f, { valid: 0x8, size: 3n }));
    at('utimes', ['victim'], i, (f) => c.setattr(f, { valid: 0x20 | 0x100, mtime: [1_000_000n, 0n] }));
    at('lcreate', [], i, (f) => c.lcreate(f, `planted-${i % 64}`, O.RDWR, 0o644));
    at('mkdir', [], i, (f) => c.mkdir(f, `planted-dir-${i % 64}`));
    at('symlink', [], i, (f) => c.symlink(f, `planted-link-${i % 64}`, '/'));
    at('mknod', [], i, (f) => c.rpc(T.mknod, new Msg().u32(f).str(`planted-node-${i % 64}`).u32(0o100644).u32(0).u32(0).u32(0)));
    at('link', [], i, (f) => {
      const target = c.walk(root, ['hello']).fid;
      try {
        c.link(f, target, `planted-hard-${i % 64}`);
      } finally {
        c.clunk(target);
      }
    });
    at('unlinkat', [], i, (f) => c.unlinkat(f, 'only-outside'));
    at('rmdir', [], i, (f) => c.unlinkat(f, 'outside-dir', AT_REMOVEDIR));
    at('renameat', [], i, (f) => c.renameat(f, 'only-outside-2', root, 'stolen'));
    at('remove', ['only-outside'], i, (f) => c.rpc(T.remove, new Msg().u32(f)));
    at('readdir', [], i, (f) => {
      c.lopen(f, O.RDONLY);
      const names = c.readdir(f).map((e) => e.name);
      if (names.some((n) => n.startsWith('only-outside') || n === 'outside-dir')) escapes.add('readdir listed the outside folder');
    });
  }
  session.close();
  s.close();
  return { escapes: [...escapes], requests, succeeded };
}

/** `target`: the folder the requests go through; `swapped`: the folder the racer swaps (it or one above). */
async function race(t: TestContext, mode: RacerData['mode'], target: string[], swapped: string[]) {
  const { share, outside } = layout(t, target);
  const before = snapshotTree(outside);
  const racer = startRacer(mode, share, swapped, outside);
  let result: ReturnType<typeof attack>;
  try {
    result = attack(share, outside, target);
  } finally {
    const swaps = await racer.stop();
    t.diagnostic(`${mode} racer: ${swaps} swaps of ${swaps ? swapped.join('/') : ''}`);
    assert.ok(swaps > 50, `the racer ran (${swaps} swaps)`);
  }
  t.diagnostic(`${result.requests} requests; answered without error: ${[...result.succeeded].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  const changed = treeChanges(before, snapshotTree(outside));
  const stolen = path.join(share, 'stolen');
  if (fs.existsSync(stolen)) changed.push('an outside file was moved into the share');
  // One line per kind of escape (planted-0, planted-1, ... count as one).
  const kinds = new Map<string, number>();
  for (const e of [...result.escapes, ...changed]) {
    const k = e.replace(/-\d+\b/, '-N');
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  assert.deepEqual([...kinds].map(([k, n]) => (n > 1 ? `${k} (${n} names)` : k)), [], 'nothing outside the share was read or changed');
  // The folder is back at its name with its own contents (the racer's last round completed).
  assert.equal(fs.readFileSync(path.join(share, ...target, 'secret'), 'utf8'), 'inside, harmless');
}

test(`race: a host process swapping a folder for a symlink outward gets nothing read or changed outside (${RACE_MS} ms)`, async (t) => {
  await race(t, 'host', ['d'], ['d']);
});

test(`race: the same two names deep, where the share keeps a handle on the folder between requests (${RACE_MS} ms)`, async (t) => {
  await race(t, 'host', ['a', 'd'], ['a', 'd']);
});

test(`race: the same with the folder above it swapped (the kept handle's path goes out of the share) (${RACE_MS} ms)`, async (t) => {
  await race(t, 'host', ['a', 'd'], ['a']);
});

test(`race: a container swapping a folder for a symlink outward through the server itself gets nothing read or changed outside (${RACE_MS} ms)`, async (t) => {
  await race(t, '9p', ['d'], ['d']);
});
