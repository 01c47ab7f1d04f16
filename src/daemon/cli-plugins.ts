import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { errnoCode } from '../util/errors.js';
import { dockerConfigDir } from './docker-context.js';

/**
 * The docker CLI plugins of the running engine pack (docker compose, docker buildx) made available
 * to the host's docker CLI (docs/engine-packs.md "On the host").
 *
 * Each plugin is copied to $BERTH_HOME/cli-plugins/<name> and linked from
 * $DOCKER_CONFIG/cli-plugins/<name> (default ~/.docker/cli-plugins), the folder every docker CLI
 * searches first. berth never replaces what it did not make: a plugin of the same name in that
 * folder, or in one of the system folders the CLI also searches (which the user folder would
 * shadow), is left alone and reported. A link is berth's when it points at its own copy;
 * `removeCliPlugins` removes exactly those.
 */
export const SYSTEM_PLUGIN_DIRS = ['/usr/local/lib/docker/cli-plugins', '/usr/local/libexec/docker/cli-plugins', '/usr/lib/docker/cli-plugins', '/usr/libexec/docker/cli-plugins'];

export type PluginState =
  /** berth's link is in place (made now or before). */
  | 'linked'
  /** The user's own plugin of that name is in the user folder: left alone. */
  | 'user'
  /** A plugin of that name is installed system-wide: left alone (the user folder would shadow it). */
  | 'system';

export interface PluginOutcome {
  name: string;
  state: PluginState;
  /** The link, or the plugin that was left alone. */
  path: string;
}

export interface PluginPlaces {
  /** $BERTH_HOME/cli-plugins */
  berthDir: string;
  env?: NodeJS.ProcessEnv;
  /** For tests: the system folders to look in. */
  systemDirs?: string[];
}

function userPluginDir(env?: NodeJS.ProcessEnv): string {
  return path.join(dockerConfigDir(env), 'cli-plugins');
}

async function lstatOrUndefined(p: string) {
  try {
    return await fs.lstat(p);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Copies `from` to `to` unless `to` is already that copy; atomic (a CLI running it meanwhile keeps
 * the old file). A pack's files never change in place (a new pack is a new folder), so a copy
 * with the source's size and modification time is that copy: no need to read 26 MB at each start.
 */
async function syncCopy(from: string, to: string): Promise<void> {
  const [a, b] = await Promise.all([fs.stat(from), lstatOrUndefined(to)]);
  if (b?.isFile() && b.size === a.size && b.mtimeMs === a.mtimeMs) return;
  const tmp = `${to}.${process.pid}.tmp`;
  await fs.rm(tmp, { force: true });
  // EXCL: never write through something already at the temporary name.
  await fs.copyFile(from, tmp, fsConstants.COPYFILE_EXCL);
  await fs.chmod(tmp, 0o755);
  await fs.utimes(tmp, a.atime, a.mtime);
  await fs.rename(tmp, to);
}

/**
 * Makes each of `plugins` (name → file in the pack) available to the host's docker CLI where that
 * does not replace anything. Links made for an earlier pack stay while this pack has no plugin of
 * that name (Docker 20.10's pack has none): they keep working against any engine.
 */
export async function installCliPlugins(plugins: Record<string, string>, places: PluginPlaces): Promise<PluginOutcome[]> {
  const userDir = userPluginDir(places.env);
  const out: PluginOutcome[] = [];
  for (const [name, file] of Object.entries(plugins)) {
    const own = path.join(places.berthDir, name);
    const link = path.join(userDir, name);
    const existing = await lstatOrUndefined(link);
    if (existing && !(existing.isSymbolicLink() && (await fs.readlink(link)) === own)) {
      out.push({ name, state: 'user', path: link });
      continue;
    }
    let system: string | undefined;
    for (const dir of places.systemDirs ?? SYSTEM_PLUGIN_DIRS) {
      const candidate = path.join(dir, name);
      if (await lstatOrUndefined(candidate)) {
        system = candidate;
        break;
      }
    }
    if (system) {
      if (existing) await fs.rm(link, { force: true }); // our old link would shadow the system plugin
      out.push({ name, state: 'system', path: system });
      continue;
    }
    await fs.mkdir(places.berthDir, { recursive: true, mode: 0o755 });
    await syncCopy(file, own);
    if (!existing) {
      await fs.mkdir(userDir, { recursive: true, mode: 0o755 });
      await fs.symlink(own, link);
    }
    out.push({ name, state: 'linked', path: link });
  }
  return out;
}

/** berth's plugin links in the user folder: those that point at berth's own copies. */
export async function berthPluginLinks(places: PluginPlaces): Promise<string[]> {
  const userDir = userPluginDir(places.env);
  let names: string[] = [];
  try {
    names = await fs.readdir(places.berthDir);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  const links: string[] = [];
  for (const name of names) {
    const link = path.join(userDir, name);
    const st = await lstatOrUndefined(link);
    if (st?.isSymbolicLink() && (await fs.readlink(link)) === path.join(places.berthDir, name)) links.push(link);
  }
  return links;
}

/** Removes berth's plugin links (only links that point at berth's copies) and the copies. Returns the links removed. */
export async function removeCliPlugins(places: PluginPlaces): Promise<string[]> {
  const links = await berthPluginLinks(places);
  for (const link of links) await fs.rm(link);
  await fs.rm(places.berthDir, { recursive: true, force: true });
  return links;
}
