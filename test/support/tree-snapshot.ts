import fs from 'node:fs';
import path from 'node:path';

/** One entry of a folder tree as the security tests compare it. */
export interface SnapshotEntry {
  type: 'dir' | 'link' | 'file' | 'other';
  mode: number;
  mtimeNs: bigint;
  /** A file's bytes (as latin1 text) or a symlink's target; '' otherwise. */
  content: string;
}

/** Every entry under `dir`, by relative path: types, modes, mtimes, file contents and link targets. */
export function snapshotTree(dir: string): Map<string, SnapshotEntry> {
  const out = new Map<string, SnapshotEntry>();
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
      const r = path.join(rel, name);
      const p = path.join(dir, r);
      const st = fs.lstatSync(p, { bigint: true });
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'link' : st.isFile() ? 'file' : 'other';
      const content = type === 'file' ? fs.readFileSync(p, 'latin1') : type === 'link' ? fs.readlinkSync(p) : '';
      out.set(r, { type, mode: Number(st.mode), mtimeNs: st.mtimeNs, content });
      if (type === 'dir') walk(r);
    }
  };
  walk('');
  return out;
}

/** What differs between two snapshots of the same tree, one line per difference (none: []). */
export function treeChanges(before: Map<string, SnapshotEntry>, after: Map<string, SnapshotEntry>): string[] {
  const changed: string[] = [];
  for (const [name, e] of before) {
    const a = after.get(name);
    if (!a) {
      changed.push(`${name} removed`);
      continue;
    }
    if (a.type !== e.type || a.content !== e.content) changed.push(`${name} changed content (${JSON.stringify(a.content.slice(0, 20))})`);
    if (a.mode !== e.mode) changed.push(`${name} mode ${e.mode.toString(8)} → ${a.mode.toString(8)}`);
    if (a.mtimeNs !== e.mtimeNs) changed.push(`${name} mtime changed`);
  }
  for (const name of after.keys()) if (!before.has(name)) changed.push(`${name} created`);
  return changed;
}
