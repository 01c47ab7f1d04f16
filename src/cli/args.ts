import { BerthError } from '../util/errors.js';

export interface ParsedArgs {
  command: string | undefined;
  positional: string[];
  /** Long flags without values (--force), plus short ones expanded (-f → f). */
  flags: Set<string>;
  /** Flags with values (-n 20, --lines=20). */
  values: Map<string, string>;
  /** Everything after `--`, untouched. */
  rest: string[];
  json: boolean;
  help: boolean;
}

/** Flags that take a value; everything else is boolean. */
const VALUE_FLAGS = new Set(['n', 'lines']);

/**
 * A small argument parser: `berth <command> [positional...] [--flag] [-n N] [-- rest...]`.
 * Unknown flags are accepted here and rejected by the command that does not know them.
 */
export function parseArgs(argv: string[]): ParsedArgs {
  const out: ParsedArgs = { command: undefined, positional: [], flags: new Set(), values: new Map(), rest: [], json: false, help: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.rest = argv.slice(i + 1);
      break;
    }
    if (a.startsWith('--')) {
      const [name, value] = a.slice(2).split('=', 2) as [string, string | undefined];
      if (VALUE_FLAGS.has(name)) {
        const v = value ?? argv[++i];
        if (v === undefined) throw new BerthError('USAGE', `--${name} needs a value.`);
        out.values.set(name, v);
      } else out.flags.add(name);
    } else if (a.startsWith('-') && a.length > 1) {
      for (const ch of a.slice(1)) {
        if (VALUE_FLAGS.has(ch)) {
          const v = argv[++i];
          if (v === undefined) throw new BerthError('USAGE', `-${ch} needs a value.`);
          out.values.set(ch, v);
        } else out.flags.add(ch);
      }
    } else if (out.command === undefined) out.command = a;
    else out.positional.push(a);
  }
  out.json = out.flags.delete('json');
  out.help = out.flags.delete('help') || out.flags.delete('h');
  return out;
}

/** Throws USAGE if any flag is not in `allowed`. */
export function checkFlags(args: ParsedArgs, allowed: string[]): void {
  for (const f of args.flags) {
    if (!allowed.includes(f)) throw new BerthError('USAGE', `Unknown option "${f.length === 1 ? '-' : '--'}${f}" for \`berth ${args.command}\`.`, { hint: 'Run `berth --help`.' });
  }
}
