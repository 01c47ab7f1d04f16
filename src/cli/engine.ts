import { findPack, loadManifest } from '../image/index.js';
import { imageInputs } from '../daemon/image-source.js';
import type { StatusReport } from '../daemon/api-types.js';
import { classifySwitch, downgradeError, readStamp, writeStamp } from '../engine/stamp.js';
import type { BerthPaths } from '../settings/paths.js';
import { readSettings, setSetting } from '../settings/settings.js';
import { BerthError } from '../util/errors.js';
import { guestLeftRunning } from '../vm/running.js';
import { dataStoreFor } from '../vm/stores.js';
import type { DataStore } from '../vm/driver.js';
import { DaemonClient } from './daemon-client.js';
import type { Out } from './render.js';

/**
 * `berth engine list | use VERSION [--restart] [--force] | rollback` (docs/engine-packs.md).
 * The choice is the setting engine.version; the daemon applies it at the next start, refusing an
 * engine older than the one that last wrote the data disk.
 */
export interface EngineRow {
  id: string;
  title: string;
  /** The Docker version of the built pack; null until it is built. */
  dockerVersion: string | null;
  built: boolean;
  selected: boolean;
  running: boolean;
  /** This engine last wrote the data disk. */
  wroteData: boolean;
}

async function runningStatus(paths: BerthPaths): Promise<StatusReport | undefined> {
  return (await new DaemonClient(paths).getIfRunning('/v1/status').catch(() => undefined)) as StatusReport | undefined;
}

/** The data store these commands are about: the running guest's backend's, else the setting's. */
function storeOf(paths: BerthPaths, settings: Awaited<ReturnType<typeof readSettings>>, running: StatusReport | undefined): DataStore {
  const backend = running?.state === 'running' && (running.backend === 'vm' || running.backend === 'namespace') ? running.backend : settings.backend;
  return dataStoreFor(paths, backend);
}

export async function engineList(paths: BerthPaths, opts: { json: boolean }, out: Out): Promise<number> {
  const inputs = imageInputs(paths.cache);
  const manifest = await loadManifest(inputs.manifestPath);
  const settings = await readSettings(paths.settings);
  const running = await runningStatus(paths);
  const store = storeOf(paths, settings, running);
  const stamp = await readStamp(store.engineStamp, store.path);
  const rows: EngineRow[] = [];
  for (const p of manifest.packs) {
    const built = await findPack(inputs, p.id);
    rows.push({
      id: p.id,
      title: p.title,
      dockerVersion: built?.versions.engineVersion ?? null,
      built: built !== undefined,
      selected: settings['engine.version'] === p.id,
      running: running?.state === 'running' && running.enginePack?.id === p.id,
      wroteData: stamp?.pack === p.id,
    });
  }
  if (opts.json) {
    out.write(JSON.stringify({ engines: rows, dataDisk: stamp ?? null }, null, 2) + '\n');
    return 0;
  }
  out.write(`${'ENGINE'.padEnd(8)}${'DOCKER'.padEnd(10)}${'STATE'.padEnd(40)}TITLE\n`);
  for (const r of rows) {
    const state = [r.selected ? 'selected' : '', r.running ? 'running' : '', r.built ? 'built' : 'not built', r.wroteData ? 'wrote the data disk' : ''].filter(Boolean).join(', ');
    out.write(`${r.id.padEnd(8)}${(r.dockerVersion ?? '-').padEnd(10)}${state.padEnd(40)}${r.title}\n`);
  }
  if (stamp?.snapshot) out.write(`\nA snapshot of the data disk from before the upgrade to ${stamp.pack} (engine ${stamp.snapshot.pack}, ${stamp.snapshot.takenAt}) is kept: \`berth engine rollback\`.\n`);
  return 0;
}

