import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { P9Session } from '../src/fs/p9-session.js';
import { QidMap } from '../src/fs/qids.js';
import { Share } from '../src/fs/share.js';
import { T } from '../src/fs/p9-wire.js';
import { Msg, TestClient } from '../test/support/p9-test-client.js';
import { median, type BenchResult, type Row } from './report.js';

/**
 * The file server's own cost per request, on the host, without a VM: a P9Session in this process
 * (what one guest mount is served by), driven with requests built once beforehand and handed to
 * `session.handle` one at a time, as the connection loop does. No socket: the framing and the
 * Unix socket between the translator and the server cost the same whatever the session does, and
 * would only blur what the session's path handling costs. The tree is in /dev/shm when there is
 * one (tmpfs: no disk write-back in the timings, which made the write rate swing 10× on ext4),
 * else in the system temp folder; the host's caches are warm (the bench just made the files).
 *
 * Over a tree of 2,000 files of 4 KiB (20 folders × 10 folders × 10 files, so each file is three
 * names below the share root) in a temporary folder:
 * - walk+getattr+clunk: Twalk of the three names from the root fid, Tgetattr, Tclunk, per file
 *   (what a `find` or `ls -l` costs a cache=mmap mount per entry, less one getattr).
 * - lookup 8 deep: Twalk of one name from the fid of a folder 8 levels below the root (which is
 *   how the Linux client looks a name up: from its parent dentry's fid), Tgetattr, Tclunk, per
 *   file, over 100 files of that folder: what a path's depth costs each request.
 * - open+read+clunk: Twalk, Tlopen (read-only), Tread of 4 KiB, Tclunk, per file (`cat`).
 * - write: new files of 64 MiB each written with 128 Twrites of 512 KiB (as v9fs sends with msize
 *   512 KiB), then clunked, 4 per run (removed after the run, untimed); MiB/s.
 *
 * The anchor is the same host work without the server, by path, in the same run: an lstat per file;
 * an open, a 4 KiB read and a close per file; 64 MiB written with 512 KiB writes. The ratio is
 * the server's files (or MiB) per second over the anchor's: the share of plain system-call speed
 * the server keeps.
 */
const MSIZE = 1024 * 1024;
const TOP = 20;
const MID = 10;
const FILES = 10;
const FILE_BYTES = 4096;
const WRITE_CHUNK = 512 * 1024;
const WRITE_MIB = 64;
const WRITE_FILES = 4;
/** Passes over the 2,000 files per timed run. */
const PASSES = 3;
const DEEP = ['deep', 'l1', 'l2', 'l3', 'l4', 'l5', 'l6', 'l7'];
const DEEP_FILES = 100;
const FID = 2;
const NEWFID = 3;
const DEEPFID = 4;

