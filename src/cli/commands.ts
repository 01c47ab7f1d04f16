import type { Options, PositionalOptions } from 'yargs';
import { SETTING_KEYS, type SettingKey } from '../settings/settings.js';
import { BerthError } from '../util/errors.js';
import { LOG_NAMES, type LogsOptions } from './logs.js';
import type { ShellOptions } from './shell.js';

/**
 * berth's command table: every command, its arguments and options, and the typed options its
 * handler receives. parse.ts turns the table into a yargs parser; main.ts maps each command id to
 * its handler. The compiler checks that every id has a handler.
 *
 * To add a command: add its id and options type to CommandOptions, an entry to COMMANDS, and a
 * handler in main.ts. To add a group (`berth engine list|use|rollback`): one `group(...)` entry in
 * COMMANDS holding its `leaf(...)` subcommands, whose ids are "engine list", "engine use", ...
 */
export interface CommandOptions {
  start: { switchContext: boolean; backend: 'vm' | 'namespace' | undefined };
  stop: {};
  restart: {};
  status: {};
  ports: {};
  network: {};
  shell: ShellOptions;
  logs: LogsOptions;
  version: {};
  'image build': { force: boolean };
  'settings get': { key: SettingKey | undefined };
  'settings set': { key: SettingKey; value: string };
  'engine list': {};
  'engine use': { version: string; restart: boolean; force: boolean };
  'engine rollback': {};
  'docker-config show': {};
  'docker-config remove': {};
}

export type CommandId = keyof CommandOptions;

/** Options that every command takes. */
export interface GlobalOptions {
  /** One JSON document (or JSON lines for progress) on stdout; errors as {"error": {...}}. */
  json: boolean;
}

/** What a handler receives: its command's options plus the global ones. */
export type OptionsOf<K extends CommandId> = CommandOptions[K] & GlobalOptions;

/** A parsed command line: the command to run and its options. */
export type Invocation<K extends CommandId = CommandId> = { [P in K]: { id: P; options: OptionsOf<P> } }[K];

/** The arguments as yargs parsed them, keyed by option and positional name. */
export type RawArgs = Record<string, unknown>;

interface LeafBase<K extends CommandId> {
  /** "name" for a top-level command, "group name" for a subcommand. */
  id: K;
  describe: string;
  /** Positionals after the command name in yargs syntax: `<required>`, `[optional]`, `[many..]`. */
  args?: string;
  /** Description, type, choices and default of each positional named in `args`. */
  positionals?: Record<string, PositionalOptions>;
  options?: Record<string, Options>;
  /** Takes the words after `--` (as `raw['--']`); every other command rejects them. */
  passThrough?: boolean;
}

/** `parse` turns yargs' arguments into the handler's options; it may throw a USAGE BerthError. */
export type LeafSpec<K extends CommandId> = LeafBase<K> &
  ({} extends CommandOptions[K] ? { parse?: (raw: RawArgs) => CommandOptions[K] } : { parse: (raw: RawArgs) => CommandOptions[K] });

export type AnyLeaf = { [K in CommandId]: LeafSpec<K> }[CommandId];

export interface GroupSpec {
  group: string;
  describe: string;
  commands: AnyLeaf[];
  /** The subcommand that `berth <group>` alone runs; without one, a subcommand is required. */
  default?: CommandId;
}

export type CommandSpec = AnyLeaf | GroupSpec;

function leaf<K extends CommandId>(id: K, spec: Omit<LeafSpec<K>, 'id'>): AnyLeaf {
  return { id, ...spec } as LeafSpec<K> as AnyLeaf;
}

function group(name: string, describe: string, commands: AnyLeaf[], options: { default?: CommandId } = {}): GroupSpec {
  return { group: name, describe, commands, ...options };
}

/** The value of a boolean option. */
export function flag(raw: RawArgs, name: string): boolean {
  return raw[name] === true;
}

/** The value of a string option or positional; the last one if it was given more than once. */
export function text(raw: RawArgs, name: string): string | undefined {
  const v = raw[name];
  const last = Array.isArray(v) ? v[v.length - 1] : v;
  return last === undefined ? undefined : String(last);
}

/** The values of an array positional. */
export function words(raw: RawArgs, name: string): string[] {
  const v = raw[name];
  return Array.isArray(v) ? v.map(String) : v === undefined ? [] : [String(v)];
}

