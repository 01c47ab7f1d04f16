import { BerthError, type ErrorCode } from '../util/errors.js';
import { ACT_OPS, REPLAYED_OPS, isActuatorUid, type ActOp, type ActRequest } from './actuator.js';
import { parseBootTimes, parseEngineReport, type EngineReport } from './guest-info.js';
import { parseShareFailures, type ShareFailure } from './share-mounts.js';

/**
 * The guest agent's RPC methods (docs/control.md "RPC"), shared by the agent and the daemon: one
 * table with, for each method, the parser of its params and the parser of its result.
 *
 * - `params(raw)` runs in the agent on what the host sent (untrusted there): it returns the typed
 *   params or throws a BerthError `USAGE` naming the method and the field.
 * - `result(raw)` runs in the daemon on what the agent answered (the guest is untrusted): it
 *   returns the typed result, bounded, or throws a BerthError `MUX_PROTOCOL` naming the method and
 *   the field.
 *
 * Both accept what the other side's current and earlier versions send; a field one side does not
 * know is ignored. `parseAgentError` is the rule for the agent's error answers.
 */

/** At most this many paths per request (fs.pin, fs.verify, fs.unpin) and per answer. */
export const MAX_PATHS = 256;
/** Paths are shorter than this (Linux's PATH_MAX). */
const MAX_PATH_LEN = 4096;
/** Timeouts the host may ask for, in milliseconds: (0, MAX_TIMEOUT_MS]; others get the default. */
const MAX_TIMEOUT_MS = 600_000;
/** Characters kept of an agent's error message. */
export const MAX_AGENT_MESSAGE = 1024;

// ---------------------------------------------------------------------------------------------
// Params and results

export interface PathsParams {
  /** Absolute guest paths: at most MAX_PATHS, each shorter than 4096 characters, no NUL. */
  paths: string[];
}

export interface FsPinParams extends PathsParams {
  /** Drop the VM's clean caches first when a folder not pinned yet is in a cached share. */
  dropCaches?: boolean;
}

export interface FsPinResult {
  /** Per path asked for: how many folders and files are held open under it. */
  pinned: Record<string, number>;
  /** Folders and files the agent holds open in all. */
  total: number;
}

export interface FsRemountParams {
  /** Share id → single-use ticket for this remount. */
  tickets: Record<string, string>;
}

export interface ShareFailuresResult {
  /** The shares that are not mounted (at most 64, reasons cut to 512 characters). */
  failures: ShareFailure[];
}

export interface TimeoutParams {
  /** How long the agent waits, in ms; one out of (0, 600000] means the method's default. */
  timeoutMs: number;
}

export type VerifyKind = 'dir' | 'file' | 'other' | 'symlink' | 'missing';
const VERIFY_KINDS: readonly VerifyKind[] = ['dir', 'file', 'other', 'symlink', 'missing'];

function isVerifyKind(v: unknown): v is VerifyKind {
  return VERIFY_KINDS.some((k) => k === v);
}

export interface VerifyResult {
  path: string;
  /** What the VM resolves `path` to (the link's target for a dangling link), or null if missing. */
  resolved: string | null;
  kind: VerifyKind;
}

export interface FsVerifyResult {
  results: VerifyResult[];
}

export interface PinCountResult {
  /** Folders and files the agent holds open in all. */
  total: number;
}

/** Params or result with nothing in them. */
export type Empty = Record<string, never>;

export interface ByteCounts {
  totalBytes: number;
  freeBytes: number;
}

export interface SystemInfo {
  bootId: string;
  kernel: string;
  uptimeSec: number;
  memory: ByteCounts;
  loadavg: number[];
  /** Absent when the data disk is not mounted. */
  dataDisk?: ByteCounts;
  bootTimes: Record<string, number>;
  agentVersion: string;
  imageKey: string;
  engine: EngineReport;
  /** Streams open on the agent's side of the control channel. */
  streams: number;
}

export interface ShutdownParams {
  /** How long the engine gets to stop before it is killed, in ms (default 20 s). */
  engineTimeoutMs: number;
}

