import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCommandLine, type ParseResult } from './parse.js';
import type { BerthError } from '../util/errors.js';

function run(argv: string[]): Extract<ParseResult, { kind: 'run' }>['invocation'] {
  const r = parseCommandLine(argv);
  assert.equal(r.kind, 'run', `berth ${argv.join(' ')}: ${JSON.stringify(r)}`);
  return (r as Extract<ParseResult, { kind: 'run' }>).invocation;
}

function usageError(argv: string[]): BerthError & { json: boolean } {
  const r = parseCommandLine(argv);
  assert.equal(r.kind, 'error', `berth ${argv.join(' ')}: ${JSON.stringify(r)}`);
  const e = r as Extract<ParseResult, { kind: 'error' }>;
  assert.equal(e.error.code, 'USAGE');
  return Object.assign(e.error, { json: e.json });
}

function printed(argv: string[]): { text: string; exitCode: number } {
  const r = parseCommandLine(argv);
  assert.equal(r.kind, 'print', `berth ${argv.join(' ')}: ${JSON.stringify(r)}`);
  return r as Extract<ParseResult, { kind: 'print' }>;
}

const EVERY_COMMAND = ['start', 'stop', 'restart', 'status', 'ports', 'network', 'shell', 'logs', 'version', 'image build', 'settings', 'settings get', 'settings set cpus 2', 'completion'];

test('every command rejects an unknown option, naming it, with a hint to its own help', () => {
  for (const cmd of EVERY_COMMAND) {
    const words = cmd.split(' ');
    const name = words.filter((w) => /^[a-z]+$/.test(w) && w !== 'cpus').join(' ');
    for (const bad of ['--forse', '-x']) {
      const e = usageError([...words, bad]);
      assert.equal(e.message, `Unknown option "${bad}" for \`berth ${name}\`.`, cmd);
      assert.equal(e.hint, `Run \`berth ${name} --help\`.`, cmd);
    }
  }
  assert.equal(usageError(['stop', '--forse', '--bar']).message, 'Unknown options "--forse", "--bar" for `berth stop`.');
  assert.equal(usageError(['stop', '-xy']).message, 'Unknown options "-x", "-y" for `berth stop`.');
  assert.equal(usageError(['start', '--switchContext']).message, 'Unknown option "--switchContext" for `berth start`.');
  assert.equal(usageError(['image', 'build', '--no-force']).message, 'Unknown option "--no-force" for `berth image build`.');
  assert.equal(usageError(['--bogus']).message, 'Unknown option "--bogus".');
});

test('commands reject words they do not take, before and after `--`', () => {
  for (const argv of [['stop', 'x'], ['status', 'x'], ['version', 'x'], ['logs', 'engine', 'x'], ['settings', 'get', 'cpus', 'x'], ['settings', 'set', 'cpus', '2', 'x'], ['stop', '--', 'x']]) {
    const e = usageError(argv);
    assert.match(e.message, /^Unexpected argument "x" for `berth [a-z ]+`\.$/, argv.join(' '));
  }
  assert.equal(usageError(['stop', 'a', 'b']).message, 'Unexpected arguments "a", "b" for `berth stop`.');
});

test('unknown commands and missing subcommands are usage errors with a hint', () => {
  let e = usageError(['frob']);
  assert.equal(e.message, 'Unknown command "frob".');
  assert.equal(e.hint, 'Run `berth --help` for the list of commands.');
  e = usageError(['image', 'frob']);
  assert.equal(e.message, 'Unknown command "frob" for `berth image`.');
  assert.equal(e.hint, 'Run `berth image --help` for the list of commands.');
  assert.equal(usageError(['settings', 'frob']).message, 'Unknown command "frob" for `berth settings`.');
  assert.equal(usageError(['image']).message, '`berth image` needs a command: build.');
  assert.equal(usageError(['help', 'frob']).message, 'Unknown command "frob".');
  assert.equal(usageError(['help', 'start', 'now']).message, 'Unexpected argument "now" for `berth start`.');
});

test('usage errors know whether --json was asked for (but not from after `--`)', () => {
  assert.equal(usageError(['stop', '--forse', '--json']).json, true);
  assert.equal(usageError(['--json', 'frob']).json, true);
  assert.equal(usageError(['stop', '--forse']).json, false);
  assert.equal(usageError(['stop', '--', '--json']).json, false);
});

test('no command prints the usage and exits 2; --help, -h and help exit 0', () => {
  const none = printed([]);
  assert.equal(none.exitCode, 2);
  assert.match(none.text, /Usage: berth <command>/);
  for (const argv of [['--help'], ['-h'], ['help']]) {
    const p = printed(argv);
    assert.equal(p.exitCode, 0);
    assert.equal(p.text, none.text);
  }
  for (const cmd of ['start', 'stop', 'status', 'shell', 'logs', 'version', 'image', 'settings', 'completion']) assert.match(none.text, new RegExp(`berth ${cmd}\\b`));
  assert.match(none.text, /BERTH_HOME/);
});

test('each command has its own --help that names its options', () => {
  const expect: Record<string, RegExp[]> = {
    start: [/berth start\n/, /--switch-context/, /--json/],
    stop: [/berth stop\n/, /--json/],
    shell: [/berth shell \[command\.\.\]/, /-t\s/, /-T\s/],
    logs: [/berth logs \[log\]/, /-f, --follow/, /-n, --lines/, /"daemon"/],
    'image build': [/berth image build\n/, /--force/],
    image: [/berth image build/],
    settings: [/berth settings get \[setting\]/, /berth settings set <setting> <value>/],
    'settings set': [/berth settings set <setting> <value>/, /"memoryMiB"/],
    completion: [/berth completion\n/, /~\/\.bashrc/],
  };
  for (const [cmd, patterns] of Object.entries(expect)) {
    for (const argv of [[...cmd.split(' '), '--help'], ['help', ...cmd.split(' ')]]) {
      const p = printed(argv);
      assert.equal(p.exitCode, 0, argv.join(' '));
      for (const re of patterns) assert.match(p.text, re, argv.join(' '));
      assert.doesNotMatch(p.text, /BERTH_HOME/, `${argv.join(' ')} prints berth's own help`);
    }
  }
});

