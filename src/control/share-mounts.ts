/**
 * Shared by the guest agent and the daemon: which shared folders the guest could not mount
 * (docs/files.md "Transport"). The guest's mount-shares lists them in SHARE_FAILURES_FILE, one
 * "PATH<TAB>REASON" line each; the agent reports them (fs.status, fs.remount) and the daemon
 * warns and refuses bind mounts into them.
 */

export interface ShareFailure {
  /** The share's path (the same on the host and in the guest). */
  path: string;
  /** Why the mount failed, in mount-shares' words. */
  reason: string;
}

export const SHARE_FAILURES_FILE = '/run/berth/share-failures';

/** Bounds for what the host accepts from the guest, which is untrusted. */
const MAX_FAILURES = 64;
const MAX_PATH = 4096;
const MAX_REASON = 512;

function isShareFailure(v: unknown): v is ShareFailure {
  if (!v || typeof v !== 'object') return false;
  const o = v as Record<string, unknown>;
  return typeof o.path === 'string' && o.path.startsWith('/') && o.path.length <= MAX_PATH && !o.path.includes('\0') && typeof o.reason === 'string';
}

/** The guest side: the lines of SHARE_FAILURES_FILE. */
export function parseShareFailuresFile(text: string): ShareFailure[] {
  const out: ShareFailure[] = [];
  for (const line of text.split('\n')) {
    const tab = line.indexOf('\t');
    if (tab <= 0) continue;
    out.push({ path: line.slice(0, tab), reason: line.slice(tab + 1) });
  }
  return out;
}

/**
 * The host side: `failures` of an agent reply. Anything not shaped like a failure is dropped,
 * reasons are cut to MAX_REASON characters, and at most MAX_FAILURES are kept.
 */
export function parseShareFailures(reply: unknown): ShareFailure[] {
  const list = reply && typeof reply === 'object' ? (reply as { failures?: unknown }).failures : undefined;
  if (!Array.isArray(list)) return [];
  return list
    .filter(isShareFailure)
    .slice(0, MAX_FAILURES)
    .map((f) => ({ path: f.path, reason: f.reason.slice(0, MAX_REASON) || 'no reason given' }));
}
