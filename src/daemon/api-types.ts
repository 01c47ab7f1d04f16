import type { SerializedError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';

/**
 * Types of the daemon API (HTTP/1.1 over $BERTH_HOME/run/daemon.sock). The CLI, tests and future
 * clients (dashboard) use only this API. Versioned by path prefix (/v1).
 *
 *   GET  /v1/status            → StatusReport
 *   POST /v1/start             → NDJSON stream of ProgressEvent, then one ResultLine
 *   POST /v1/stop              → same; the daemon exits after a successful stop
 *   POST /v1/restart           → same
 *   GET  /v1/ports             → PortsReport
 *   GET  /v1/network           → NetworkReport
 *   GET  /v1/exec (Upgrade: berth-exec, header X-Berth-Exec: base64 JSON ExecRequest)
 *                              → 101, then the exec sub-protocol (docs/control.md)
 */

export type VmState = 'stopped' | 'starting' | 'running' | 'stopping' | 'failed';

export interface PhaseTiming {
  id: string;
  title: string;
  ms: number;
  detail?: string;
}

export interface StatusReport {
  state: VmState;
  /** unix:// URL of the Docker API socket (valid while running). */
  dockerHost: string;
  /** Where the guest runs: "vm" or "namespace" (docs/backends.md); null before the first start. */
  backend: string | null;
  /** How the guest's CPU runs: kvm, hvf, whpx or tcg for the VM backend; native in namespaces. */
  accelerator: string | null;
  cpus: number;
  memoryMiB: number;
  diskGiB: number;
  /** Short image id: the first 12 hex digits of the image key. */
  imageVersion: string | null;
  image: Record<string, unknown> | null;
  engine: { state: string; detail?: string } | null;
  /** The engine version pack the VM booted (`berth engine list`). */
  enginePack: { id: string; title: string; dockerVersion: string; key: string } | null;
  /** The engine's docker CLI plugins offered to the host's docker CLI at the last start (docs/engine-packs.md). */
  cliPlugins: Array<{ name: string; state: 'linked' | 'user' | 'system'; path: string }> | null;
  qemuPid: number | null;
  daemonPid: number | null;
  startedAt: string | null;
  uptimeSec: number | null;
  warnings: string[];
  failure: SerializedError | null;
  lastStart: { totalMs: number; phases: PhaseTiming[] } | null;
  /** Guest-side boot marks (seconds of guest uptime), from the agent. */
  guestBoot: Record<string, number> | null;
  /** The VM's network while it runs (docs/network.md). */
  network: NetworkStatus | null;
  /**
   * The Docker API socket while it runs: `degraded` (with the reason) while connections are
   * turned away or streams to the engine cannot be opened; the open client connections; the
   * control channel's streams on the host's side and, if the agent answered, on the guest's.
   */
  api: { state: 'ok' | 'degraded'; reason?: string; connections: number; streams: { host: number; guest: number | null } } | null;
  home: string;
  logs: { daemon: string; vm: string; agent: string; engine: string };
}

export type ResultLine =
  | { type: 'result'; ok: true; status: StatusReport; message?: string }
  | { type: 'result'; ok: false; error: SerializedError; status?: StatusReport };

export type StreamLine = ProgressEvent | ResultLine;

export interface ExecRequest {
  argv: string[];
  tty: boolean;
  env?: Record<string, string>;
  cols?: number;
  rows?: number;
  cwd?: string;
}

/** One published port (`berth ports`). */
export interface PortReport {
  proto: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
  /** Where the connection goes inside the VM: the container's address and port. */
  guestIp: string;
  guestPort: number;
  containerId: string;
  containerName: string;
  state: 'pending' | 'listening' | 'failed';
  /** Why it failed (e.g. the host port is taken), when it did. */
  error?: string;
}

export interface PortsReport {
  /** "berth" (the translator publishes ports), "qemu-user" (no publishing) or "none" (not running). */
  backend: string;
  forwards: PortReport[];
}

export interface NetworkStatus {
  /** "berth" (the translator) or "qemu-user". */
  backend: string;
  subnet: string | null;
  /** The VM's address, and the host's as the VM sees it (host.docker.internal). */
  vmAddress: string;
  hostAlias: string;
  mtu: number | null;
  /** The translator is connected to the VM's network card. */
  linkUp: boolean | null;
  /** Times the translator was restarted after dying, and why it last died. */
  translatorRestarts: number;
  lastFailure: string | null;
}

/** `berth network`: the status plus the translator's counters. */
export interface NetworkReport {
  network: NetworkStatus | null;
  /** The translator's counters (flows, frames, drops by reason), if it answered. */
  stats: Record<string, unknown> | null;
}