test('start, stop, status and --json', () => {
  assert.deepEqual(run(['start']), { id: 'start', options: { switchContext: false, backend: undefined, json: false } });
  assert.deepEqual(run(['start', '--switch-context', '--json']), { id: 'start', options: { switchContext: true, backend: undefined, json: true } });
  assert.deepEqual(run(['start', '--backend', 'namespace']), { id: 'start', options: { switchContext: false, backend: 'namespace', json: false } });
  assert.match(usageError(["start", "--backend", "lxc"]).message, /Unknown backend "lxc"/);
  assert.deepEqual(run(['--json', 'status']), { id: 'status', options: { json: true } });
  assert.deepEqual(run(['stop']), { id: 'stop', options: { json: false } });
  assert.deepEqual(run(['image', 'build', '--force']), { id: 'image build', options: { force: true, json: false } });
});

test('shell: the words after `--` pass through untouched; -t and -T', () => {
  assert.deepEqual(run(['shell', '--', 'ls', '-la']), { id: 'shell', options: { argv: ['ls', '-la'], tty: undefined, json: false } });
  const s = run(['shell', '-t', 'echo', '--', '--json', '-h', '--', '007', 'completion', 'help']);
  assert.deepEqual(s.options, { argv: ['echo', '--json', '-h', '--', '007', 'completion', 'help'], tty: true, json: false });
  assert.deepEqual(run(['shell']).options, { argv: [], tty: undefined, json: false });
  assert.equal((run(['shell', '-T']).options as { tty: unknown }).tty, false);
  assert.equal((run(['shell', '-t', '-T']).options as { tty: unknown }).tty, false);
  assert.deepEqual(usageError(['shell', 'ls', '-la']).message, 'Unknown options "-l", "-a" for `berth shell`.');
});

test('logs: name, -f/--follow, -n/--lines', () => {
  assert.deepEqual(run(['logs', 'engine', '-n', '5', '-f']), { id: 'logs', options: { log: 'engine', lines: 5, follow: true, json: false } });
  assert.deepEqual(run(['logs']).options, { log: 'engine', lines: 100, follow: false, json: false });
  assert.deepEqual(run(['logs', 'vm', '--lines=7', '--follow']).options, { log: 'vm', lines: 7, follow: true, json: false });
  assert.deepEqual(run(['logs', '-fn', 'all', 'daemon']).options, { log: 'daemon', lines: Number.MAX_SAFE_INTEGER, follow: true, json: false });
  assert.equal((run(['logs', '-n', '5', '-n', '6']).options as { lines: number }).lines, 6);
  let e = usageError(['logs', 'nope']);
  assert.equal(e.message, 'Unknown log "nope".');
  assert.equal(e.hint, 'Choose one of: vm, agent, engine, daemon.');
  assert.equal(usageError(['logs', '-n', 'x']).message, '-n takes a number or "all", not "x".');
  assert.equal(usageError(['logs', '-n']).message, '-n needs a value.');
  assert.equal(usageError(['logs', '--lines']).message, '--lines needs a value.');
  e = usageError(['logs', '-n', '-1']);
  assert.match(e.message, /-n/);
});

test('settings: get [KEY], set KEY VALUE, and settings alone', () => {
  assert.deepEqual(run(['settings', 'set', 'memoryMiB', '4096']), { id: 'settings set', options: { key: 'memoryMiB', value: '4096', json: false } });
  assert.deepEqual(run(['settings', 'set', 'ports.extra', '["tcp:8022:22"]', '--json']).options, { key: 'ports.extra', value: '["tcp:8022:22"]', json: true });
  assert.deepEqual(run(['settings']), { id: 'settings get', options: { key: undefined, json: false } });
  assert.deepEqual(run(['settings', '--json']), { id: 'settings get', options: { key: undefined, json: true } });
  assert.deepEqual(run(['settings', 'get', 'cpus']), { id: 'settings get', options: { key: 'cpus', json: false } });
  const e = usageError(['settings', 'set', 'nope', '1']);
  assert.equal(e.message, 'Unknown setting "nope".');
  assert.match(e.hint ?? '', /cpus, memoryMiB/);
  assert.equal(usageError(['settings', 'get', 'nope']).message, 'Unknown setting "nope".');
  assert.equal(usageError(['settings', 'set', 'cpus']).message, 'Usage: berth settings set <setting> <value>');
});

test('completion prints a script that asks berth for completions; the completions follow the table', () => {
  const script = printed(['completion']);
  assert.equal(script.exitCode, 0);
  assert.match(script.text, /berth --get-yargs-completions/);
  assert.match(script.text, /complete .*berth/);
  assert.deepEqual(printed(['--get-yargs-completions', 'berth', 'settings', '']).text, 'get\nset\n');
  const top = printed(['--get-yargs-completions', 'berth', '']).text.split('\n');
  for (const cmd of ['start', 'stop', 'shell', 'logs', 'image', 'settings', 'completion']) assert.ok(top.includes(cmd), cmd);
  assert.ok(printed(['--get-yargs-completions', 'berth', 'logs', '']).text.split('\n').includes('agent'));
});
