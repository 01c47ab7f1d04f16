/**
 * One error type for the whole project, in the manner of undici's errors: a stable machine-readable
 * `code`, a message that says what failed and why, a `hint` that says what to do next, and the
 * underlying `cause`. The CLI prints `message` and `hint`; `--json` output carries all fields.
 */

/** Stable error codes. Scripts may match on these; never rename one, only add. */
export type ErrorCode =
  | 'USAGE'
  | 'INTERNAL'
  | 'SETTINGS_INVALID'
  | 'SETTINGS_UNREADABLE'
  | 'HOME_UNUSABLE'
  | 'QEMU_NOT_FOUND'
  | 'QEMU_FAILED'
  | 'QEMU_EXITED'
  | 'ACCEL_UNAVAILABLE'
  | 'ACCEL_FAILED_AT_RUNTIME'
  | 'QMP_FAILED'
  | 'TOOL_NOT_FOUND'
  | 'IMAGE_MANIFEST_INVALID'
  | 'IMAGE_RESOLVE_FAILED'
  | 'IMAGE_DOWNLOAD_FAILED'
  | 'IMAGE_EXTRACT_FAILED'
  | 'IMAGE_BUILD_FAILED'
  | 'ENGINE_UNKNOWN'
  | 'ENGINE_DOWNGRADE'
  | 'ENGINE_STAMP_INVALID'
  | 'ENGINE_NO_SNAPSHOT'
  | 'VM_RUNNING'
  | 'IMAGE_MISSING'
  | 'DISK_FAILED'
  | 'SOCKET_IN_USE'
  | 'SOCKET_PATH_TOO_LONG'
  | 'DAEMON_UNREACHABLE'
  | 'DAEMON_START_FAILED'
  | 'DAEMON_LOCKED'
  | 'VM_NOT_RUNNING'
  | 'VM_BUSY'
  | 'VM_START_TIMEOUT'
  | 'VM_SILENT_BOOT'
  | 'VM_START_FAILED'
  | 'VM_STOP_FORCED'
  /** The host lacks what the namespace backend needs (root, namespaces, squashfs, loop, tun). */
  | 'NAMESPACE_UNAVAILABLE'
  /** The namespace launcher failed (its messages are in the console log). */
  | 'NAMESPACE_FAILED'
  /** The namespace's PID 1 ended while it was running. */
  | 'NAMESPACE_EXITED'
  /** A request the namespace backend refuses because it would reach the host's kernel. */
  | 'NAMESPACE_REFUSED'
  | 'AGENT_UNREACHABLE'
  /** The guest agent answered a request with an error of its own (its code is in details.guestCode). */
  | 'AGENT_ERROR'
  | 'ENGINE_FAILED'
  | 'MUX_PROTOCOL'
  | 'MUX_CLOSED'
  | 'MUX_OPEN_FAILED'
  | 'MUX_RESET'
  | 'EXEC_FAILED'
  | 'ABORTED';

export interface BerthErrorOptions {
  /** What the user should do next. Shown under the message. */
  hint?: string;
  /** The error this one wraps. */
  cause?: unknown;
  /** Extra structured context (paths, exit codes, log tails). Must not contain secrets. */
  details?: Record<string, unknown>;
}

export class BerthError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: BerthErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BerthError';
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  toJSON(): SerializedError {
    const out: SerializedError = { code: this.code, message: this.message };
    if (this.hint !== undefined) out.hint = this.hint;
    if (this.details !== undefined) out.details = this.details;
    const cause = describeCause(this.cause);
    if (cause !== undefined) out.cause = cause;
    return out;
  }
}

/** The wire form of an error (daemon API, `--json` output). */
export interface SerializedError {
  code: ErrorCode;
  message: string;
  hint?: string;
  details?: Record<string, unknown>;
  cause?: string;
}

/** Turns anything thrown into a BerthError, keeping BerthErrors as they are. */
export function toBerthError(err: unknown, fallbackCode: ErrorCode = 'INTERNAL'): BerthError {
  if (err instanceof BerthError) return err;
  if (err instanceof Error) return new BerthError(fallbackCode, err.message, { cause: err });
  return new BerthError(fallbackCode, String(err));
}

/** Rebuilds a BerthError from its wire form (for clients of the daemon API). */
export function fromSerialized(s: SerializedError): BerthError {
  const opts: BerthErrorOptions = {};
  if (s.hint !== undefined) opts.hint = s.hint;
  if (s.details !== undefined) opts.details = s.details;
  if (s.cause !== undefined) opts.cause = new Error(s.cause);
  return new BerthError(s.code, s.message, opts);
}

function describeCause(cause: unknown): string | undefined {
  if (cause === undefined || cause === null) return undefined;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code}: ${cause.message}` : cause.message;
  }
  return String(cause);
}

/** The errno code of a Node system error, if it is one. */
export function errnoCode(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}
