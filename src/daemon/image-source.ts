import path from 'node:path';
import type { ProgressListener } from '../util/progress.js';
import type { Logger } from '../util/log.js';
import { buildImage, findImage, loadManifest, type BuildOptions, type ImageVersions } from '../image/index.js';
import { packageRoot } from '../settings/paths.js';

/** The image a VM boots: file paths plus what it holds. Stored in vm.json for adoption. */
export interface ResolvedImage {
  key: string;
  vmlinux: string;
  initramfs: string;
  rootfs: string;
  cmdline: string;
  versions: ImageVersions;
}

export interface ImageSource {
  /** The image for this checkout, building it first (with progress) if it is not cached. */
  ensure(onProgress: ProgressListener): Promise<ResolvedImage>;
  /** The cached image for this checkout, or undefined; never builds. */
  current(): Promise<ResolvedImage | undefined>;
}

/**
 * Where the manifest, guest files and agent bundle of this checkout live. BERTH_GUEST_DIR points
 * the builder at another guest folder (a customised manifest and scripts).
 */
export function imageInputs(cacheDir: string, env: NodeJS.ProcessEnv = process.env): Pick<BuildOptions, 'manifestPath' | 'guestDir' | 'agentBundle' | 'cacheDir'> {
  const root = packageRoot();
  const guestDir = env.BERTH_GUEST_DIR ? path.resolve(env.BERTH_GUEST_DIR) : path.join(root, 'guest');
  return {
    manifestPath: path.join(guestDir, 'manifest.json'),
    guestDir,
    agentBundle: path.join(root, 'dist', 'agent.cjs'),
    cacheDir,
  };
}

export class BuilderImageSource implements ImageSource {
  constructor(
    private readonly cacheDir: string,
    private readonly log: Logger,
  ) {}

  async current(): Promise<ResolvedImage | undefined> {
    const inputs = imageInputs(this.cacheDir);
    const info = await findImage(inputs);
    if (!info) return undefined;
    const manifest = await loadManifest(inputs.manifestPath);
    return { key: info.key, vmlinux: info.vmlinux, initramfs: info.initramfs, rootfs: info.rootfs, cmdline: manifest.kernel.cmdline, versions: info.versions };
  }

  async ensure(onProgress: ProgressListener): Promise<ResolvedImage> {
    const inputs = imageInputs(this.cacheDir);
    const cached = await findImage(inputs);
    if (!cached) {
      onProgress({
        type: 'note',
        level: 'info',
        message: 'The guest image is not built yet: building it now from Debian packages (first start only; a few minutes).',
        at: Date.now(),
      });
    }
    const info = cached ?? (await buildImage({ ...inputs, onProgress, log: this.log }));
    const manifest = await loadManifest(inputs.manifestPath);
    return { key: info.key, vmlinux: info.vmlinux, initramfs: info.initramfs, rootfs: info.rootfs, cmdline: manifest.kernel.cmdline, versions: info.versions };
  }
}
