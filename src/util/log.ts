/**
 * Minimal leveled logger. One line per record:
 *   2026-11-24T01:02:03.456Z INFO  [vm] message key=value key2="quoted value"
 * The daemon points it at logs/daemon.log; tests and the agent use their own sinks.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LogSink {
  write(line: string): void;
}

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export class Logger {
  constructor(
    private readonly sink: LogSink,
    private readonly scope: string = '',
    private readonly minLevel: LogLevel = 'info',
  ) {}

  child(scope: string): Logger {
    return new Logger(this.sink, this.scope ? `${this.scope}/${scope}` : scope, this.minLevel);
  }

  debug(msg: string, fields?: LogFields): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.log('error', msg, fields);
  }

  log(level: LogLevel, msg: string, fields?: LogFields): void {
    if (ORDER[level] < ORDER[this.minLevel]) return;
    const scope = this.scope ? ` [${this.scope}]` : '';
    this.sink.write(`${new Date().toISOString()} ${level.toUpperCase().padEnd(5)}${scope} ${msg}${formatFields(fields)}\n`);
  }
}

function formatFields(fields: LogFields | undefined): string {
  if (!fields) return '';
  let out = '';
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const s = String(v);
    out += ` ${k}=${/^[\w./:@+-]*$/.test(s) && s !== '' ? s : JSON.stringify(s)}`;
  }
  return out;
}

/** A logger that drops everything; for unit tests and library defaults. */
export const silentLogger = new Logger({ write() {} }, '', 'error');

/** A logger writing to stderr. */
export function stderrLogger(scope = '', level: LogLevel = 'info'): Logger {
  return new Logger({ write: (l) => process.stderr.write(l) }, scope, level);
}
