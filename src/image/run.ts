import { spawn, type ChildProcess } from 'node:child_process';
import { BerthError, type ErrorCode } from '../util/errors.js';

/**
 * Child processes for the image builder. Programs are always spawned with an argument vector,
 * never through a shell, so paths with spaces or quotes need no escaping. Every tool runs with
 * LC_ALL=C because we parse some of their messages (apt's "Unable to locate package").
 */
export interface RunOptions {
  /** Error code for a failure (non-zero exit, cannot spawn). */
  code: ErrorCode;
  /** Start of the error message: "Image build failed at step "x"". */
  what: string;
  hint?: string;
  cwd?: string;
  signal?: AbortSignal | undefined;
  /** Bytes written to the child's stdin (otherwise stdin is /dev/null). */
  input?: Buffer;
  /** An open file descriptor that receives stdout (then `stdout` in the result is ''). */
  stdoutFd?: number;
}

export interface RunResult {
  stdout: string;
  /** The same output as bytes (for binary output such as `xz -dc`). */
  stdoutBuffer: Buffer;
  stderr: string;
}

/** The environment for tools: the caller's, in the C locale. */
export function toolEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LC_ALL: 'C', LANGUAGE: '' };
}

export function aborted(): BerthError {
  return new BerthError('ABORTED', 'The image build was cancelled.', { hint: 'Run `berth image build` again to finish it; downloaded packages are kept.' });
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw aborted();
}

/** Keeps the last `max` characters of a growing text (stderr of long-running tools). */
class Tail {
  private text = '';
  constructor(private readonly max = 64 * 1024) {}
  push(s: string): void {
    this.text += s;
    if (this.text.length > this.max * 2) this.text = this.text.slice(-this.max);
  }
  lines(n: number): string {
    return this.text.trim().split('\n').slice(-n).join('\n');
  }
}

/** Kills `children` when `signal` fires; returns the function that detaches the listener. */
function killOnAbort(signal: AbortSignal | undefined, children: ChildProcess[]): () => void {
  if (!signal) return () => {};
  const onAbort = () => {
    for (const c of children) c.kill('SIGKILL');
  };
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function failure(opts: RunOptions, argv: string[], status: string, stderr: Tail, stdout?: string): BerthError {
  const tail = stderr.lines(20);
  const last = tail.split('\n').at(-1);
  const details: Record<string, unknown> = { command: argv.join(' ').slice(0, 2000), stderrTail: tail };
  if (stdout) details.stdoutTail = stdout.trim().split('\n').slice(-20).join('\n');
  return new BerthError(opts.code, `${opts.what}: ${argv[0]} ${status}${last ? `: ${last}` : ''}.`, {
    ...(opts.hint ? { hint: opts.hint } : {}),
    details,
  });
}

function spawnError(opts: RunOptions, cmd: string, err: Error): BerthError {
  return new BerthError(opts.code, `${opts.what}: cannot run ${cmd}: ${err.message}.`, { cause: err, ...(opts.hint ? { hint: opts.hint } : {}) });
}

/**
 * Runs one program and collects its output. Non-zero exit → BerthError(opts.code) with the tail
 * of stderr in `details.stderrTail`; abort → BerthError('ABORTED') after the child is killed.
 */
export function runTool(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) return reject(aborted());
    const child = spawn(cmd, args, {
      stdio: [opts.input ? 'pipe' : 'ignore', opts.stdoutFd ?? 'pipe', 'pipe'],
      env: toolEnv(),
      ...(opts.cwd ? { cwd: opts.cwd } : {}),
    });
    const chunks: Buffer[] = [];
    const stderr = new Tail();
    child.stdout?.on('data', (d: Buffer) => chunks.push(d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
    if (opts.input) {
      child.stdin!.on('error', () => {}); // EPIPE if the child exits early; its exit status tells why
      child.stdin!.end(opts.input);
    }
    const detach = killOnAbort(opts.signal, [child]);
    child.on('error', (err) => {
      detach();
      reject(spawnError(opts, cmd, err));
    });
    child.on('close', (code, sig) => {
      detach();
      if (opts.signal?.aborted) return reject(aborted());
      const stdoutBuffer = Buffer.concat(chunks);
      const stdout = stdoutBuffer.toString('utf8');
      if (code === 0) return resolve({ stdout, stdoutBuffer, stderr: stderr.lines(200) });
      reject(failure(opts, [cmd, ...args], sig ? `was killed by ${sig}` : `exited with status ${code}`, stderr, stdout));
    });
  });
}

/**
 * Runs `first | second` (first's stdout into second's stdin) and waits for both. Fails if either
 * exits non-zero. Used for `dpkg-deb --fsys-tarfile x.deb | tar -x ...` without a shell.
 */
export function runPipe(first: [string, string[]], second: [string, string[]], opts: RunOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) return reject(aborted());
    const env = toolEnv();
    const a = spawn(first[0], first[1], { stdio: ['ignore', 'pipe', 'pipe'], env });
    const b = spawn(second[0], second[1], { stdio: ['pipe', 'ignore', 'pipe'], env, ...(opts.cwd ? { cwd: opts.cwd } : {}) });
    const stderr = new Tail();
    a.stderr.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
    b.stderr.setEncoding('utf8').on('data', (d: string) => stderr.push(d));
    b.stdin.on('error', () => {}); // EPIPE when the reader dies first; reported through its status
    a.stdout.pipe(b.stdin);
    const detach = killOnAbort(opts.signal, [a, b]);
    let pending = 2;
    let failed: BerthError | undefined;
    const done = (argv: string[], code: number | null, sig: NodeJS.Signals | null) => {
      if (code !== 0 && !failed) failed = failure(opts, argv, sig ? `was killed by ${sig}` : `exited with status ${code}`, stderr);
      if (--pending > 0) return;
      detach();
      if (opts.signal?.aborted) return reject(aborted());
      if (failed) return reject(failed);
      resolve();
    };
    let spawnFailed = false;
    const onError = (cmd: string) => (err: Error) => {
      if (spawnFailed) return;
      spawnFailed = true;
      a.kill('SIGKILL');
      b.kill('SIGKILL');
      detach();
      reject(spawnError(opts, cmd, err));
    };
    a.on('error', onError(first[0]));
    b.on('error', onError(second[0]));
    a.on('close', (c, s) => !spawnFailed && done([first[0], ...first[1]], c, s));
    b.on('close', (c, s) => {
      if (spawnFailed) return;
      // The reader is gone (tar may stop at the end-of-archive blocks before reading the padding):
      // drain the writer so it cannot block on a full pipe, or stop it if the reader failed.
      a.stdout.unpipe(b.stdin);
      if (c === 0) a.stdout.resume();
      else a.kill('SIGKILL');
      done([second[0], ...second[1]], c, s);
    });
  });
}
