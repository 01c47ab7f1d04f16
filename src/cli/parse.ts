import yargs, { type Argv } from 'yargs';
import { BerthError } from '../util/errors.js';
import { COMMANDS, words, type AnyLeaf, type CommandSpec, type GroupSpec, type Invocation, type RawArgs } from './commands.js';

/**
 * Turns a command line into what to do, using yargs over the command table (commands.ts):
 *   run    a command with its typed options;
 *   print  text for stdout with an exit code: help (0), the usage for no command at all (2), the
 *          completion script or completions (0);
 *   error  a USAGE error (exit 2), and whether it should be printed as JSON.
 * Unknown options, unknown commands and extra positionals are errors. Nothing here prints.
 */
export type ParseResult =
  | { kind: 'run'; invocation: Invocation }
  | { kind: 'print'; text: string; exitCode: 0 | 2 }
  | { kind: 'error'; error: BerthError; json: boolean };

const DESCRIPTION = 'berth: Linux containers through one lightweight VM';

const ENVIRONMENT = `Environment:
  BERTH_HOME       State directory (default ~/.berth): settings, sockets, logs,
                   data disk
  BERTH_CACHE      Package and image cache (default ~/.cache/berth)
  BERTH_GUEST_DIR  Build the guest image from this folder instead of guest/
                   (manifest + scripts)

Exit codes: 0 success, 1 failure, 2 usage error; \`berth shell\` passes the
command's exit code through.`;

const COMPLETION = 'Print a shell completion script: bash (zsh or fish when run from them)';

/** The command yargs is working on: set by each command's builder as yargs descends into it. */
interface Context {
  /** Words of the command: [] for berth itself, ['settings', 'set'] for a subcommand. */
  path: string[];
  /** The command's usage line after its name, e.g. "<setting> <value>". */
  args: string;
  /** Whether the context takes subcommands (berth itself and the groups). */
  isGroup: boolean;
}

interface State {
  context: Context;
  decided?: { leaf: AnyLeaf; raw: RawArgs };
  helpFor?: string[];
}

/** Thrown by yargs' fail hook: a usage problem yargs found, in yargs' words. */
class YargsFailure extends Error {
  constructor(
    message: string,
    readonly context: Context,
  ) {
    super(message);
  }
}

const NO_COMMAND = 'no command';
const NO_SUBCOMMAND = 'no subcommand';

export function parseCommandLine(argv: readonly string[]): ParseResult {
  const args = [...argv];
  const json = wantsJson(args);
  const state: State = { context: { path: [], args: '', isGroup: true } };
  let output = '';
  try {
    buildParser(state).parse(args, {}, (_err: Error | undefined, _argv: unknown, out: string) => {
      output = out;
    });
  } catch (err) {
    if (!(err instanceof YargsFailure)) throw err;
    if (err.message === NO_COMMAND && err.context.path.length === 0) {
      // `berth` alone prints the usage; `berth --bogus` names the option.
      const options = beforeDoubleDash(args).filter((a) => a.startsWith('-') && a !== '--json' && !a.startsWith('--json='));
      if (options.length === 0) return { kind: 'print', text: helpText([]), exitCode: 2 };
      const list = options.map((o) => `"${o}"`).join(', ');
      return { kind: 'error', error: new BerthError('USAGE', `Unknown option${options.length > 1 ? 's' : ''} ${list}.`, { hint: 'Run `berth --help`.' }), json };
    }
    return { kind: 'error', error: usageError(err.message, err.context, args), json };
  }
  if (state.helpFor) {
    const unknown = unknownCommand(state.helpFor);
    if (unknown) return { kind: 'error', error: unknown, json };
    return { kind: 'print', text: helpText(state.helpFor), exitCode: 0 };
  }
  if (state.decided) {
    const { leaf, raw } = state.decided;
    const rest = words(raw, '--');
    if (rest.length > 0 && !leaf.passThrough) {
      return { kind: 'error', error: extraArguments(rest, { path: leaf.id.split(' '), args: leaf.args ?? '', isGroup: false }), json };
    }
    try {
      const options = { ...(leaf.parse?.(raw) ?? {}), json: raw.json === true };
      return { kind: 'run', invocation: { id: leaf.id, options } as Invocation };
    } catch (err) {
      if (err instanceof BerthError) return { kind: 'error', error: err, json };
      throw err;
    }
  }
  // yargs answered by itself: --help, the completion script, or completions.
  return { kind: 'print', text: withNewline(output), exitCode: 0 };
}

