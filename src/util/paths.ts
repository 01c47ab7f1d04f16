/**
 * Whether the absolute, normalised path `p` is `root` itself or lies under it. A trailing slash
 * on `root` is ignored; "/" contains every absolute path. Textual only: no symlinks resolved.
 */
export function isWithin(p: string, root: string): boolean {
  const r = root.length > 1 ? root.replace(/\/+$/, '') || '/' : root;
  return p === r || p.startsWith(r === '/' ? '/' : `${r}/`);
}
