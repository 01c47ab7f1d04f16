/** Bench results: rows with a value, an optional ratio against the anchor, printed and as markdown. */
export interface Row {
  name: string;
  value: number;
  unit: string;
  /** berth / anchor, when the row is compared with an anchor measured in the same run. */
  ratio?: number;
  note?: string;
}

export interface BenchResult {
  title: string;
  rows: Row[];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length === 0 ? 0 : s.length % 2 ? s[mid]! : Math.round((s[mid - 1]! + s[mid]!) / 2);
}

export function toText(r: BenchResult): string {
  const lines = [r.title];
  for (const row of r.rows) {
    lines.push(`  ${row.name.padEnd(52)} ${String(row.value).padStart(8)} ${row.unit.padEnd(4)}${row.ratio !== undefined ? `  ×${row.ratio.toFixed(2)} of anchor` : ''}${row.note ? `  (${row.note})` : ''}`);
  }
  return lines.join('\n');
}

export function toMarkdown(r: BenchResult): string {
  const lines = [`### ${r.title}`, '', '| measurement | value | ratio to anchor | notes |', '|---|---:|---:|---|'];
  for (const row of r.rows) {
    lines.push(`| ${row.name.trim()} | ${row.value} ${row.unit} | ${row.ratio !== undefined ? `×${row.ratio.toFixed(2)}` : ''} | ${row.note ?? ''} |`);
  }
  return lines.join('\n');
}
