/**
 * Shared by the daemon's file server and the guest agent: the change-event actuator's identity and
 * requests (docs/files.md "Change events").
 */

import { randomInt } from 'node:crypto';

/**
 * The uids the actuator may run as in the guest. The file server fakes that uid's requests; on
 * one v9fs mount the attach uid is the only identity a request carries (a second connection
 * would be a second superblock, whose inotify events no container's watch hears), so the uid is
 * drawn at random for each file server (docs/security.md rule 13) instead of being one a
 * container could take by habit. Node spawns only int32 uids.
 */
export const ACTUATOR_UID_MIN = 2 ** 30;
export const ACTUATOR_UID_MAX = 2 ** 31 - 2;

export function randomActuatorUid(): number {
  return randomInt(ACTUATOR_UID_MIN, ACTUATOR_UID_MAX + 1);
}

export function isActuatorUid(n: unknown): n is number {
  return Number.isSafeInteger(n) && (n as number) >= ACTUATOR_UID_MIN && (n as number) <= ACTUATOR_UID_MAX;
}

/**
 * What the actuator replays. Three ops replay nothing and only keep the agent's pins true:
 * - `pin`: a folder a container made itself is pinned (held open by the agent), so later host
 *   changes inside it reach watchers too;
 * - `sweep`: the guest itself removed, replaced or renamed entries directly in the folder `path`:
 *   the agent drops its pins of what is gone there (and below) and re-keys what moved, so that a
 *   name the guest made again (`rm -rf dist && mkdir dist`) is pinned anew and no descriptor of a
 *   deleted entry is held for ever;
 * - `unpin`: the host removed or renamed away `path` in a burst of more changes than the replays
 *   follow (change-events.ts, MAX_ACTS_PER_BURST): the agent lets go of its pins at `path` and
 *   below, so the VM forgets those names and its next lookup asks the server (with `cached`, a
 *   cached share, it also drops the VM's unused names, which cache=loose would keep). Watchers
 *   hear nothing of those changes; what the VM shows is right again.
 */
export type ActOp = 'create' | 'mkdir' | 'modify' | 'delete' | 'rmdir' | 'rename' | 'pin' | 'sweep' | 'unpin';

export interface ActRequest {
  op: ActOp;
  /** The uid to replay as (this file server's actuator uid); the ops that replay a change need it. */
  uid?: number;
  /** Guest path (a shared folder's path plus the relative path). */
  path: string;
  /** The new path of a rename. */
  to?: string;
  /**
   * create, modify: the file's size on the host now. The actuator sets it in the guest (a faked
   * truncate, IN_MODIFY), so a cached share (cache=loose, which never takes sizes from the
   * server) has it right.
   */
  size?: number;
  /** unpin: the path is in a cached share (cache=loose). */
  cached?: boolean;
}

/** The ops the actuator replays as a process of its own (the others only keep the agent's pins true). */
export const REPLAYED_OPS: readonly ActOp[] = ['create', 'mkdir', 'modify', 'delete', 'rmdir', 'rename'];

export const ACT_OPS: readonly ActOp[] = ['create', 'mkdir', 'modify', 'delete', 'rmdir', 'rename', 'pin', 'sweep', 'unpin'];
