import { toolPath } from './host-tools.js';
import { runTool } from './run.js';

/**
 * Packs the root tree into the read-only squashfs image (flags checked against mksquashfs 4.5.1):
 *   -comp lz4     fastest to decompress, which matters under TCG (slightly larger than xz/zstd)
 *   -all-root     every file owned by root, whoever ran the build
 *   -no-xattrs    nothing from the build host's filesystem (e.g. SELinux labels) leaks in;
 *                 Debian packages carry no xattrs in their data tarballs
 *   -noappend     overwrite, never append to, an existing file
 *   -quiet -no-progress   we report progress ourselves
 */
export async function makeSquashfs(tree: string, out: string, signal?: AbortSignal): Promise<void> {
  await runTool(toolPath('mksquashfs'), [tree, out, '-comp', 'lz4', '-all-root', '-no-xattrs', '-noappend', '-quiet', '-no-progress'], {
    code: 'IMAGE_BUILD_FAILED',
    what: 'Image build failed at step "rootfs" (mksquashfs)',
    hint: 'Check the free space in the cache directory (BERTH_CACHE), then build again.',
    signal,
  });
}