export const COMMANDS: CommandSpec[] = [
  leaf('start', {
    describe: 'Start the VM and the Docker engine (builds the guest image if needed)',
    options: {
      'switch-context': { type: 'boolean', describe: 'Make the docker CLI context `berth` the current one' },
      backend: { type: 'string', choices: ['vm', 'namespace'], requiresArg: true, describe: 'Where the guest runs, remembered as the `backend` setting: a VM (the default) or namespaces on this Linux host (root; docs/namespace.md)' },
    },
    parse: (raw) => {
      const b = text(raw, 'backend');
      return { switchContext: flag(raw, 'switch-context'), backend: b === 'vm' || b === 'namespace' ? b : undefined };
    },
  }),
  leaf('stop', { describe: 'Stop the engine cleanly and power the VM off' }),
  leaf('restart', { describe: 'stop, then start' }),
  leaf('status', { describe: 'Show the state (--json: state, dockerHost, accelerator, cpus, memoryMiB, ...)' }),
  leaf('ports', { describe: 'Published ports: host address, container, state' }),
  leaf('network', { describe: "The VM's network and the translator's counters" }),
  leaf('shell', {
    describe: 'Run a command (or an interactive shell) inside the VM; its exit code is passed back',
    args: '[command..]',
    positionals: { command: { type: 'string', describe: 'The command and its arguments; words after `--` are passed untouched' } },
    options: {
      t: { type: 'boolean', describe: 'Use a terminal even when stdin or stdout is not one' },
      T: { type: 'boolean', describe: 'Never use a terminal' },
    },
    passThrough: true,
    parse: (raw) => ({
      argv: [...words(raw, 'command'), ...words(raw, '--')],
      tty: flag(raw, 'T') ? false : flag(raw, 't') ? true : undefined,
    }),
  }),
  leaf('logs', {
    describe: 'Show a log; -f follows it',
    args: '[log]',
    positionals: {
      log: {
        type: 'string',
        choices: LOG_NAMES,
        default: 'engine',
        describe: 'vm: the serial console; agent: the guest agent; engine: containerd and dockerd; daemon: the host daemon',
      },
    },
    options: {
      f: { alias: 'follow', type: 'boolean', describe: 'Keep printing what is appended' },
      n: { alias: 'lines', type: 'string', requiresArg: true, default: '100', describe: 'How many of the last lines to show, or "all"' },
    },
    parse: (raw) => {
      const nRaw = text(raw, 'n') ?? '100';
      const lines = nRaw === 'all' ? Number.MAX_SAFE_INTEGER : Number.parseInt(nRaw, 10);
      if (!Number.isInteger(lines) || lines < 0) throw new BerthError('USAGE', `-n takes a number or "all", not "${nRaw}".`);
      return { log: text(raw, 'log') as LogsOptions['log'], lines, follow: flag(raw, 'f') };
    },
  }),
  leaf('version', { describe: "Versions of berth, QEMU and the guest image's parts" }),
  group('image', 'The guest image', [
    leaf('image build', {
      describe: 'Build the guest image now (start does this when needed)',
      options: { force: { type: 'boolean', describe: 'Build it even if a built one is cached' } },
      parse: (raw) => ({ force: flag(raw, 'force') }),
    }),
  ]),
  group(
    'settings',
    'Show or change settings (they take effect at the next start)',
    [
      leaf('settings get', {
        describe: 'Show all settings, or the value of one',
        args: '[setting]',
        positionals: { setting: { type: 'string', choices: SETTING_KEYS } },
        parse: (raw) => ({ key: text(raw, 'setting') as SettingKey | undefined }),
      }),
      leaf('settings set', {
        describe: 'Change a setting (takes effect at the next start)',
        args: '<setting> <value>',
        positionals: {
          setting: { type: 'string', choices: SETTING_KEYS },
          value: { type: 'string', describe: 'JSON for lists and objects, e.g. \'["tcp:8022:22"]\'' },
        },
        parse: (raw) => ({ key: text(raw, 'setting') as SettingKey, value: text(raw, 'value') ?? '' }),
      }),
    ],
    { default: 'settings get' },
  ),
  group(
    'engine',
    'The Docker engine version packs (docs/engine-packs.md)',
    [
      leaf('engine list', { describe: 'The engines: which is selected, built, running, and which last wrote the data disk' }),
      leaf('engine use', {
        describe: 'Choose the engine for the next start (an older one than the data disk\'s is refused)',
        args: '<version>',
        positionals: { version: { type: 'string', describe: 'An engine version from `berth engine list`, e.g. 26 or 20.10' } },
        options: {
          restart: { type: 'boolean', describe: 'Restart berth now if it runs another engine' },
          force: { type: 'boolean', describe: 'Allow an engine older than the one that last wrote the data disk, once' },
        },
        parse: (raw) => ({ version: text(raw, 'version') ?? '', restart: flag(raw, 'restart'), force: flag(raw, 'force') }),
      }),
      leaf('engine rollback', { describe: 'Restore the data disk as it was before the last engine upgrade (berth stopped)' }),
    ],
    { default: 'engine list' },
  ),
  group(
    'docker-config',
    "What berth adds to the user's docker configuration: the `berth` context and the compose and buildx plugin links",
    [
      leaf('docker-config show', { describe: 'Show what berth added to the docker configuration' }),
      leaf('docker-config remove', { describe: 'Remove the `berth` context and berth\'s plugin links (the user\'s own plugins stay)' }),
    ],
    { default: 'docker-config show' },
  ),
  // A new command or group goes here (and its options in CommandOptions, its handler in main.ts).
];
