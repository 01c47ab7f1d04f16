import type { BerthPaths } from '../settings/paths.js';
import { buildImage } from '../image/index.js';
import { imageInputs } from '../daemon/image-source.js';
import { Logger } from '../util/log.js';
import type { ProgressEvent } from '../util/progress.js';
import { formatMs, progressRenderer, type Out } from './render.js';

/** `berth image build [--force]`: builds the guest image in this process (no daemon needed). */
export async function runImageBuild(paths: BerthPaths, args: { json: boolean; force: boolean }, out: Out): Promise<number> {
  const t0 = performance.now();
  const render = args.json ? (e: ProgressEvent) => out.write(JSON.stringify(e) + '\n') : progressRenderer(out, process.stdout.isTTY === true);
  if (!args.json) out.write('berth: building the guest image\n');
  const log = process.env.BERTH_DEBUG ? new Logger({ write: (l) => process.stderr.write(l) }, 'image', 'debug') : undefined;
  const info = await buildImage({ ...imageInputs(paths.cache), onProgress: render, force: args.force, ...(log ? { log } : {}) });
  if (args.json) {
    out.write(JSON.stringify({ type: 'result', ok: true, image: { key: info.key, dir: info.dir, cached: info.cached, versions: info.versions } }) + '\n');
  } else {
    out.write(`${info.cached ? 'Image already built (cache hit)' : `Image built in ${formatMs(Math.round(performance.now() - t0))}`}: ${info.key.slice(0, 12)}\n`);
    out.write(`  ${info.dir}\n`);
  }
  return 0;
}
