/**
 * Shared by the daemon's file server and the guest agent: the change-event actuator's identity and
 * requests (docs/files.md "Change events").
 */

/** The uid the actuator runs as in the guest; the file server fakes that uid's requests. */
export const ACTUATOR_UID = 2147483646;

/**
 * What the actuator replays. `pin` replays nothing: a folder a container made itself is only
 * pinned (held open by the agent), so later host changes inside it reach watchers too.
 */
export type ActOp = 'create' | 'mkdir' | 'modify' | 'delete' | 'rmdir' | 'rename' | 'pin';

export interface ActRequest {
  op: ActOp;
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
}

export const ACT_OPS: readonly ActOp[] = ['create', 'mkdir', 'modify', 'delete', 'rmdir', 'rename', 'pin'];
