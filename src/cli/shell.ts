import http from 'node:http';
import type net from 'node:net';
import { BerthError, fromSerialized, type SerializedError } from '../util/errors.js';
import { ExecRecordDecoder, ExecRecordType, encodeExecRecord } from '../control/exec-protocol.js';
import type { ExecRequest } from '../daemon/api-types.js';
import type { DaemonClient } from './daemon-client.js';

export interface ShellOptions {
  /** The command and its arguments; [] for an interactive shell. */
  argv: string[];
  /** true: -t, false: -T, undefined: a TTY if stdin and stdout are terminals. */
  tty: boolean | undefined;
}

/**
 * `berth shell [-t|-T] [-- CMD...]`: a command (or an interactive shell) in the VM.
 * A TTY is used when both stdin and stdout are terminals (force with -t, refuse with -T); then the
 * local terminal is put in raw mode and window size changes are forwarded. The command's exit code
 * becomes ours; a signal death becomes 128+signal, as in a shell.
 */
export async function runShell(client: DaemonClient, options: ShellOptions): Promise<number> {
  const { argv } = options;
  const isTty = process.stdin.isTTY === true && process.stdout.isTTY === true;
  // Without a terminal an interactive shell still works (it reads commands from stdin).
  const tty = options.tty ?? isTty;
  const req: ExecRequest = { argv, tty, env: { TERM: process.env.TERM ?? 'xterm-256color' } };
  if (tty && process.stdout.columns && process.stdout.rows) {
    req.cols = process.stdout.columns;
    req.rows = process.stdout.rows;
  }
  const socket = await upgrade(client, req);
  return pump(socket, tty);
}

function upgrade(client: DaemonClient, req: ExecRequest): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const r = http.request({
      socketPath: client.paths.daemonSocket,
      path: '/v1/exec',
      method: 'GET',
      headers: { Connection: 'Upgrade', Upgrade: 'berth-exec', 'X-Berth-Exec': Buffer.from(JSON.stringify(req)).toString('base64') },
    });
    r.on('upgrade', (_res, socket: net.Socket, head: Buffer) => {
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    r.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        try {
          reject(fromSerialized((JSON.parse(body) as { error: SerializedError }).error));
        } catch {
          reject(new BerthError('EXEC_FAILED', `The daemon refused the shell (HTTP ${res.statusCode}).`));
        }
      });
    });
    r.on('error', (err) =>
      reject(new BerthError('DAEMON_UNREACHABLE', 'Cannot reach the berth daemon.', { cause: err, hint: 'Is berth running? Try `berth status`.' })),
    );
    r.end();
  });
}

function pump(socket: net.Socket, tty: boolean): Promise<number> {
  return new Promise((resolve) => {
    const stdin = process.stdin;
    let exitCode: number | undefined;
    const restore = () => {
      if (tty && stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      process.stdout.off('resize', onResize);
    };
    const onResize = () => {
      socket.write(encodeExecRecord(ExecRecordType.Resize, Buffer.from(JSON.stringify({ cols: process.stdout.columns, rows: process.stdout.rows }))));
    };
    if (tty && stdin.isTTY) {
      stdin.setRawMode(true);
      process.stdout.on('resize', onResize);
    }
    stdin.on('data', (d: Buffer) => {
      if (!socket.write(encodeExecRecord(ExecRecordType.Stdin, d))) {
        stdin.pause();
        socket.once('drain', () => stdin.resume());
      }
    });
    stdin.on('end', () => socket.write(encodeExecRecord(ExecRecordType.StdinEof, Buffer.alloc(0))));
    stdin.resume();

    const decoder = new ExecRecordDecoder();
    socket.on('data', (chunk: Buffer) => {
      for (const rec of decoder.push(chunk)) {
        if (rec.type === ExecRecordType.Stdout) process.stdout.write(rec.payload);
        else if (rec.type === ExecRecordType.Stderr) process.stderr.write(rec.payload);
        else if (rec.type === ExecRecordType.Exit) {
          const e = JSON.parse(rec.payload.toString('utf8')) as { code: number | null; signal: string | null };
          exitCode = e.code ?? (e.signal ? 128 + signalNumber(e.signal) : 1);
        }
      }
    });
    const done = () => {
      restore();
      if (exitCode === undefined) process.stderr.write('berth: the connection to the VM closed before the command finished.\n');
      resolve(exitCode ?? 255);
    };
    socket.on('end', done);
    socket.on('error', done);
  });
}

function signalNumber(name: string): number {
  const table: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };
  return table[name] ?? 0;
}
