/**
 * Linux errno values for Rlerror (9P2000.L carries Linux numbers whatever the host is). Node
 * reports host errors by name (`err.code`), so errors are translated by name, which also covers
 * hosts whose numbers differ (macOS ENOTEMPTY is 66, Linux 39: QEMU's errno_to_dotl does the same).
 */
export const E = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EOVERFLOW: 75,
  EILSEQ: 84,
  EOPNOTSUPP: 95,
  ESTALE: 116,
  EDQUOT: 122,
} as const;

const BY_NAME: Record<string, number> = { ...E, ENOTSUP: E.EOPNOTSUPP, EWOULDBLOCK: E.EAGAIN, ENOATTR: E.ENODATA, EDEADLK: 35 };

/** A failure that becomes Rlerror with `errno`. */
export class P9Error extends Error {
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(message ?? `errno ${errno}`);
  }
}

/** The Linux errno for an error thrown by a host fs call (EIO when it has no known code). */
export function errnoOf(err: unknown): number {
  if (err instanceof P9Error) return err.errno;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return (code && BY_NAME[code]) || E.EIO;
}
