/** The guest image builder's public surface (docs/image.md). */
export { buildImage, findImage, IMAGE_FILES, type BuildOptions, type ImageInfo, type ImageVersions } from './build.js';
export { computeImageKey } from './cache-key.js';
export { loadManifest, type Manifest } from './manifest.js';
export { checkHostTools } from './host-tools.js';
export { writeCpio, type CpioEntry } from './cpio.js';