export async function engineUse(
  paths: BerthPaths,
  opts: { version: string; restart: boolean; force: boolean; json: boolean },
  out: Out,
  restart: () => Promise<number>,
): Promise<number> {
  const inputs = imageInputs(paths.cache);
  const manifest = await loadManifest(inputs.manifestPath);
  const pack = manifest.packs.find((p) => p.id === opts.version);
  if (!pack) {
    throw new BerthError('ENGINE_UNKNOWN', `There is no engine "${opts.version}" (known: ${manifest.packs.map((p) => p.id).join(', ')}).`, {
      hint: 'Run `berth engine list` for the engines this berth has.',
    });
  }
  const running = await runningStatus(paths);
  const store = storeOf(paths, await readSettings(paths.settings), running);
  const stamp = await readStamp(store.engineStamp, store.path);
  const sw = classifySwitch(stamp, pack.id);
  if (sw.kind === 'downgrade') {
    if (!opts.force) throw downgradeError(sw.from, pack.id);
    await writeStamp(store.engineStamp, { ...sw.from, allowDowngradeTo: pack.id });
  }
  await setSetting(paths.settings, 'engine.version', pack.id);
  const needsRestart = running?.state === 'running' && running.enginePack?.id !== pack.id;
  if (opts.json && !(opts.restart && needsRestart)) {
    out.write(JSON.stringify({ engine: pack.id, switch: sw.kind, restartNeeded: needsRestart }) + '\n');
    return 0;
  }
  if (!opts.json) {
    out.write(`engine.version is now ${pack.id} (${pack.title}).\n`);
    if (sw.kind === 'upgrade') out.write(`The data disk was last written by engine ${sw.from.pack}: a snapshot is taken at the next start, so \`berth engine rollback\` can go back.\n`);
    if (sw.kind === 'downgrade') out.write(`warning: engine ${pack.id} will start on data last written by engine ${sw.from.pack} (forced).\n`);
  }
  if (needsRestart) {
    if (opts.restart) return restart();
    out.write(`berth runs engine ${running?.enginePack?.id}: the change takes effect at the next start (\`berth restart\`, or \`berth engine use ${pack.id} --restart\`).\n`);
  }
  return 0;
}

export async function engineRollback(paths: BerthPaths, opts: { json: boolean }, out: Out): Promise<number> {
  const running = await runningStatus(paths);
  // A failed start has cleaned up (nothing holds the disk); any other state but stopped might.
  if ((running && running.state !== 'stopped' && running.state !== 'failed') || (await guestLeftRunning(paths))) {
    throw new BerthError('VM_RUNNING', 'The engine cannot be rolled back while berth runs: the data disk is in use.', { hint: 'Run `berth stop`, then `berth engine rollback`.' });
  }
  const store = storeOf(paths, await readSettings(paths.settings), undefined);
  const stamp = await readStamp(store.engineStamp, store.path);
  const snap = stamp?.snapshot;
  if (!stamp || !snap) {
    throw new BerthError('ENGINE_NO_SNAPSHOT', 'There is no snapshot to roll back to: berth takes one when a start upgrades the engine, and none is kept now.', {
      hint: 'Run `berth engine list` to see which engine wrote the data disk.',
    });
  }
  if (!(await store.listSnapshots()).includes(snap.name)) {
    throw new BerthError('ENGINE_NO_SNAPSHOT', `The snapshot ${snap.name} that ${store.engineStamp} names is not kept with the data disk ${store.path}.`, {
      hint: `Nothing was changed. To go on with engine ${stamp.pack}'s data: \`berth engine use ${stamp.pack}\`.`,
    });
  }
  // Restore, then record at once which engine the data is now from (so a failure after this point
  // cannot let the newer engine migrate the restored data without a new snapshot), then tidy up.
  await store.applySnapshot(snap.name);
  await writeStamp(store.engineStamp, { pack: snap.pack, engineVersion: snap.engineVersion, writtenAt: new Date().toISOString() });
  await setSetting(paths.settings, 'engine.version', snap.pack);
  const leftover = await store.deleteSnapshot(snap.name).then(
    () => undefined,
    (err: Error) => err.message,
  );
  if (leftover && !opts.json) out.write(`warning: the snapshot stays in the data disk (${leftover}); the next upgrade removes it.\n`);
  if (opts.json) out.write(JSON.stringify({ engine: snap.pack, restoredSnapshot: snap.name }) + '\n');
  else out.write(`The data disk is back as engine ${snap.pack} left it on ${snap.takenAt} (what engine ${stamp.pack} did since is gone); engine.version is ${snap.pack}. Start with \`berth start\`.\n`);
  return 0;
}
