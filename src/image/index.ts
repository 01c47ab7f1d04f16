/** The guest image builder's public surface (docs/image.md). */
export { buildImage, buildPack, findImage, findPack, IMAGE_FILES, PACK_FILES, type BuildOptions, type ImageInfo, type ImageVersions, type PackInfo, type PackVersions } from './build.js';
export { computeImageKey } from './cache-key.js';
export { loadManifest, type Manifest, type PackSpec } from './manifest.js';
export { checkHostTools } from './host-tools.js';
export { writeCpio, type CpioEntry } from './cpio.js';
