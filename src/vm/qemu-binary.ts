import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { BerthError } from '../util/errors.js';

const run = promisify(execFile);

export interface QemuInstall {
  system: string; // qemu-system-x86_64
  img: string; // qemu-img
  version: string; // "7.2.22"
}

/** Searches PATH for an executable; returns its absolute path or undefined. */
export function which(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Finds QEMU for this host's architecture. BERTH_QEMU overrides the system emulator path.
 * Throws QEMU_NOT_FOUND naming the package to install.
 */
export async function findQemu(env: NodeJS.ProcessEnv = process.env): Promise<QemuInstall> {
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const sysName = `qemu-system-${arch}`;
  const system = env.BERTH_QEMU || which(sysName, env);
  const img = env.BERTH_QEMU_IMG || which('qemu-img', env);
  const pkg = arch === 'x86_64' ? 'qemu-system-x86' : 'qemu-system-arm';
  if (!system) {
    throw new BerthError('QEMU_NOT_FOUND', `QEMU is not installed: ${sysName} was not found on PATH.`, {
      hint: `Install it with \`sudo apt-get install ${pkg} qemu-utils\` (Debian/Ubuntu), or set BERTH_QEMU to its path.`,
    });
  }
  if (!img) {
    throw new BerthError('QEMU_NOT_FOUND', 'qemu-img was not found on PATH; it creates the data disk.', {
      hint: 'Install it with `sudo apt-get install qemu-utils` (Debian/Ubuntu), or set BERTH_QEMU_IMG to its path.',
    });
  }
  let version = 'unknown';
  try {
    const { stdout } = await run(system, ['--version'], { timeout: 10_000 });
    version = /version (\d+\.\d+\.\d+)/.exec(stdout)?.[1] ?? 'unknown';
  } catch (err) {
    throw new BerthError('QEMU_FAILED', `${system} --version failed; the QEMU install looks broken.`, {
      cause: err,
      hint: `Reinstall QEMU (\`sudo apt-get install --reinstall ${pkg}\`).`,
    });
  }
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if (version !== 'unknown' && (major < 7 || (major === 7 && minor < 2))) {
    throw new BerthError('QEMU_FAILED', `QEMU ${version} is too old; berth needs 7.2 or newer (for -netdev stream).`, {
      hint: 'Install a newer QEMU (Debian 12 ships 7.2).',
    });
  }
  return { system, img, version };
}
