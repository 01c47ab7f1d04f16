import { ensureDataDisk } from './data-disk.js';
import { findQemu } from './qemu-binary.js';
import { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots } from '../engine/snapshot.js';
import type { DataStore, DataStoreState } from './driver.js';

/** The data disk: a sparse qcow2 whose internal snapshots serve the engine switch. */
export class QcowDataStore implements DataStore {
  private qemuImg: Promise<string> | undefined;

  constructor(
    readonly path: string,
    readonly engineStamp: string,
  ) {}

  async ensure(sizeGiB: number): Promise<DataStoreState> {
    const disk = await ensureDataDisk(await this.img(), this.path, sizeGiB);
    return { virtualGiB: disk.virtualGiB, allocatedBytes: disk.allocatedBytes, created: disk.created, ...(disk.note ? { note: disk.note } : {}) };
  }

  async createSnapshot(name: string): Promise<void> {
    await createSnapshot(await this.img(), this.path, name);
  }

  async applySnapshot(name: string): Promise<void> {
    await applySnapshot(await this.img(), this.path, name);
  }

  async deleteSnapshot(name: string): Promise<void> {
    await deleteSnapshot(await this.img(), this.path, name);
  }

  async listSnapshots(): Promise<string[]> {
    return listSnapshots(await this.img(), this.path);
  }

  private img(): Promise<string> {
    this.qemuImg ??= findQemu().then((q) => q.img);
    // A failed lookup is not remembered: the user may install QEMU and try again.
    this.qemuImg.catch(() => (this.qemuImg = undefined));
    return this.qemuImg;
  }
}

