import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where berth keeps its state. One berth home = one daemon = one VM.
 *
 * BERTH_HOME (default ~/.berth) holds settings, sockets, logs and the data disk.
 * BERTH_CACHE (default $XDG_CACHE_HOME/berth or ~/.cache/berth) holds downloaded packages and built
 * images; it is shared by every berth home of the user, so tests with their own homes don't rebuild.
 */
export interface BerthPaths {
  home: string;
  cache: string;
  /** Verdicts of the accelerator probe, per host boot (src/vm/accel-verdicts.ts). */
  accelVerdicts: string;
  settings: string;
  runDir: string;
  daemonSocket: string;
  defaultDockerSocket: string;
  qmpSocket: string;
  controlSocket: string;
  /** QEMU's -netdev stream socket; the network translator connects to it. */
  netSocket: string;
  /** The 9P file server's socket (the translator hands it the guest's gateway:564 connections). */
  p9Socket: string;
  /** The share list and token for the guest, passed to QEMU as a fw_cfg file. */
  sharesConfig: string;
  qemuPidFile: string;
  daemonPidFile: string;
  vmStateFile: string;
  logsDir: string;
  daemonLog: string;
  vmLog: string;
  qemuLog: string;
  agentLog: string;
  engineLog: string;
  disksDir: string;
  dataDisk: string;
  /** Which engine last wrote the data disk, and the snapshot taken before the last upgrade (docs/engine-packs.md). */
  engineStamp: string;
  /** Copies of the running pack's docker CLI plugins, linked from the user's docker config. */
  cliPluginsDir: string;
}

export function resolvePaths(env: NodeJS.ProcessEnv = process.env): BerthPaths {
  const home = path.resolve(env.BERTH_HOME || path.join(os.homedir(), '.berth'));
  const cache = path.resolve(
    env.BERTH_CACHE || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'berth'),
  );
  const runDir = path.join(home, 'run');
  const logsDir = path.join(home, 'logs');
  const disksDir = path.join(home, 'disks');
  return {
    home,
    cache,
    accelVerdicts: path.join(cache, 'accel-verdicts.json'),
    settings: path.join(home, 'settings.json'),
    runDir,
    daemonSocket: path.join(runDir, 'daemon.sock'),
    defaultDockerSocket: path.join(runDir, 'docker.sock'),
    qmpSocket: path.join(runDir, 'qmp.sock'),
    controlSocket: path.join(runDir, 'control.sock'),
    netSocket: path.join(runDir, 'net.sock'),
    p9Socket: path.join(runDir, '9p.sock'),
    sharesConfig: path.join(runDir, 'shares.cfg'),
    qemuPidFile: path.join(runDir, 'qemu.pid'),
    daemonPidFile: path.join(runDir, 'daemon.pid'),
    vmStateFile: path.join(runDir, 'vm.json'),
    logsDir,
    daemonLog: path.join(logsDir, 'daemon.log'),
    vmLog: path.join(logsDir, 'vm.log'),
    qemuLog: path.join(logsDir, 'qemu.log'),
    agentLog: path.join(logsDir, 'agent.log'),
    engineLog: path.join(logsDir, 'engine.log'),
    disksDir,
    dataDisk: path.join(disksDir, 'data.qcow2'),
    engineStamp: path.join(disksDir, 'engine.json'),
    cliPluginsDir: path.join(home, 'cli-plugins'),
  };
}

/** The checkout (or installed package) root: the folder holding package.json, guest/ and dist/. */
export function packageRoot(): string {
  // This file is dist/src/settings/paths.js at run time.
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}
