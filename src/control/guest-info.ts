/**
 * What the agent tells the host about itself (HELLO info) and about the engine (events), and the
 * host-side parsers for both. The guest is untrusted: the parsers accept only the expected shapes,
 * cap string lengths, and drop everything else, so a hostile agent can at worst report nonsense
 * state, never inject fields or huge values into the daemon.
 */
export type EngineStateName = 'starting' | 'ready' | 'failed' | 'stopping' | 'stopped';

export interface EngineReport {
  state: EngineStateName;
  detail?: string;
  readyAfterMs?: number;
  restarts?: number;
}

export interface GuestInfo {
  bootId: string;
  agentVersion: string;
  imageKey: string;
  kernel: string;
  /** Guest uptime (seconds) at each boot mark: initramfs, modules, root, stage2, data, ... */
  bootTimes: Record<string, number>;
  /** Milliseconds from the agent process starting to its HELLO. */
  agentStartMs: number;
  engine: EngineReport;
}

const ENGINE_STATES: readonly string[] = ['starting', 'ready', 'failed', 'stopping', 'stopped'];
const MAX_DETAIL = 8192;

function str(v: unknown, max = 256): string {
  return typeof v === 'string' ? v.slice(0, max) : '';
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

export function parseEngineReport(v: unknown): EngineReport {
  const o = (v && typeof v === 'object' ? v : {}) as Record<string, unknown>;
  const state = ENGINE_STATES.includes(o.state as string) ? (o.state as EngineStateName) : 'starting';
  const out: EngineReport = { state };
  if (typeof o.detail === 'string') out.detail = o.detail.slice(0, MAX_DETAIL);
  const r = num(o.readyAfterMs);
  if (r !== undefined) out.readyAfterMs = r;
  const n = num(o.restarts);
  if (n !== undefined) out.restarts = n;
  return out;
}

/** Boot marks: at most 32, names of 1-32 word characters, dots or dashes, finite times; the rest is dropped. */
export function parseBootTimes(v: unknown): Record<string, number> {
  const bootTimes: Record<string, number> = {};
  if (v && typeof v === 'object') {
    for (const [k, t] of Object.entries(v as Record<string, unknown>).slice(0, 32)) {
      const n = num(t);
      if (n !== undefined && /^[\w.-]{1,32}$/.test(k)) bootTimes[k] = n;
    }
  }
  return bootTimes;
}

export function parseGuestInfo(v: unknown): GuestInfo {
  const o = (v && typeof v === 'object' ? v : {}) as Record<string, unknown>;
  return {
    bootId: str(o.bootId, 64),
    agentVersion: str(o.agentVersion, 64),
    imageKey: str(o.imageKey, 128),
    kernel: str(o.kernel, 128),
    bootTimes: parseBootTimes(o.bootTimes),
    agentStartMs: num(o.agentStartMs) ?? 0,
    engine: parseEngineReport(o.engine),
  };
}

/** One JSON line from the `events` stream; undefined if it is not a well-formed engine event. */
export function parseEngineEvent(line: string): EngineReport | undefined {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    if (o.type !== 'engine') return undefined;
    return parseEngineReport(o);
  } catch {
    return undefined;
  }
}