/** The help text of `berth PATH...` (berth's own for []). */
export function helpText(path: readonly string[]): string {
  let output = '';
  buildParser({ context: { path: [], args: '', isGroup: true } }).parse([...path, '--help'], {}, (_e: unknown, _a: unknown, out: string) => {
    output = out;
  });
  return withNewline(output);
}

/** Whether usage errors go to stdout as JSON: `--json` is given (before any `--`). */
function wantsJson(argv: readonly string[]): boolean {
  return beforeDoubleDash(argv).some((a) => a === '--json' || a === '--json=true');
}

function beforeDoubleDash(argv: readonly string[]): readonly string[] {
  const end = argv.indexOf('--');
  return end === -1 ? argv : argv.slice(0, end);
}

function buildParser(state: State): Argv {
  const y = yargs()
    .scriptName('berth')
    .locale('en')
    .parserConfiguration({
      'populate--': true,
      'camel-case-expansion': false,
      'boolean-negation': false,
      'dot-notation': false,
    })
    .usage(`${DESCRIPTION}\n\nUsage: $0 <command> [options]`)
    .option('json', { type: 'boolean', global: true, describe: 'Machine-readable output (errors too)' })
    .help('help', 'Show help')
    .alias('help', 'h')
    .version(false)
    .strict()
    .exitProcess(false)
    .showHelpOnFail(false)
    .fail((message: string | null, err: Error | undefined) => {
      if (err && !(err.name === 'YError')) throw err;
      throw new YargsFailure(message ?? err?.message ?? 'Invalid command line.', state.context);
    })
    .epilogue(ENVIRONMENT);
  for (const spec of COMMANDS) addCommand(y, spec, state, []);
  y.command(
    'help [command..]',
    'Show help for a command',
    (b) => {
      state.context = { path: ['help'], args: '[command..]', isGroup: false };
      return b.positional('command', { type: 'string', describe: 'e.g. `settings set`' });
    },
    (raw) => {
      state.helpFor = words(raw as RawArgs, 'command');
    },
  );
  // yargs' own completion command would also fire on the word "completion" anywhere in the
  // command line (`berth shell cat completion`); this one is an ordinary command. yargs still
  // answers --get-yargs-completions, which the script calls.
  y.completion('get-yargs-completion-script', false);
  y.command(
    'completion',
    COMPLETION,
    (b) => {
      state.context = { path: ['completion'], args: '', isGroup: false };
      return b.epilogue('Install it with `berth completion >> ~/.bashrc`.');
    },
    () => {
      // At run time the method takes ($0, command), which the script names; the types omit them.
      (y as unknown as { showCompletionScript(name: string, command: string): void }).showCompletionScript('berth', 'completion');
    },
  );
  y.demandCommand(1, NO_COMMAND);
  return y;
}

function addCommand(y: Argv, spec: CommandSpec, state: State, parent: string[]): void {
  if ('group' in spec) {
    addGroup(y, spec, state, parent);
    return;
  }
  const name = nameOf(spec);
  const path = [...parent, name];
  y.command(
    spec.args ? `${name} ${spec.args}` : name,
    spec.describe,
    (b) => {
      state.context = { path, args: spec.args ?? '', isGroup: false };
      return leafBuilder(b, spec, true);
    },
    (raw) => {
      state.decided = { leaf: spec, raw: raw as RawArgs };
    },
  );
}

function addGroup(y: Argv, spec: GroupSpec, state: State, parent: string[]): void {
  const path = [...parent, spec.group];
  y.command(spec.group, spec.describe, (b) => {
    state.context = { path, args: '', isGroup: true };
    for (const sub of spec.commands) addCommand(b, sub, state, path);
    const byDefault = spec.commands.find((c) => c.id === spec.default);
    if (byDefault) {
      // `berth <group>` alone: the default subcommand without its positionals.
      b.command(
        '$0',
        false,
        (d) => {
          state.context = { path, args: '', isGroup: true };
          return leafBuilder(d, byDefault, false);
        },
        (raw) => {
          state.decided = { leaf: byDefault, raw: raw as RawArgs };
        },
      );
    } else {
      b.demandCommand(1, NO_SUBCOMMAND);
    }
    return b;
  });
}

function leafBuilder(b: Argv, spec: AnyLeaf, withPositionals: boolean): Argv {
  if (withPositionals) for (const [name, opts] of Object.entries(spec.positionals ?? {})) b.positional(name, opts);
  if (spec.options) b.options(spec.options);
  return b;
}

