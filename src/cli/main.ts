import fs from 'node:fs';
import { resolvePaths, type BerthPaths } from '../settings/paths.js';
import { readSettings, setSetting, SETTING_KEYS } from '../settings/settings.js';
import { toBerthError, type BerthError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import { DaemonClient } from './daemon-client.js';
import { progressRenderer, renderError, renderStatus, formatMs, type Out } from './render.js';
import type { CommandId, Invocation, OptionsOf } from './commands.js';
import { parseCommandLine, type ParseResult } from './parse.js';
import { runShell } from './shell.js';
import { showLogs } from './logs.js';
import { runVersion } from './version.js';
import { runImageBuild } from './image.js';
import { engineList, engineRollback, engineUse } from './engine.js';
import { dockerConfigRemove, dockerConfigShow } from './docker-config.js';
import { showPorts } from './ports.js';
import { showNetwork } from './network.js';
import { guestLeftRunning } from '../vm/running.js';
import type { StatusReport } from '../daemon/api-types.js';

/**
 * berth's command-line interface. Exit codes: 0 success, 1 failure, 2 usage error.
 * With --json, a command prints one JSON document (or JSON lines for progress) and nothing else
 * on stdout; errors are printed as {"error": {...}} with the same exit codes.
 * The commands and their options are declared in commands.ts.
 */

/** One function per command id; what it returns is the exit code. */
export type Handlers = { [K in CommandId]: (options: OptionsOf<K>) => Promise<number> };

export interface Io {
  stdout: Out;
  stderr: Out;
}

export function main(argv: string[]): Promise<number> {
  return run(argv, handlers, { stdout: { write: (t) => process.stdout.write(t) }, stderr: { write: (t) => process.stderr.write(t) } });
}

/** Parses `argv` and runs the command with the handlers `makeHandlers` returns. */
export async function run(argv: string[], makeHandlers: (out: Out) => Handlers, io: Io): Promise<number> {
  let parsed: ParseResult;
  try {
    parsed = parseCommandLine(argv);
  } catch (err) {
    report(toBerthError(err), false, io);
    return 1;
  }
  if (parsed.kind === 'print') {
    io.stdout.write(parsed.text);
    return parsed.exitCode;
  }
  if (parsed.kind === 'error') {
    report(parsed.error, parsed.json, io);
    return 2;
  }
  try {
    return await dispatch(makeHandlers(io.stdout), parsed.invocation);
  } catch (err) {
    const e = toBerthError(err);
    report(e, parsed.invocation.options.json, io);
    return e.code === 'USAGE' ? 2 : 1;
  }
}

function dispatch<K extends CommandId>(h: Handlers, invocation: Invocation<K>): Promise<number> {
  return h[invocation.id](invocation.options);
}

function report(e: BerthError, json: boolean, io: Io): void {
  if (json) io.stdout.write(JSON.stringify({ error: e.toJSON() }, null, 2) + '\n');
  else io.stderr.write(renderError(e));
}

// A new command's handler goes here (the compiler asks for one per id in commands.ts).
function handlers(out: Out): Handlers {
  const paths = resolvePaths();
  return {
    start: async (o) => {
      // --backend is remembered (the setting), so that restart, status and the engine commands
      // agree on where the guest and its data are.
      if (o.backend) await setSetting(paths.settings, 'backend', o.backend);
      return lifecycle(paths, o, `/v1/start${o.switchContext ? '?switchContext=1' : ''}`, out);
    },
    stop: (o) => stop(paths, o, out),
    restart: (o) => lifecycle(paths, o, '/v1/restart', out),
    status: (o) => status(paths, o, out),
    ports: (o) => showPorts(new DaemonClient(paths), o, out),
    network: (o) => showNetwork(new DaemonClient(paths), o, out),
    shell: (o) => runShell(new DaemonClient(paths), o),
    logs: (o) => showLogs(paths, o, out),
    version: (o) => runVersion(paths, o, out),
    'image build': (o) => runImageBuild(paths, o, out),
    'settings get': (o) => settingsGet(paths, o, out),
    'settings set': (o) => settingsSet(paths, o, out),
    'engine list': (o) => engineList(paths, o, out),
    'engine use': (o) => engineUse(paths, o, out, () => lifecycle(paths, o, '/v1/restart', out)),
    'engine rollback': (o) => engineRollback(paths, o, out),
    'docker-config show': (o) => dockerConfigShow(paths, o, out),
    'docker-config remove': (o) => dockerConfigRemove(paths, o, out),
  };
}

async function lifecycle(paths: BerthPaths, args: { json: boolean }, route: string, out: Out): Promise<number> {
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

async function stop(paths: BerthPaths, args: { json: boolean }, out: Out): Promise<number> {
  const client = new DaemonClient(paths);
  if (!(await client.isRunning())) {
    // No daemon: a VM can still be running (daemon killed); let a daemon adopt it, then stop it.
    if (!(await guestLeftRunning(paths))) {
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

async function status(paths: BerthPaths, args: { json: boolean }, out: Out): Promise<number> {
  const client = new DaemonClient(paths);
  let s = (await client.getIfRunning('/v1/status')) as StatusReport | undefined;
  if (s === undefined) {
    if (await guestLeftRunning(paths)) {
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
    backend: null,
    accelerator: null,
    cpus: settings?.cpus ?? 0,
    memoryMiB: settings?.memoryMiB ?? 0,
    diskGiB: settings?.diskGiB ?? 0,
    imageVersion: null,
    image: null,
    engine: null,
    enginePack: null,
    cliPlugins: null,
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

async function settingsSet(paths: BerthPaths, args: OptionsOf<'settings set'>, out: Out): Promise<number> {
  const { key, value } = args;
  const s = await setSetting(paths.settings, key, value);
  if (args.json) out.write(JSON.stringify(s, null, 2) + '\n');
  else out.write(`${key} = ${JSON.stringify(s[key])} (takes effect at the next \`berth start\`)\n`);
  return 0;
}

async function settingsGet(paths: BerthPaths, args: OptionsOf<'settings get'>, out: Out): Promise<number> {
  const { key } = args;
  const s = await readSettings(paths.settings);
  if (key !== undefined) {
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
