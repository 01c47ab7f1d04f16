import path from 'node:path';
import type { ProgressListener } from '../util/progress.js';
import type { Logger } from '../util/log.js';
import { buildImage, buildPack, findImage, findPack, loadManifest, type BuildOptions, type ImageInfo, type ImageVersions, type PackInfo, type PackVersions } from '../image/index.js';
import { packageRoot } from '../settings/paths.js';

/** The engine pack a VM boots: its image and what it holds. */
export interface ResolvedPack {
  id: string;
  key: string;
  squashfs: string;
  versions: PackVersions;
  /** The pack's docker CLI and CLI plugins for the host (docker-compose, docker-buildx). */
  dockerCli: string | undefined;
  cliPlugins: Record<string, string>;
}

/** The base and pack a VM boots: file paths plus what they hold. Stored in vm.json for adoption. */
export interface ResolvedImage {
  key: string;
  vmlinux: string;
  initramfs: string;
  rootfs: string;
  cmdline: string;
  versions: ImageVersions;
  pack: ResolvedPack;
}

export interface ImageSource {
  /** The base and engine pack `engine` for this checkout, building either first (with progress) if it is not cached. */
  ensure(engine: string, onProgress: ProgressListener): Promise<ResolvedImage>;
  /** The cached base and pack, or undefined; never builds. */
  current(engine: string): Promise<ResolvedImage | undefined>;
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

  async current(engine: string): Promise<ResolvedImage | undefined> {
    const inputs = imageInputs(this.cacheDir);
    const [base, pack] = await Promise.all([findImage(inputs), findPack(inputs, engine)]);
    if (!base || !pack) return undefined;
    return this.resolved(inputs.manifestPath, base, pack);
  }

  async ensure(engine: string, onProgress: ProgressListener): Promise<ResolvedImage> {
    const inputs = imageInputs(this.cacheDir);
    const note = (message: string) => onProgress({ type: 'note', level: 'info', message, at: Date.now() });
    const cachedBase = await findImage(inputs);
    if (!cachedBase) note('The guest image is not built yet: building it now from Debian packages (first start only; a few minutes).');
    const base = cachedBase ?? (await buildImage({ ...inputs, onProgress, log: this.log }));
    const cachedPack = await findPack(inputs, engine);
    if (!cachedPack) note(`The engine pack ${engine} is not built yet: building it now from Debian packages (once per engine version; a few minutes).`);
    const pack = cachedPack ?? (await buildPack({ ...inputs, onProgress, log: this.log }, engine));
    return this.resolved(inputs.manifestPath, base, pack);
  }

  private async resolved(manifestPath: string, base: ImageInfo, pack: PackInfo): Promise<ResolvedImage> {
    const manifest = await loadManifest(manifestPath);
    return {
      key: base.key,
      vmlinux: base.vmlinux,
      initramfs: base.initramfs,
      rootfs: base.rootfs,
      cmdline: manifest.base.kernel.cmdline,
      versions: base.versions,
      pack: { id: pack.id, key: pack.key, squashfs: pack.squashfs, versions: pack.versions, dockerCli: pack.dockerCli, cliPlugins: pack.cliPlugins },
    };
  }
}
