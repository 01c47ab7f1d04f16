import fs from 'node:fs';
import path from 'node:path';
import { workerData } from 'node:worker_threads';
import { P9Session } from '../../src/fs/p9-session.js';
import { QidMap } from '../../src/fs/qids.js';
import { Share } from '../../src/fs/share.js';
import { TestClient } from './p9-test-client.js';

/**
 * The attacker of the file server's race tests (src/fs/p9-race.test.ts), in a worker thread so
 * that it truly runs while the synchronous server handles requests on the test's thread. It swaps
 * the folder `<share>/<dir...>/<name>` for a symlink to `outside` and back, over and over, until
 * the test sets control[0]; control[1] counts the swaps.
 *
 * - mode 'host': a host process (another local user, in /tmp) with plain renames: the real folder
 *   moves aside, the symlink moves to its name, then both move back.
 * - mode '9p': a container, through a second P9Session on the same folder: it makes the symlink
 *   with Tsymlink, then swaps with Trenameat.
 *
 * A rename cannot put a symlink over a folder, so each round is four renames, and the folder's
 * name is a symlink during the middle one.
 */
export interface RacerData {
  mode: 'host' | '9p';
  share: string;
  /** The names of the folder that holds the swapped one ([] for the share's root), and its name. */
  dir: string[];
  name: string;
  outside: string;
  /** Int32Array view: [0] set to 1 to stop, [1] swaps made. */
  control: SharedArrayBuffer;
}

const d = workerData as RacerData;
const control = new Int32Array(d.control);
const aside = `${d.name}.real`;
const link = `${d.name}.link`;

let rename: (from: string, to: string) => void;
if (d.mode === 'host') {
  const dir = path.join(d.share, ...d.dir);
  fs.symlinkSync(d.outside, path.join(dir, link));
  rename = (from, to) => fs.renameSync(path.join(dir, from), path.join(dir, to));
} else {
  const session = new P9Session({ shares: new Map([['s', new Share({ id: 's', path: d.share, readOnly: false })]]), share: 's', maxMsize: 1 << 16, qids: new QidMap(), log: () => {} });
  const c = new TestClient(session);
  c.version(1 << 16);
  const dir = c.walk(c.attach('s', 1000), d.dir).fid;
  c.symlink(dir, link, d.outside);
  rename = (from, to) => c.renameat(dir, from, dir, to);
}

// Only this thread renames these names, so no rename fails; if one did, the worker's error ends
// the test.
while (Atomics.load(control, 0) === 0) {
  rename(d.name, aside);
  rename(link, d.name);
  rename(d.name, link);
  rename(aside, d.name);
  Atomics.add(control, 1, 1);
}
