import path from 'node:path';
import type { BerthPaths } from '../settings/paths.js';
import type { Settings } from '../settings/settings.js';
import type { DataStore } from './driver.js';
import { QcowDataStore } from './qcow-data-store.js';
import { RawDataStore } from './namespace/data-store.js';

/**
 * The engine's data store of a backend in this berth home: the VM's qcow2 disk, the namespace's
 * sparse ext4 file (docs/namespace.md). The drivers use it, and so do the CLI's engine commands
 * (which store an engine record or a rollback is about), so that both agree on the files.
 */
export function dataStoreFor(paths: BerthPaths, backend: Settings['backend']): DataStore {
  return backend === 'namespace' ? new RawDataStore(path.join(paths.disksDir, 'data.img')) : new QcowDataStore(paths.dataDisk, paths.engineStamp);
}