export async function benchFileserver(runs: number): Promise<BenchResult> {
  const base = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'berth-bench-fs-'));
  const root = path.join(base, 'share');
  const files: string[][] = [];
  const content = Buffer.alloc(FILE_BYTES, 'x');
  for (let a = 0; a < TOP; a++) {
    for (let b = 0; b < MID; b++) {
      fs.mkdirSync(path.join(root, `d${a}`, `e${b}`), { recursive: true });
      for (let c = 0; c < FILES; c++) {
        const names = [`d${a}`, `e${b}`, `f${c}.txt`];
        fs.writeFileSync(path.join(root, ...names), content);
        files.push(names);
      }
    }
  }
  fs.mkdirSync(path.join(root, ...DEEP), { recursive: true });
  for (let i = 0; i < DEEP_FILES; i++) fs.writeFileSync(path.join(root, ...DEEP, `g${i}`), content);
  const share = new Share({ id: 'b', path: root, readOnly: false });
  const session = new P9Session({ shares: new Map([['b', share]]), share: 'b', maxMsize: MSIZE, qids: new QidMap(), log: () => {} });
  const client = new TestClient(session);
  client.version(MSIZE);
  client.rpc(T.attach, new Msg().u32(FID).u32(0xffffffff).str('').str('b').u32(os.userInfo().uid));

  /** Hands one prebuilt request to the session; anything but the expected reply is a failure. */
  const send = (m: Buffer) => {
    const r = session.handle(m);
    if (!r || r[4] !== m[4]! + 1) throw new Error(`${T[m[4]!]} failed: reply type ${r?.[4]}${r && r[4] === T.lerror + 1 ? ` errno ${r.readUInt32LE(7)}` : ''}`);
  };
  const walks = files.map((names) => {
    const m = new Msg().u32(FID).u32(NEWFID).u16(names.length);
    for (const n of names) m.str(n);
    return m.build(T.walk, 1);
  });
  const deepWalks = Array.from({ length: DEEP_FILES }, (_, i) => new Msg().u32(DEEPFID).u32(NEWFID).u16(1).str(`g${i}`).build(T.walk, 1));
  const deepPaths = Array.from({ length: DEEP_FILES }, (_, i) => path.join(root, ...DEEP, `g${i}`));
  const deepWalk = new Msg().u32(FID).u32(DEEPFID).u16(DEEP.length);
  for (const n of DEEP) deepWalk.str(n);
  send(deepWalk.build(T.walk, 1));
  const getattr = new Msg().u32(NEWFID).u64(0x7ffn).build(T.getattr, 1);
  const lopen = new Msg().u32(NEWFID).u32(0).build(T.lopen, 1);
  const read = new Msg().u32(NEWFID).u64(0).u32(FILE_BYTES).build(T.read, 1);
  const clunk = new Msg().u32(NEWFID).build(T.clunk, 1);
  const hostPaths = files.map((names) => path.join(root, ...names));

  /** Files (or MiB) per second of `fn`, which does `n` of them. */
  const rate = (n: number, fn: () => void) => {
    const t0 = process.hrtime.bigint();
    fn();
    return n / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  const perFile = (fn: (i: number) => void) => () => {
    for (let p = 0; p < PASSES; p++) for (let i = 0; i < files.length; i++) fn(i);
  };

  const walkServer = perFile((i) => {
    send(walks[i]!);
    send(getattr);
    send(clunk);
  });
  const walkAnchor = perFile((i) => fs.lstatSync(hostPaths[i]!, { bigint: true }));
  const deepServer = perFile((i) => {
    send(deepWalks[i % DEEP_FILES]!);
    send(getattr);
    send(clunk);
  });
  const deepAnchor = perFile((i) => fs.lstatSync(deepPaths[i % DEEP_FILES]!, { bigint: true }));
  const readServer = perFile((i) => {
    send(walks[i]!);
    send(lopen);
    send(read);
    send(clunk);
  });
  const buf = Buffer.alloc(FILE_BYTES);
  const readAnchor = perFile((i) => {
    const fd = fs.openSync(hostPaths[i]!, 'r');
    try {
      fs.readSync(fd, buf, 0, FILE_BYTES, 0);
    } finally {
      fs.closeSync(fd);
    }
  });
  const chunk = Buffer.alloc(WRITE_CHUNK, 'w');
  const write = new Msg().u32(NEWFID).u64(0).u32(WRITE_CHUNK).raw(chunk).build(T.write, 1);
  const writeServer = () => {
    for (let k = 0; k < WRITE_FILES; k++) {
      send(new Msg().u32(FID).u32(NEWFID).u16(0).build(T.walk, 1));
      send(new Msg().u32(NEWFID).str(`big${k}`).u32(2 /* O_RDWR */).u32(0o644).u32(0).build(T.lcreate, 1));
      for (let off = 0; off < WRITE_MIB * 1024 * 1024; off += WRITE_CHUNK) {
        write.writeBigUInt64LE(BigInt(off), 11);
        send(write);
      }
      send(clunk);
    }
  };
  const writeAnchor = () => {
    for (let k = 0; k < WRITE_FILES; k++) {
      const fd = fs.openSync(path.join(root, `big${k}`), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
      try {
        for (let off = 0; off < WRITE_MIB * 1024 * 1024; off += WRITE_CHUNK) fs.writeSync(fd, chunk, 0, WRITE_CHUNK, off);
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  const removeBig = () => {
    for (let k = 0; k < WRITE_FILES; k++) fs.rmSync(path.join(root, `big${k}`));
  };

  const n = PASSES * files.length;
  const m = { walk: [[], []], deep: [[], []], read: [[], []], write: [[], []] } as Record<'walk' | 'deep' | 'read' | 'write', [number[], number[]]>;
  try {
    // One untimed round warms the caches (host dentries, the qid table, V8's compiled code).
    walkServer();
    deepServer();
    readServer();
    for (let r = 0; r < runs; r++) {
      // Alternate which goes first, so neither always runs on a cache the other warmed.
      const order = r % 2 === 0 ? [0, 1] : [1, 0];
      for (const which of order) {
        m.walk[which]!.push(rate(n, which === 0 ? walkServer : walkAnchor));
        m.deep[which]!.push(rate(n, which === 0 ? deepServer : deepAnchor));
        m.read[which]!.push(rate(n, which === 0 ? readServer : readAnchor));
        m.write[which]!.push(rate(WRITE_FILES * WRITE_MIB, which === 0 ? writeServer : writeAnchor));
        removeBig();
      }
    }
  } finally {
    session.close();
    share.close();
    fs.rmSync(base, { recursive: true, force: true });
  }

  const rows: Row[] = [];
  /** `perFile`: requests per file (the value is in requests per second), or 0 for MiB/s. */
  const add = (name: string, perFile: number, [ours, anchor]: [number[], number[]]) => {
    const scale = perFile || 1;
    const unit = perFile ? 'req/s' : 'MiB/s';
    const anchorRate = perFile ? `${Math.round(median(anchor))} files/s` : `${Math.round(median(anchor))} MiB/s`;
    rows.push({
      name,
      value: median(ours.map((x) => Math.round(x * scale))),
      unit,
      ratio: median(ours) / median(anchor),
      note: `runs: ${ours.map((x) => Math.round(x * scale)).join(', ')}${perFile ? `; ${Math.round(median(ours))} files/s` : ''}; anchor ${anchorRate}`,
    });
  };
  add('walk+getattr+clunk (3 names)', 3, m.walk);
  add('lookup 8 deep: walk 1 name+getattr+clunk', 3, m.deep);
  add('walk+lopen+read 4 KiB+clunk', 4, m.read);
  add('write 4 × 64 MiB in 512 KiB Twrites', 0, m.write);
  return {
    title: `File server on the host, in-process P9Session (${runs} runs, medians; ${files.length} files × ${PASSES} passes per run; anchor: the same host calls by path without the server, ratio = server rate / anchor rate)`,
    rows,
  };
}
