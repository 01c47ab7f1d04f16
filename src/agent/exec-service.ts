import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { Duplex } from 'node:stream';
import type { Logger } from '../util/log.js';
import { ExecRecordDecoder, ExecRecordType, encodeExecRecord } from '../control/exec-protocol.js';

/**
 * The `exec` service: runs a command in the VM for `berth shell`.
 *
 * Without a TTY the command gets pipes. With a TTY it runs under util-linux `script`, which gives
 * it a pseudo-terminal (Node cannot allocate one without a native module); the initial size is set
 * with `stty` before the command starts, and resize records run `stty -F <pty>` on the command's
 * terminal, which makes the kernel send SIGWINCH to its foreground process group.
 * The exit record carries the command's status (`script -e` passes it through).
 */
export interface ExecMeta {
  argv: string[];
  tty: boolean;
  env: Record<string, string>;
  cols?: number;
  rows?: number;
  cwd?: string;
}

const DEFAULT_SHELL = ['/bin/busybox', 'sh', '-l'];

/** Validates the OPEN meta of an exec stream; throws with a message for OPEN_FAIL. */
export function parseExecMeta(raw: unknown): ExecMeta {
  const o = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const argv = Array.isArray(o.argv) ? o.argv : [];
  if (argv.length > 4096 || !argv.every((a) => typeof a === 'string' && a.length < 65536 && !a.includes('\0'))) {
    throw new Error('exec: argv must be an array of at most 4096 strings without NUL bytes');
  }
  const env: Record<string, string> = {};
  if (o.env && typeof o.env === 'object') {
    for (const [k, v] of Object.entries(o.env as Record<string, unknown>)) {
      if (typeof v === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && !v.includes('\0')) env[k] = v;
    }
  }
  const dim = (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 10000 ? v : undefined);
  const meta: ExecMeta = { argv: argv as string[], tty: o.tty === true, env };
  const cols = dim(o.cols);
  const rows = dim(o.rows);
  if (cols) meta.cols = cols;
  if (rows) meta.rows = rows;
  if (typeof o.cwd === 'string' && o.cwd.startsWith('/')) meta.cwd = o.cwd;
  return meta;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export function runExec(stream: Duplex, meta: ExecMeta, log: Logger): void {
  const argv = meta.argv.length > 0 ? meta.argv : DEFAULT_SHELL;
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    USER: 'root',
    SHELL: '/bin/sh',
    TERM: 'xterm-256color',
    PS1: 'berth:\\w# ',
    ...meta.env,
  };
  let child: ChildProcess;
  if (meta.tty) {
    const size = meta.cols && meta.rows ? `stty rows ${meta.rows} cols ${meta.cols} 2>/dev/null; ` : '';
    const command = `${size}exec ${argv.map(shellQuote).join(' ')}`;
    child = spawn('/usr/bin/script', ['-q', '-e', '-c', command, '/dev/null'], { cwd: meta.cwd ?? '/root', env, stdio: 'pipe' });
  } else {
    child = spawn(argv[0]!, argv.slice(1), { cwd: meta.cwd ?? '/root', env, stdio: 'pipe' });
  }

  let finished = false;
  const send = (type: ExecRecordType, payload: Buffer) => {
    if (!stream.destroyed && !stream.writableEnded) return stream.write(encodeExecRecord(type, payload));
    return true;
  };
  const forward = (src: NodeJS.ReadableStream | null, type: ExecRecordType) => {
    src?.on('data', (d: Buffer) => {
      if (!send(type, d)) {
        src.pause();
        stream.once('drain', () => src.resume());
      }
    });
  };
  forward(child.stdout, ExecRecordType.Stdout);
  forward(child.stderr, ExecRecordType.Stderr);

  const finish = (code: number | null, signal: string | null) => {
    if (finished) return;
    finished = true;
    send(ExecRecordType.Exit, Buffer.from(JSON.stringify({ code, signal })));
    stream.end();
  };
  child.on('error', (err: NodeJS.ErrnoException) => {
    const what = err.code === 'ENOENT' ? 'command not found' : err.message;
    send(ExecRecordType.Stderr, Buffer.from(`berth: cannot run ${argv[0]}: ${what}\n`));
    finish(err.code === 'ENOENT' ? 127 : 126, null);
  });
  child.on('close', (code, signal) => finish(code, signal));
  child.stdin?.on('error', () => {}); // EPIPE when the command exits before reading its input

  const decoder = new ExecRecordDecoder();
  stream.on('data', (chunk: Buffer) => {
    let records;
    try {
      records = decoder.push(chunk);
    } catch (err) {
      log.warn('malformed exec record from the host; ending the session', { err: (err as Error).message });
      child.kill('SIGKILL');
      stream.destroy();
      return;
    }
    for (const r of records) {
      switch (r.type) {
        case ExecRecordType.Stdin:
          if (child.stdin && !child.stdin.write(r.payload)) {
            stream.pause();
            child.stdin.once('drain', () => stream.resume());
          }
          break;
        case ExecRecordType.StdinEof:
          child.stdin?.end();
          break;
        case ExecRecordType.Resize:
          if (meta.tty && child.pid) resize(child.pid, r.payload, log);
          break;
        default:
          break;
      }
    }
  });
  const hangUp = () => {
    if (!finished && child.exitCode === null) {
      child.kill('SIGHUP');
      setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 2000).unref();
    }
  };
  stream.on('close', hangUp);
  stream.on('error', hangUp);
}

/** Applies a {cols, rows} record to the terminal of the command running under `script`. */
function resize(scriptPid: number, payload: Buffer, log: Logger): void {
  let size: { cols?: unknown; rows?: unknown };
  try {
    size = JSON.parse(payload.toString('utf8')) as typeof size;
  } catch {
    return;
  }
  const cols = Number(size.cols);
  const rows = Number(size.rows);
  if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols <= 0 || rows <= 0 || cols > 9999 || rows > 9999) return;
  try {
    const children = fs.readFileSync(`/proc/${scriptPid}/task/${scriptPid}/children`, 'utf8').trim().split(/\s+/);
    const pty = fs.readlinkSync(`/proc/${children[0]}/fd/0`);
    if (!/^\/dev\/pts\/\d+$/.test(pty)) return;
    execFile('/bin/busybox', ['stty', '-F', pty, 'rows', String(rows), 'cols', String(cols)], () => {});
  } catch (err) {
    log.debug('resize failed', { err: (err as Error).message });
  }
}
