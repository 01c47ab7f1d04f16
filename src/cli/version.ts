import fs from 'node:fs';
import path from 'node:path';
import type { BerthPaths } from '../settings/paths.js';
import { packageRoot } from '../settings/paths.js';
import { findImage, findPack } from '../image/index.js';
import { readSettings } from '../settings/settings.js';
import { imageInputs } from '../daemon/image-source.js';
import { findQemu } from '../vm/qemu-binary.js';
import { DaemonClient } from './daemon-client.js';
import type { StatusReport } from '../daemon/api-types.js';
import type { Out } from './render.js';

/** `berth version`: berth itself, QEMU, and what the guest image holds (kernel, engine, Node). */
export async function runVersion(paths: BerthPaths, args: { json: boolean }, out: Out): Promise<number> {
  const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  const qemu = await findQemu().then((q) => q.version).catch(() => null);
  const built = await findImage(imageInputs(paths.cache)).catch(() => undefined);
  const engine = (await readSettings(paths.settings).catch(() => undefined))?.['engine.version'];
  const pack = engine ? await findPack(imageInputs(paths.cache), engine).catch(() => undefined) : undefined;
  const client = new DaemonClient(paths);
  const running = (await client.getIfRunning('/v1/status')) as StatusReport | undefined;
  const runningImage = running?.image ?? null;
  const report = {
    berth: pkg.version,
    node: process.versions.node,
    qemu,
    image: built ? built.versions : null,
    enginePack: pack ? pack.versions : null,
    runningImage,
    runningEnginePack: running?.enginePack ?? null,
  };
  if (args.json) {
    out.write(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  out.write(`berth        ${report.berth}\n`);
  out.write(`node         ${report.node}\n`);
  out.write(`qemu         ${qemu ?? 'not installed'}\n`);
  const v = built?.versions;
  if (v) {
    out.write(`guest image  ${v.key.slice(0, 12)} (built ${v.builtAt})\n`);
    out.write(`  kernel     ${v.kernel.release} (${v.kernel.version})\n`);
    out.write(`  nodejs     ${v.node}\n`);
  } else {
    out.write('guest image  not built yet (`berth image build`, or `berth start` builds it)\n');
  }
  if (pack) {
    out.write(`engine pack  ${pack.id}: ${pack.versions.title}, ${pack.key.slice(0, 12)} (built ${pack.versions.builtAt})\n`);
    for (const [name, ver] of Object.entries(pack.versions.engine)) out.write(`  ${name.padEnd(14)} ${ver}\n`);
    if (pack.versions.emulators.length > 0) out.write(`  emulators      ${pack.versions.emulators.join(' ')}\n`);
  } else if (engine) {
    out.write(`engine pack  ${engine}: not built yet (\`berth image build\`, or \`berth start\` builds it)\n`);
  }
  if (running?.enginePack) out.write(`running VM   engine ${running.enginePack.id} (Docker ${running.enginePack.dockerVersion})\n`);
  if (runningImage && built && (runningImage as { key?: string }).key !== built.key) {
    out.write(`running VM uses image ${String((runningImage as { key?: string }).key).slice(0, 12)}; restart to use the new one\n`);
  }
  return 0;
}
