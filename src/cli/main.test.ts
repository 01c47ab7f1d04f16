import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../util/errors.js';
import { COMMANDS, type CommandId, type Invocation } from './commands.js';
import { run, type Handlers, type Io } from './main.js';

const IDS: CommandId[] = COMMANDS.flatMap((c) => ('group' in c ? c.commands.map((l) => l.id) : [c.id]));

/** Handlers that record what they were called with and answer with `answer`. */
function fakes(calls: Invocation[], answer: () => Promise<number> = async () => 0): () => Handlers {
  const h: Record<string, (options: unknown) => Promise<number>> = {};
  for (const id of IDS) {
    h[id] = (options) => {
      calls.push({ id, options } as Invocation);
      return answer();
    };
  }
  return () => h as Handlers;
}

async function berth(argv: string[], answer?: () => Promise<number>): Promise<{ code: number; stdout: string; stderr: string; calls: Invocation[] }> {
  const calls: Invocation[] = [];
  let stdout = '';
  let stderr = '';
  const io: Io = { stdout: { write: (t) => (stdout += t) }, stderr: { write: (t) => (stderr += t) } };
  const code = await run(argv, fakes(calls, answer), io);
  return { code, stdout, stderr, calls };
}

test('the command table has one entry per command id', () => {
  assert.equal(new Set(IDS).size, IDS.length);
  assert.ok(IDS.includes('settings set') && IDS.includes('image build'));
});

test('a parsed command runs its handler, whose result is the exit code (shell passes its command through)', async () => {
  const r = await berth(['shell', '--', 'sh', '-c', 'exit 42'], async () => 42);
  assert.equal(r.code, 42);
  assert.deepEqual(r.calls, [{ id: 'shell', options: { argv: ['sh', '-c', 'exit 42'], tty: undefined, json: false } }]);
  assert.equal(r.stdout + r.stderr, '');
});

test('unknown options: exit 2, the option named on stderr, no handler runs', async () => {
  for (const cmd of ['start', 'status', 'stop', 'restart', 'ports', 'network', 'version']) {
    const r = await berth([cmd, '--forse']);
    assert.equal(r.code, 2, cmd);
    assert.deepEqual(r.calls, []);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, `berth: Unknown option "--forse" for \`berth ${cmd}\`.\n  → Run \`berth ${cmd} --help\`.\n`);
  }
});

test('with --json a usage error is a JSON document on stdout', async () => {
  const r = await berth(['stop', '--forse', '--json']);
  assert.equal(r.code, 2);
  assert.equal(r.stderr, '');
  assert.deepEqual(JSON.parse(r.stdout), { error: { code: 'USAGE', message: 'Unknown option "--forse" for `berth stop`.', hint: 'Run `berth stop --help`.' } });
});

test('help on stdout with exit 0; no command prints the usage with exit 2; unknown command exit 2', async () => {
  const help = await berth(['logs', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--follow/);
  assert.equal(help.stderr, '');
  const none = await berth([]);
  assert.equal(none.code, 2);
  assert.match(none.stdout, /Usage: berth <command>/);
  const unknown = await berth(['frob']);
  assert.equal(unknown.code, 2);
  assert.equal(unknown.stderr, 'berth: Unknown command "frob".\n  → Run `berth --help` for the list of commands.\n');
});

test("a handler's errors: USAGE exits 2, others 1, printed as text or JSON", async () => {
  const usage = async (): Promise<number> => {
    throw new BerthError('USAGE', 'There is no engine log yet.');
  };
  let r = await berth(['logs'], usage);
  assert.equal(r.code, 2);
  assert.equal(r.stderr, 'berth: There is no engine log yet.\n');
  r = await berth(['status', '--json'], async () => {
    throw new BerthError('DAEMON_UNREACHABLE', 'Cannot reach the berth daemon.');
  });
  assert.equal(r.code, 1);
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'DAEMON_UNREACHABLE');
});