/** Maps a yargs failure message (English: the locale is fixed) to berth's USAGE error. */
function usageError(message: string, ctx: Context, argv: readonly string[]): BerthError {
  const cmd = ['berth', ...ctx.path].join(' ');
  const hint = `Run \`${cmd} --help\`.`;
  if (message === NO_SUBCOMMAND) {
    const subs = subcommandNames(ctx.path);
    return new BerthError('USAGE', `\`${cmd}\` needs a command${subs.length ? `: ${subs.join(', ')}` : ''}.`, { hint });
  }
  const unknown = /^Unknown arguments?: (.*)$/s.exec(message);
  if (unknown) {
    const names = unknown[1]!.split(', ');
    const options = [...new Set(names.map((n) => optionSpelling(n, argv)).filter((o): o is string => o !== undefined))];
    if (options.length > 0) {
      const list = options.map((o) => `"${o}"`).join(', ');
      return new BerthError('USAGE', `Unknown option${options.length > 1 ? 's' : ''} ${list}${ctx.path.length ? ` for \`${cmd}\`` : ''}.`, { hint });
    }
    return extraArguments(names, ctx);
  }
  const needsValue = /^Not enough arguments following: (.*)$/.exec(message);
  if (needsValue) return new BerthError('USAGE', `${optionSpelling(needsValue[1]!, argv) ?? needsValue[1]} needs a value.`, { hint });
  if (/^Not enough non-option arguments/.test(message)) {
    return new BerthError('USAGE', `Usage: ${cmd}${ctx.args ? ` ${ctx.args}` : ''}`, { hint });
  }
  // One line per invalid argument; the first is reported.
  const invalid = /^Invalid values:\s*Argument: (.+?), Given: (.+?), Choices: (.+)$/m.exec(message);
  if (invalid) {
    return new BerthError('USAGE', `Unknown ${invalid[1]} ${invalid[2]}.`, { hint: `Choose one of: ${jsonList(invalid[3]!).join(', ')}.` });
  }
  return new BerthError('USAGE', message, { hint });
}

/** Unknown words where a command or no argument was expected. */
function extraArguments(extra: string[], ctx: Context): BerthError {
  const cmd = ['berth', ...ctx.path].join(' ');
  if (ctx.isGroup) {
    const hint = `Run \`${cmd} --help\` for the list of commands.`;
    return new BerthError('USAGE', `Unknown command "${extra[0]}"${ctx.path.length ? ` for \`${cmd}\`` : ''}.`, { hint });
  }
  const list = extra.map((w) => `"${w}"`).join(', ');
  return new BerthError('USAGE', `Unexpected argument${extra.length > 1 ? 's' : ''} ${list} for \`${cmd}\`.`, { hint: `Run \`${cmd} --help\`.` });
}

/**
 * How the user spelled the option yargs calls `name` ("--name" or "-n"), or undefined if `name`
 * was a positional word.
 */
function optionSpelling(name: string, argv: readonly string[]): string | undefined {
  const before = beforeDoubleDash(argv);
  if (before.some((a) => a === `--${name}` || a.startsWith(`--${name}=`))) return `--${name}`;
  if (name.length === 1 && before.some((a) => /^-[^-]/.test(a) && a.includes(name))) return `-${name}`;
  if (before.includes(name)) return undefined;
  return name.length === 1 ? `-${name}` : `--${name}`;
}

/** yargs' list of JSON values ("a", "b"), as strings. */
function jsonList(text: string): string[] {
  try {
    return (JSON.parse(`[${text}]`) as unknown[]).map(String);
  } catch {
    return [text];
  }
}

/** The word that names a command or group on the command line. */
function nameOf(spec: CommandSpec): string {
  return 'group' in spec ? spec.group : spec.id.split(' ').at(-1)!;
}

function subcommandNames(path: readonly string[]): string[] {
  const specs = path.length === 0 ? COMMANDS : COMMANDS.filter((c): c is GroupSpec => 'group' in c && c.group === path[0]).flatMap((g) => g.commands);
  return specs.map(nameOf);
}

/** A USAGE error if `path` names no command or group. */
function unknownCommand(path: readonly string[]): BerthError | undefined {
  if (path[0] === 'help' || path[0] === 'completion') {
    return path.length > 1 ? extraArguments(path.slice(1), { path: path.slice(0, 1), args: '', isGroup: false }) : undefined;
  }
  let level: CommandSpec[] = COMMANDS;
  for (let i = 0; i < path.length; i++) {
    const found = level.find((c) => nameOf(c) === path[i]);
    if (!found) return extraArguments([path[i]!], { path: path.slice(0, i), args: '', isGroup: true });
    if ('group' in found) level = found.commands;
    else if (i < path.length - 1) return extraArguments(path.slice(i + 1), { path: path.slice(0, i + 1), args: '', isGroup: false });
  }
  return undefined;
}

function withNewline(text: string): string {
  return text === '' || text.endsWith('\n') ? text : text + '\n';
}
