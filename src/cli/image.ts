import type { BerthPaths } from '../settings/paths.js';
import { buildImage, buildPack } from '../image/index.js';
import { readSettings } from '../settings/settings.js';
import { imageInputs } from '../daemon/image-source.js';
import { Logger } from '../util/log.js';
import type { ProgressEvent } from '../util/progress.js';
import { formatMs, progressRenderer, type Out } from './render.js';

/**
 * `berth image build [--force]`: builds the guest image's base and the engine pack of the setting
 * engine.version in this process (no daemon needed).
 */
export async function runImageBuild(paths: BerthPaths, args: { json: boolean; force: boolean }, out: Out): Promise<number> {
  const t0 = performance.now();
  const render = args.json ? (e: ProgressEvent) => out.write(JSON.stringify(e) + '\n') : progressRenderer(out, process.stdout.isTTY === true);
  if (!args.json) out.write('berth: building the guest image\n');
  const log = process.env.BERTH_DEBUG ? new Logger({ write: (l) => process.stderr.write(l) }, 'image', 'debug') : undefined;
  const engine = (await readSettings(paths.settings))['engine.version'];
  const opts = { ...imageInputs(paths.cache), onProgress: render, force: args.force, ...(log ? { log } : {}) };
  const info = await buildImage(opts);
  const pack = await buildPack(opts, engine);
  if (args.json) {
    out.write(
      JSON.stringify({
        type: 'result',
        ok: true,
        image: { key: info.key, dir: info.dir, cached: info.cached, versions: info.versions },
        pack: { id: pack.id, key: pack.key, dir: pack.dir, cached: pack.cached, versions: pack.versions },
      }) + '\n',
    );
  } else {
    const took = `built in ${formatMs(Math.round(performance.now() - t0))}`;
    out.write(`${info.cached && pack.cached ? 'Image already built (cache hit)' : `Image ${took}`}: base ${info.key.slice(0, 12)}, engine ${pack.id} (Docker ${pack.versions.engineVersion}) ${pack.key.slice(0, 12)}\n`);
    out.write(`  ${info.dir}\n  ${pack.dir}\n`);
  }
  return 0;
}
