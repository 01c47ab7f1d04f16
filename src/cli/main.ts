import fs from 'node:fs';
import { resolvePaths, type BerthPaths } from '../settings/paths.js';
import { readSettings, setSetting, SETTING_KEYS, isSettingKey } from '../settings/settings.js';
import { BerthError, toBerthError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import { DaemonClient } from './daemon-client.js';
import { progressRenderer, renderError, renderStatus, formatMs, type Out } from './render.js';
import { parseArgs, type ParsedArgs } from './args.js';
import { runShell } from './shell.js';
import { showLogs, LOG_NAMES } from './logs.js';
import { runVersion } from './version.js';
import { runImageBuild } from './image.js';
import { showPorts } from './ports.js';
import { showNetwork } from './network.js';
import { isOurQemu, readPid } from '../vm/qemu-process.js';
import type { StatusReport } from '../daemon/api-types.js';

/**
 * berth's command-line interface. Exit codes: 0 success, 1 failure, 2 usage error.
 * With --json, a command prints one JSON document (or JSON lines for progress) and nothing else
 * on stdout; errors are printed as {"error": {...}} with the same exit codes.
 */
const USAGE = `berth: Linux containers through one lightweight VM

Usage: berth <command> [options]

Commands:
  start [--switch-context]   Start the VM and the Docker engine (builds the guest image if needed)
  stop                       Stop the engine cleanly and power the VM off
  restart                    stop, then start
  status                     Show the state (--json: state, dockerHost, accelerator, cpus, memoryMiB, ...)
  ports                      Published ports: host address, container, state (--json)
  network                    The VM's network and the translator's counters (--json)
  shell [-t|-T] [-- CMD...]  Run CMD (or an interactive shell) inside the VM; its exit code is passed back
  logs [${LOG_NAMES.join('|')}] [-f] [-n N]
                             Show a log (default: engine); -f follows it
  version                    Versions of berth, QEMU and the guest image's parts
  image build [--force]      Build the guest image now (start does this when needed)
  settings [get [KEY]]       Show settings
  settings set KEY VALUE     Change a setting (takes effect at the next start); keys: ${SETTING_KEYS.join(', ')}

Options:
  --json                     Machine-readable output
  -h, --help                 This help

Environment:
  BERTH_HOME                 State directory (default ~/.berth): settings, sockets, logs, data disk
  BERTH_CACHE                Package and image cache (default ~/.cache/berth)
  BERTH_GUEST_DIR            Build the guest image from this folder instead of guest/ (manifest + scripts)
`;

export async function main(argv: string[]): Promise<number> {
  let args: ParsedArgs;
  try {
    args = parseArgs(argv);
  } catch (err) {
    process.stderr.write(renderError(toBerthError(err, 'USAGE')));
    return 2;
  }
  const out: Out = { write: (t) => process.stdout.write(t) };
  const paths = resolvePaths();
  try {
    if (args.help || args.command === 'help' || !args.command) {
      out.write(USAGE);
      return args.command || args.help ? 0 : 2;
    }
    switch (args.command) {
      case 'start':
        return await lifecycle(paths, args, '/v1/start' + (args.flags.has('switch-context') ? '?switchContext=1' : ''), out);
      case 'stop':
        return await stop(paths, args, out);
      case 'restart':
        return await lifecycle(paths, args, '/v1/restart', out);
      case 'status':
        return await status(paths, args, out);
      case 'ports':
        return await showPorts(new DaemonClient(paths), args, out);
      case 'network':
        return await showNetwork(new DaemonClient(paths), args, out);
      case 'shell':
        return await runShell(new DaemonClient(paths), args);
      case 'logs':
        return await showLogs(paths, args, out);
      case 'version':
        return await runVersion(paths, args, out);
      case 'image':
        if (args.positional[0] !== 'build') throw new BerthError('USAGE', 'Usage: berth image build [--force] [--json]');
        return await runImageBuild(paths, args, out);
      case 'settings':
        return await settingsCommand(paths, args, out);
      default:
        throw new BerthError('USAGE', `Unknown command "${args.command}".`, { hint: 'Run `berth --help` for the list of commands.' });
    }
  } catch (err) {
    const e = toBerthError(err);
    if (args.json) process.stdout.write(JSON.stringify({ error: e.toJSON() }, null, 2) + '\n');
    else process.stderr.write(renderError(e));
    return e.code === 'USAGE' ? 2 : 1;
  }
}

async function lifecycle(paths: BerthPaths, args: ParsedArgs, route: string, out: Out): Promise<number> {
  const client = new DaemonClient(paths);
  const render = args.json ? (e: ProgressEvent) => out.write(JSON.stringify(e) + '\n') : progressRenderer(out, process.stdout.isTTY === true);
  if (!args.json) out.write(route.startsWith('/v1/restart') ? 'berth: restarting\n' : 'berth: starting\n');
  const status = await client.stream(route, render);
  if (args.json) {
    out.write(JSON.stringify({ type: 'result', ok: true, status }) + '\n');
  } else {
    // Warnings were shown as they happened (progress notes); only the summary remains.
    out.write(`berth is running${status.lastStart ? ` (started in ${formatMs(status.lastStart.totalMs)})` : ''}.\n`);
    out.write(`Docker API: ${status.dockerHost}\n`);
    out.write(`Use it with \`docker --context berth ...\` or \`export DOCKER_HOST=${status.dockerHost}\`.\n`);
  }
  return 0;
}

async function stop(paths: BerthPaths, args: ParsedArgs, out: Out): Promise<number> {
  const client = new DaemonClient(paths);
  if (!(await client.isRunning())) {
    // No daemon: a VM can still be running (daemon killed); let a daemon adopt it, then stop it.
    const pid = await readPid(paths.qemuPidFile);
    if (pid === undefined || !isOurQemu(pid, paths.home)) {
      if (args.json) out.write(JSON.stringify({ type: 'result', ok: true, status: stoppedStatus(paths) }) + '\n');
      else out.write('berth is not running; nothing to stop.\n');
      return 0;
    }
  }
  const render = args.json ? (e: ProgressEvent) => out.write(JSON.stringify(e) + '\n') : progressRenderer(out, process.stdout.isTTY === true);
  if (!args.json) out.write('berth: stopping\n');
  const status = await client.stream('/v1/stop', render);
  if (args.json) out.write(JSON.stringify({ type: 'result', ok: true, status }) + '\n');
  else {
    for (const w of status.warnings) out.write(`warning: ${w}\n`);
    out.write('berth is stopped.\n');
  }
  return 0;
}

async function status(paths: BerthPaths, args: ParsedArgs, out: Out): Promise<number> {
  const client = new DaemonClient(paths);
  let s = (await client.getIfRunning('/v1/status')) as StatusReport | undefined;
  if (s === undefined) {
    const pid = await readPid(paths.qemuPidFile);
    if (pid !== undefined && isOurQemu(pid, paths.home)) {
      // The daemon died but the VM runs: start a daemon, which re-attaches to it.
      if (!args.json) process.stderr.write('berth: the daemon was not running but the VM is; re-attaching...\n');
      await client.ensureRunning();
      s = await client.status();
    } else {
      s = stoppedStatus(paths, await readSettings(paths.settings).catch(() => undefined));
    }
  }
  out.write(args.json ? JSON.stringify(s, null, 2) + '\n' : renderStatus(s));
  return 0;
}

function stoppedStatus(paths: BerthPaths, settings?: Awaited<ReturnType<typeof readSettings>>): StatusReport {
  const dockerSocket = settings?.dockerSocket ?? paths.defaultDockerSocket;
  return {
    state: 'stopped',
    dockerHost: `unix://${dockerSocket}`,
    accelerator: null,
    cpus: settings?.cpus ?? 0,
    memoryMiB: settings?.memoryMiB ?? 0,
    diskGiB: settings?.diskGiB ?? 0,
    imageVersion: null,
    image: null,
    engine: null,
    qemuPid: null,
    daemonPid: null,
    startedAt: null,
    uptimeSec: null,
    warnings: [],
    failure: null,
    api: null,
    lastStart: null,
    guestBoot: null,
    network: null,
    home: paths.home,
    logs: { daemon: paths.daemonLog, vm: paths.vmLog, agent: paths.agentLog, engine: paths.engineLog },
  };
}

async function settingsCommand(paths: BerthPaths, args: ParsedArgs, out: Out): Promise<number> {
  const [sub = 'get', key, value] = args.positional;
  if (sub === 'set') {
    if (!key || value === undefined) throw new BerthError('USAGE', 'Usage: berth settings set KEY VALUE');
    const s = await setSetting(paths.settings, key, value);
    if (args.json) out.write(JSON.stringify(s, null, 2) + '\n');
    else out.write(`${key} = ${JSON.stringify(s[key as keyof typeof s])} (takes effect at the next \`berth start\`)\n`);
    return 0;
  }
  if (sub !== 'get') throw new BerthError('USAGE', 'Usage: berth settings [get [KEY]] | berth settings set KEY VALUE');
  const s = await readSettings(paths.settings);
  if (key !== undefined) {
    if (!isSettingKey(key)) throw new BerthError('USAGE', `Unknown setting "${key}".`, { hint: `Known settings: ${SETTING_KEYS.join(', ')}.` });
    out.write(args.json ? JSON.stringify({ [key]: s[key] }) + '\n' : `${JSON.stringify(s[key])}\n`);
    return 0;
  }
  if (args.json) out.write(JSON.stringify(s, null, 2) + '\n');
  else {
    for (const k of SETTING_KEYS) out.write(`${k.padEnd(16)} ${JSON.stringify(s[k])}\n`);
    out.write(`(file: ${paths.settings}${fs.existsSync(paths.settings) ? '' : ', not created yet: all defaults'})\n`);
  }
  return 0;
}
