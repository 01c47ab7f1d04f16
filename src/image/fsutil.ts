import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * File helpers that set modes explicitly. `mkdir`/`writeFile` modes are filtered by the process
 * umask, so a builder with umask 077 would otherwise produce an image whose /usr is 0700 and
 * unusable for non-root processes in the guest. Everything the builder creates in the image tree
 * goes through these.
 */

/** Creates `root/rel` and any missing parents below `root`, each with `mode`. Existing directories
 * (or symlinks to directories, such as lib -> usr/lib) are left as they are. */
export async function mkdirInTree(root: string, rel: string, mode = 0o755): Promise<void> {
  let cur = root;
  for (const seg of rel.split('/').filter((s) => s && s !== '.')) {
    cur = path.join(cur, seg);
    try {
      await fs.mkdir(cur);
      await fs.chmod(cur, mode);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/** Writes a file (replacing a file or symlink at that path) and sets its mode. */
export async function writeFileMode(file: string, data: string | Buffer, mode: number): Promise<void> {
  await fs.rm(file, { force: true });
  await fs.writeFile(file, data);
  await fs.chmod(file, mode);
}
