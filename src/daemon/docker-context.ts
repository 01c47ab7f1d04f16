import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { errnoCode } from '../util/errors.js';
import { writeFileAtomic } from '../util/files.js';

/**
 * Registers a docker CLI context pointing at berth's socket, the way `docker context create` does:
 * $DOCKER_CONFIG/contexts/meta/<sha256(name)>/meta.json. Written directly so berth does not depend
 * on a docker CLI being installed. The user's current context is changed only when asked
 * (`use: true`), by setting "currentContext" in config.json and keeping every other key.
 */
export const CONTEXT_NAME = 'berth';

export function dockerConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_CONFIG || path.join(os.homedir(), '.docker');
}

export interface ContextResult {
  name: string;
  changed: boolean;
  current: boolean;
}

export async function registerDockerContext(dockerHost: string, opts: { use?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<ContextResult> {
  const dir = dockerConfigDir(opts.env);
  const metaDir = path.join(dir, 'contexts', 'meta', crypto.createHash('sha256').update(CONTEXT_NAME).digest('hex'));
  const metaFile = path.join(metaDir, 'meta.json');
  const meta = {
    Name: CONTEXT_NAME,
    Metadata: { Description: 'berth: Docker engine in the berth VM' },
    Endpoints: { docker: { Host: dockerHost, SkipTLSVerify: false } },
  };
  const text = JSON.stringify(meta);
  let changed = true;
  try {
    changed = (await fs.readFile(metaFile, 'utf8')) !== text;
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  if (changed) {
    await fs.mkdir(metaDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(metaFile, text, 0o644);
  }
  const configFile = path.join(dir, 'config.json');
  let config: Record<string, unknown> = {};
  try {
    config = JSON.parse(await fs.readFile(configFile, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT' && !(err instanceof SyntaxError)) throw err;
    // A config.json that does not parse is the user's to fix; never overwrite it.
    if (err instanceof SyntaxError) return { name: CONTEXT_NAME, changed, current: false };
  }
  if (opts.use && config.currentContext !== CONTEXT_NAME) {
    config.currentContext = CONTEXT_NAME;
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(configFile, JSON.stringify(config, null, '\t') + '\n', 0o600);
  }
  return { name: CONTEXT_NAME, changed, current: config.currentContext === CONTEXT_NAME };
}

/** The `berth` context's metadata folder, whether it exists, and whether it is the current context. */
export async function describeDockerContext(env: NodeJS.ProcessEnv = process.env): Promise<{ name: string; metaDir: string; exists: boolean; current: boolean }> {
  const dir = dockerConfigDir(env);
  const metaDir = path.join(dir, 'contexts', 'meta', crypto.createHash('sha256').update(CONTEXT_NAME).digest('hex'));
  const exists = await fs.access(path.join(metaDir, 'meta.json')).then(
    () => true,
    () => false,
  );
  let current = false;
  try {
    current = (JSON.parse(await fs.readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>).currentContext === CONTEXT_NAME;
  } catch {
    // no or unreadable config.json: not current
  }
  return { name: CONTEXT_NAME, metaDir, exists, current };
}

/**
 * Removes the `berth` context; if it is the current one, "currentContext" is removed from
 * config.json (every other key kept), so the CLI goes back to its default. A config.json that does
 * not parse is left alone.
 */
export async function unregisterDockerContext(env: NodeJS.ProcessEnv = process.env): Promise<{ removed: boolean; wasCurrent: boolean }> {
  const d = await describeDockerContext(env);
  if (d.exists) await fs.rm(d.metaDir, { recursive: true, force: true });
  if (d.current) {
    const configFile = path.join(dockerConfigDir(env), 'config.json');
    const config = JSON.parse(await fs.readFile(configFile, 'utf8')) as Record<string, unknown>;
    delete config.currentContext;
    await writeFileAtomic(configFile, JSON.stringify(config, null, '\t') + '\n', 0o600);
  }
  return { removed: d.exists, wasCurrent: d.current };
}
