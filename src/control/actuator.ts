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
  /** A create of a file that already has content: the guest also emits IN_MODIFY. */
  written?: boolean;
}

export const ACT_OPS: readonly ActOp[] = ['create', 'mkdir', 'modify', 'delete', 'rmdir', 'rename', 'pin'];