export interface ShutdownResult {
  /** The engine had to be killed. */
  engineForced?: boolean;
  /** The data disk was unmounted (false: remounted read-only instead). */
  unmounted?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Field checks

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fieldsOf(v: unknown): Obj {
  return isObj(v) ? v : {};
}

export function isAbsPath(v: unknown): v is string {
  return typeof v === 'string' && v.startsWith('/') && v.length < MAX_PATH_LEN && !v.includes('\0');
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function usage(method: string, what: string): BerthError {
  return new BerthError('USAGE', `${method}: ${what}.`);
}

function malformed(method: string, field: string, what: string): BerthError {
  return new BerthError('MUX_PROTOCOL', `The guest agent's answer to ${method} is malformed: ${field} ${what}.`);
}

// Params (the agent side)

function paths(method: string, p: unknown): string[] {
  const list = fieldsOf(p).paths;
  if (!Array.isArray(list) || !list.every(isAbsPath) || list.length > MAX_PATHS) {
    throw usage(method, `paths must be an array of at most ${MAX_PATHS} absolute paths, each shorter than ${MAX_PATH_LEN} characters and without NUL`);
  }
  return [...list];
}

function timeout(p: unknown, key: string, dflt: number): number {
  const v = fieldsOf(p)[key];
  return typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= MAX_TIMEOUT_MS ? v : dflt;
}

function pinParams(p: unknown): FsPinParams {
  return { paths: paths('fs.pin', p), dropCaches: fieldsOf(p).dropCaches === true };
}

function remountParams(p: unknown): FsRemountParams {
  const tickets = fieldsOf(p).tickets;
  if (!isObj(tickets) || !Object.values(tickets).every((t) => typeof t === 'string')) {
    throw usage('fs.remount', 'tickets must be an object of share id → ticket string');
  }
  return { tickets: Object.fromEntries(Object.entries(tickets).map(([id, t]) => [id, String(t)])) };
}

function isActOp(v: unknown): v is ActOp {
  return ACT_OPS.some((op) => op === v);
}

function actParams(p: unknown): ActRequest {
  const o = fieldsOf(p);
  const op = o.op;
  if (!isActOp(op)) throw usage('fs.act', `op must be one of ${ACT_OPS.join(', ')}`);
  const replayed = REPLAYED_OPS.includes(op);
  if (replayed ? !isActuatorUid(o.uid) : o.uid !== undefined && !isActuatorUid(o.uid)) {
    throw usage('fs.act', `uid must be an actuator uid${replayed ? ` (${op} needs one)` : ''}`);
  }
  if (!isAbsPath(o.path)) throw usage('fs.act', 'path must be an absolute path shorter than 4096 characters without NUL');
  if (o.to !== undefined && !isAbsPath(o.to)) throw usage('fs.act', 'to must be an absolute path shorter than 4096 characters without NUL');
  if (o.size !== undefined && !isCount(o.size)) throw usage('fs.act', 'size must be a whole number of bytes');
  return {
    op,
    ...(isActuatorUid(o.uid) ? { uid: o.uid } : {}),
    path: o.path,
    ...(isAbsPath(o.to) ? { to: o.to } : {}),
    ...(isCount(o.size) ? { size: o.size } : {}),
    ...(o.cached === true ? { cached: true } : {}),
  };
}

// Results (the host side)

function answer(method: string, raw: unknown): Obj {
  if (!isObj(raw)) throw malformed(method, 'the result', 'is not an object');
  return raw;
}

function count(method: string, o: Obj, field: string): number {
  const v = o[field];
  if (!isCount(v)) throw malformed(method, field, 'is not a whole number ≥ 0');
  return v;
}

function finite(method: string, o: Obj, field: string): number {
  const v = o[field];
  if (!isFiniteNumber(v)) throw malformed(method, field, 'is not a finite number');
  return v;
}

function text(method: string, o: Obj, field: string, max: number): string {
  const v = o[field];
  if (typeof v !== 'string') throw malformed(method, field, 'is not a string');
  return v.slice(0, max);
}

function bytes(method: string, v: unknown, field: string): ByteCounts {
  if (!isObj(v)) throw malformed(method, field, 'is not an object');
  const total = v.totalBytes;
  const free = v.freeBytes;
  if (!isFiniteNumber(total) || total < 0) throw malformed(method, `${field}.totalBytes`, 'is not a number ≥ 0');
  if (!isFiniteNumber(free) || free < 0) throw malformed(method, `${field}.freeBytes`, 'is not a number ≥ 0');
  return { totalBytes: total, freeBytes: free };
}

function pinResult(raw: unknown): FsPinResult {
  const o = answer('fs.pin', raw);
  if (!isObj(o.pinned)) throw malformed('fs.pin', 'pinned', 'is not an object');
  const entries = Object.entries(o.pinned);
  if (entries.length > MAX_PATHS) throw malformed('fs.pin', 'pinned', `has more than ${MAX_PATHS} paths`);
  const pinned = entries.map(([p, n]): [string, number] => {
    if (!isAbsPath(p)) throw malformed('fs.pin', 'pinned', 'has a key that is not an absolute path');
    if (!isCount(n)) throw malformed('fs.pin', `pinned[${JSON.stringify(p.slice(0, 64))}]`, 'is not a whole number ≥ 0');
    return [p, n];
  });
  return { pinned: Object.fromEntries(pinned), total: count('fs.pin', o, 'total') };
}

function failuresResult(method: string): (raw: unknown) => ShareFailuresResult {
  return (raw) => {
    const o = answer(method, raw);
    if (!Array.isArray(o.failures)) throw malformed(method, 'failures', 'is not an array');
    return { failures: parseShareFailures(o) };
  };
}

function verifyResult(raw: unknown): FsVerifyResult {
  const o = answer('fs.verify', raw);
  if (!Array.isArray(o.results)) throw malformed('fs.verify', 'results', 'is not an array');
  if (o.results.length > MAX_PATHS) throw malformed('fs.verify', 'results', `has more than ${MAX_PATHS} entries`);
  const results = o.results.map((r: unknown, i): VerifyResult => {
    const field = `results[${i}]`;
    if (!isObj(r)) throw malformed('fs.verify', field, 'is not an object');
    if (!isAbsPath(r.path)) throw malformed('fs.verify', `${field}.path`, 'is not an absolute path');
    const resolved = r.resolved;
    if (resolved !== null && (typeof resolved !== 'string' || resolved.length >= MAX_PATH_LEN || resolved.includes('\0'))) {
      throw malformed('fs.verify', `${field}.resolved`, 'is neither null nor a path');
    }
    if (!isVerifyKind(r.kind)) throw malformed('fs.verify', `${field}.kind`, `is not one of ${VERIFY_KINDS.join(', ')}`);
    return { path: r.path, resolved, kind: r.kind };
  });
  return { results };
}

function pinCountResult(method: string): (raw: unknown) => PinCountResult {
  return (raw) => ({ total: count(method, answer(method, raw), 'total') });
}

function engineResult(method: string): (raw: unknown) => EngineReport {
  return (raw) => parseEngineReport(answer(method, raw));
}

function systemInfoResult(raw: unknown): SystemInfo {
  const m = 'system.info';
  const o = answer(m, raw);
  const loadavg = o.loadavg;
  if (!Array.isArray(loadavg) || loadavg.length > 3 || !loadavg.every((n): n is number => isFiniteNumber(n) && n >= 0)) {
    throw malformed(m, 'loadavg', 'is not a list of at most 3 numbers ≥ 0');
  }
  return {
    bootId: text(m, o, 'bootId', 64),
    kernel: text(m, o, 'kernel', 128),
    uptimeSec: finite(m, o, 'uptimeSec'),
    memory: bytes(m, o.memory, 'memory'),
    loadavg: [...loadavg],
    ...(o.dataDisk !== undefined ? { dataDisk: bytes(m, o.dataDisk, 'dataDisk') } : {}),
    bootTimes: parseBootTimes(o.bootTimes),
    agentVersion: text(m, o, 'agentVersion', 64),
    imageKey: text(m, o, 'imageKey', 128),
    engine: parseEngineReport(o.engine),
    streams: count(m, o, 'streams'),
  };
}

function shutdownResult(raw: unknown): ShutdownResult {
  const o = answer('system.shutdown', raw);
  const out: ShutdownResult = {};
  for (const field of ['engineForced', 'unmounted'] as const) {
    const v = o[field];
    if (v === undefined) continue;
    if (typeof v !== 'boolean') throw malformed('system.shutdown', field, 'is not a boolean');
    out[field] = v;
  }
  return out;
}

function empty(): Empty {
  return {};
}

function emptyResult(method: string): (raw: unknown) => Empty {
  return (raw) => {
    answer(method, raw);
    return {};
  };
}

// ---------------------------------------------------------------------------------------------
// The table

const METHODS = {
  /** Pins shared folders before a container that mounts them starts (docs/files.md "Change events"). */
  'fs.pin': { params: pinParams, result: pinResult },
  /** Mounts every share again with fresh tickets after the host's file server restarted. */
  'fs.remount': { params: remountParams, result: failuresResult('fs.remount') },
  /** The shares the boot could not mount, once the boot's mounts are over (default wait 30 s). */
  'fs.status': { params: (p: unknown): TimeoutParams => ({ timeoutMs: timeout(p, 'timeoutMs', 30_000) }), result: failuresResult('fs.status') },
  /** What the VM resolves bind sources to, just before a container starts (docs/docker-proxy.md). */
  'fs.verify': { params: (p: unknown): PathsParams => ({ paths: paths('fs.verify', p) }), result: verifyResult },
  /** Drops one pin request per path. */
  'fs.unpin': { params: (p: unknown): PathsParams => ({ paths: paths('fs.unpin', p) }), result: pinCountResult('fs.unpin') },
  /** Replays one host change in the guest, or keeps the pins true (control/actuator.ts). */
  'fs.act': { params: actParams, result: emptyResult('fs.act') },
  'engine.status': { params: empty, result: engineResult('engine.status') },
  /** Stops and starts the engine (default stop timeout 30 s); answers the state once restarting. */
  'engine.restart': { params: (p: unknown): TimeoutParams => ({ timeoutMs: timeout(p, 'timeoutMs', 30_000) }), result: engineResult('engine.restart') },
  'system.info': { params: empty, result: systemInfoResult },
  /** Stops the engine, unmounts the data disk, answers, then powers the VM off. */
  'system.shutdown': { params: (p: unknown): ShutdownParams => ({ engineTimeoutMs: timeout(p, 'engineTimeoutMs', 20_000) }), result: shutdownResult },
};

export type AgentMethod = keyof typeof METHODS;
export type ParamsOf<M extends AgentMethod> = ReturnType<(typeof METHODS)[M]['params']>;
export type ResultOf<M extends AgentMethod> = ReturnType<(typeof METHODS)[M]['result']>;

export interface MethodSpec<P, R> {
  /** Agent side: validates what the host sent. Throws BerthError USAGE. */
  readonly params: (raw: unknown) => P;
  /** Host side: validates what the agent answered. Throws BerthError MUX_PROTOCOL. */
  readonly result: (raw: unknown) => R;
}

/** The table, typed so that `AGENT_API[m]` for a generic `m: M` has M's parsers. */
export const AGENT_API: { readonly [M in AgentMethod]: MethodSpec<ParamsOf<M>, ResultOf<M>> } = METHODS;

export function isAgentMethod(v: unknown): v is AgentMethod {
  return typeof v === 'string' && Object.prototype.hasOwnProperty.call(METHODS, v);
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * The codes an agent's error answer may carry into the host as they are: USAGE (the agent refused
 * the params) and ENGINE_FAILED. Every other code, and an answer without one, becomes AGENT_ERROR.
 */
const AGENT_CODES: readonly ErrorCode[] = ['USAGE', 'ENGINE_FAILED'];

/** C0 and C1 controls, DEL, and the invisible formatting and bidirectional controls. */
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]+/g;

/** Guest text made safe to show: controls and runs of spaces become one space, at most `max` characters. */
export function guestText(v: unknown, max: number): string {
  if (typeof v !== 'string') return '';
  let s = v.slice(0, max * 2).replace(CONTROLS, ' ').replace(/ {2,}/g, ' ').trim();
  if (s.length > max) {
    s = s.slice(0, max - 1);
    if (/[\ud800-\udbff]$/.test(s)) s = s.slice(0, -1);
    s += '…';
  }
  return s;
}

/**
 * The host's error for an agent's error answer `{code, message, hint?}` to `method`: the code
 * through the allow-list above, the message as bounded text (guest's code in details.guestCode),
 * and the host's own hint; the guest's hint is not shown.
 */
export function parseAgentError(method: AgentMethod | string, raw: unknown): BerthError {
  const e = fieldsOf(raw);
  const guestCode = typeof e.code === 'string' ? e.code : '';
  const code: ErrorCode = AGENT_CODES.find((c) => c === guestCode) ?? 'AGENT_ERROR';
  const message = guestText(e.message, MAX_AGENT_MESSAGE) || 'unknown error';
  return new BerthError(code, `The guest agent failed ${guestText(method, 64)}: ${message}`, {
    hint: "`berth logs agent` shows the guest agent's messages.",
    details: { guestCode: guestText(guestCode, 64) },
  });
}
