import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';

/**
 * A temporary share folder whose `link` is a symlink to a folder outside it, and whose `behind`
 * is another (so `behind/sub` lies behind one); the outside folder has a `sub` folder and a
 * `file`. Removed after the test.
 */
export function shareWithOutwardLinks(t: TestContext, prefix: string): { dir: string; outside: string } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const dir = path.join(base, 'share');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(dir);
  fs.mkdirSync(path.join(outside, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(outside, 'file'), 'x');
  fs.symlinkSync(outside, path.join(dir, 'link'));
  fs.symlinkSync(outside, path.join(dir, 'behind'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return { dir, outside };
}
