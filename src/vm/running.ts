import type { BerthPaths } from '../settings/paths.js';
import { runningQemuPid } from './qemu-process.js';
import { runningNamespacePid } from './namespace/driver.js';

/**
 * True when a guest of this berth home runs although no daemon does (the daemon was killed): the
 * CLI then starts a daemon, which adopts it. Every backend is asked.
 */
export async function guestLeftRunning(paths: BerthPaths): Promise<boolean> {
  return (await runningQemuPid(paths.qemuPidFile, paths.home)) !== undefined || (await runningNamespacePid(paths)) !== undefined;
}
