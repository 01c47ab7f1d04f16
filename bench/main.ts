import fs from 'node:fs';
import path from 'node:path';
import { benchStart, makeKernelVariant } from './start.js';
import { benchNet } from './net.js';
import { benchFiles, KERNEL_FILES_SIZES } from './files.js';
import { benchFileserver } from './fileserver.js';
import { benchProxy } from './proxy.js';
import { toMarkdown, toText, type BenchResult } from './report.js';

/**
 * `npm run bench [-- --runs N] [--only start,net,files,kernel,fileserver,proxy] [--update-docs]`: runs every benchmark with
 * its anchor measured in the same run, prints the results, and with --update-docs writes the
 * markdown tables into docs/performance.md between the bench markers (only with all benchmarks run).
 */
const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1]) || 5;
const only = args.includes('--only') ? new Set((args[args.indexOf('--only') + 1] ?? '').split(',')) : undefined;
const want = (name: string) => !only || only.has(name);
const results: BenchResult[] = [];

if (want('start')) results.push(await benchStart(runs));
if (want('net')) results.push(await benchNet(Math.min(runs, 3)));
if (want('files')) results.push(await benchFiles(Math.min(runs, 3)));
if (want('kernel')) {
  // The kernel comparison (docs/performance.md "Engine packs and the kernel"): the same guest with
  // Debian 12's kernel (the base's) and with Debian 13's, on a smaller tree so both fit one run.
  const k612 = makeKernelVariant(path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'guest'));
  try {
    results.push(await benchFiles(Math.min(runs, 2), KERNEL_FILES_SIZES, { name: "Debian 12's kernel (6.1, the base's)", env: {} }));
    results.push(await benchFiles(Math.min(runs, 2), KERNEL_FILES_SIZES, { name: "Debian 13's kernel (6.12)", env: { BERTH_GUEST_DIR: k612 } }));
  } finally {
    fs.rmSync(k612, { recursive: true, force: true });
  }
}
if (want('fileserver')) results.push(await benchFileserver(runs));
if (want('proxy')) results.push(await benchProxy(runs));

const when = new Date().toISOString().slice(0, 10);
const md = [`_Measured ${when} by \`npm run bench\` (runs: ${runs}); medians._`, '', ...results.map(toMarkdown)].join('\n\n');
for (const r of results) console.log(`\n${toText(r)}`);
console.log(`\n${md}\n`);
if (args.includes('--update-docs') && !only) {
  const file = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'docs', 'performance.md');
  const text = fs.readFileSync(file, 'utf8');
  const begin = '<!-- bench:begin -->';
  const end = '<!-- bench:end -->';
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  if (i < 0 || j < i) throw new Error(`${file} has no ${begin} ... ${end} section`);
  fs.writeFileSync(file, `${text.slice(0, i + begin.length)}\n${md}\n${text.slice(j)}`);
  console.log(`updated ${file}`);
}
