import fs from 'node:fs';
import path from 'node:path';
import { BerthError } from '../util/errors.js';

/**
 * Host programs the builder runs, with the Debian package that provides each. `checkHostTools`
 * runs before any work so a missing tool fails at once instead of after a 200 MB download.
 */
export const HOST_TOOLS: ReadonlyArray<{ tool: string; pkg: string }> = [
  { tool: 'apt-get', pkg: 'apt' },
  { tool: 'dpkg-deb', pkg: 'dpkg' },
  { tool: 'tar', pkg: 'tar' },
  { tool: 'depmod', pkg: 'kmod' },
  { tool: 'mksquashfs', pkg: 'squashfs-tools' },
  { tool: 'xz', pkg: 'xz-utils' },
  { tool: 'zstd', pkg: 'zstd' },
];

/** depmod lives in /usr/sbin, which a normal user's PATH may lack. */
function searchPath(env: NodeJS.ProcessEnv): string[] {
  return [...(env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/sbin'].filter(Boolean);
}

/** The absolute path of an executable found on PATH (plus the sbin directories), or undefined. */
export function findTool(tool: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of searchPath(env)) {
    const p = path.join(dir, tool);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** The path to spawn a host tool by: absolute when found, else its bare name (spawn then fails clearly). */
export function toolPath(tool: string): string {
  return findTool(tool) ?? tool;
}

/** Throws TOOL_NOT_FOUND naming every missing tool and the Debian packages to install. */
export async function checkHostTools(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const missing = HOST_TOOLS.filter((t) => !findTool(t.tool, env));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((m) => m.pkg))];
  throw new BerthError(
    'TOOL_NOT_FOUND',
    `The guest image builder needs ${missing.map((m) => m.tool).join(', ')}, which ${missing.length === 1 ? 'is' : 'are'} not installed.`,
    {
      hint: `Install ${missing.length === 1 ? 'it' : 'them'} with \`sudo apt-get install ${pkgs.join(' ')}\`.`,
      details: { missing: missing.map((m) => m.tool), packages: pkgs },
    },
  );
}
