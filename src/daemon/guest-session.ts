import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import type { Duplex } from 'node:stream';
import { BerthError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { BerthPaths } from '../settings/paths.js';
import { Mux, type MuxLink } from '../control/mux.js';
import { call } from '../control/rpc.js';
import type { AgentMethod, ParamsOf, ResultOf } from '../control/agent-api.js';
import { parseGuestInfo, parseEngineEvent, type EngineReport, type GuestInfo } from '../control/guest-info.js';
import { LineSplitter } from '../control/lines.js';
import type { ExecRequest } from './api-types.js';

export type { EngineReport, GuestInfo };

/**
 * The host end of the control channel for one running guest: opens it through the driver, runs
 * the mux in the host role, tracks the agent's session (HELLO) and the engine state it reports,
 * ships the guest's engine and agent logs into $BERTH_HOME/logs, and opens streams for the Docker
 * proxy and `berth shell`.
 *
 * Everything the guest says is untrusted: HELLO info and events go through parseGuestInfo /
 * parseEngineEvent (bounded, typed); nothing the guest sends can make the host do anything but
 * record it.
 */
export class GuestSession extends EventEmitter {
  private mux: Mux | undefined;
  private link: MuxLink | undefined;
  private closed = false;
  info: GuestInfo | undefined;
  engine: EngineReport | undefined;
  private readonly offsets: LogOffsets;

  constructor(
    /** Opens the host end of the guest's control channel (LaunchedGuest.openControl). */
    private readonly openControl: () => Promise<MuxLink>,
    private readonly paths: BerthPaths,
    private readonly log: Logger,
  ) {
    super();
    this.offsets = new LogOffsets(`${paths.runDir}/log-offsets.json`);
  }

  /** Opens the control channel; a failure to open it fails the waits with AGENT_UNREACHABLE. */
  connect(): void {
    this.openControl().then(
      (link) => {
        if (this.closed) link.close();
        else this.attach(link);
      },
      (err: unknown) => {
        if (this.closed) return;
        this.emit('error-final', new BerthError('AGENT_UNREACHABLE', 'Cannot open the control channel to the guest.', { cause: err }));
      },
    );
  }

  private attach(link: MuxLink): void {
    this.link = link;
    const mux = new Mux(link, { role: 'host', log: this.log.child('mux') });
    this.mux = mux;
    mux.on('session', (raw: unknown) => {
      const info = parseGuestInfo(raw);
      this.info = info;
      this.engine = info.engine;
      this.log.info('guest session established', { bootId: info.bootId, agent: info.agentVersion, engine: info.engine.state });
      this.emit('session', info);
      this.emit('engine', info.engine);
      this.followEvents(mux);
      this.shipLog(mux, 'engine', this.paths.engineLog, info.bootId);
      this.shipLog(mux, 'agent', this.paths.agentLog, info.bootId);
    });
    link.on('close', () => {
      if (this.closed) return;
      this.log.info('the control channel closed (the guest is gone)');
      this.emit('disconnected');
    });
  }

  /** Streams open on the host's side of the control channel. */
  get streamCount(): number {
    return this.mux?.streamCount ?? 0;
  }

  /** Resolves with the agent's HELLO info; VM_START_TIMEOUT if the agent does not connect in time. */
  waitSession(timeoutMs: number): Promise<GuestInfo> {
    if (this.info) return Promise.resolve(this.info);
    return this.waitFor('session', timeoutMs, () =>
      new BerthError('VM_START_TIMEOUT', `The VM was not ready within ${Math.round(timeoutMs / 1000)} s: the guest agent never connected.`, {
        hint: 'The console log shows how far the boot got (`berth logs vm`). On TCG emulation a first boot can be slow: raise `startTimeoutSec`.',
      }),
    );
  }

  /** Resolves when the engine reports ready; fails on a failed engine or a timeout. */
  waitEngineReady(timeoutMs: number): Promise<EngineReport> {
    return new Promise((resolve, reject) => {
      const check = (e: EngineReport | undefined) => {
        if (!e) return false;
        if (e.state === 'ready') {
          done();
          resolve(e);
          return true;
        }
        if (e.state === 'failed') {
          done();
          reject(new BerthError('ENGINE_FAILED', `The Docker engine failed to start in the VM.`, {
            hint: 'See `berth logs engine` for dockerd\'s own messages.',
            details: { engineDetail: e.detail ?? '' },
          }));
          return true;
        }
        return false;
      };
      const onEngine = (e: EngineReport) => void check(e);
      const onClosed = () => {
        done();
        reject(sessionClosed());
      };
      const timer = setTimeout(() => {
        done();
        reject(new BerthError('VM_START_TIMEOUT', `The VM was not ready within the start timeout: the Docker engine did not answer (engine state: ${this.engine?.state ?? 'unknown'}).`, {
          hint: 'See `berth logs engine`. On TCG emulation the engine can be slow to start: raise `startTimeoutSec`.',
        }));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.off('engine', onEngine);
        this.off('closed', onClosed);
      };
      if (this.closed) onClosed();
      else if (!check(this.engine)) {
        this.on('engine', onEngine);
        this.once('closed', onClosed);
      }
    });
  }

  openDocker(): Promise<Duplex> {
    return this.requireMux().open('docker', {});
  }

  openExec(req: ExecRequest): Promise<Duplex> {
    return this.requireMux().open('exec', req as unknown as Record<string, unknown>);
  }

  /** Calls an agent method (control/agent-api.ts); the result is checked against the method's table entry. */
  rpc<M extends AgentMethod>(method: M, params: ParamsOf<M>, timeoutMs: number): Promise<ResultOf<M>> {
    return call(this.requireMux(), method, params, timeoutMs);
  }

  /** Ends the session; waits still pending reject with AGENT_UNREACHABLE. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('closed');
    this.mux?.close();
    this.link?.close();
    this.offsets.flush();
  }

  private requireMux(): Mux {
    if (!this.mux || !this.info || this.closed) {
      throw new BerthError('AGENT_UNREACHABLE', 'The guest agent is not connected.', { hint: 'Check `berth status`; `berth logs agent` shows the agent\'s messages.' });
    }
    return this.mux;
  }

  private waitFor<T>(event: string, timeoutMs: number, onTimeout: () => Error): Promise<T> {
    if (this.closed) return Promise.reject(sessionClosed());
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off(event, onEvent);
        this.off('error-final', onError);
        this.off('closed', onClosed);
      };
      const timer = setTimeout(() => {
        done();
        reject(onTimeout());
      }, timeoutMs);
      const onEvent = (v: T) => {
        done();
        resolve(v);
      };
      const onError = (err: Error) => {
        done();
        reject(err);
      };
      const onClosed = () => onError(sessionClosed());
      this.once(event, onEvent);
      this.once('error-final', onError);
      this.once('closed', onClosed);
    });
  }

  /** Engine state changes pushed by the agent as JSON lines on an `events` stream. */
  private followEvents(mux: Mux): void {
    mux.open('events', {}).then(
      (stream) => {
        const lines = new LineSplitter(64 * 1024);
        stream.on('data', (chunk: Buffer) => {
          for (const line of lines.push(chunk)) {
            const e = parseEngineEvent(line);
            if (!e) {
              this.log.warn('ignoring a malformed event from the guest');
              continue;
            }
            this.engine = e;
            this.emit('engine', e);
          }
        });
        stream.on('error', () => {});
      },
      (err: Error) => this.log.warn('cannot open the events stream', { err: err.message }),
    );
  }

  /** Appends a guest log file to its host copy, resuming at the offset reached for this boot. */
  private shipLog(mux: Mux, name: 'engine' | 'agent', hostFile: string, bootId: string): void {
    const offset = this.offsets.get(bootId, name);
    mux.open('logs', { name, offset }).then(
      (stream) => {
        const out = fs.createWriteStream(hostFile, { flags: 'a', mode: 0o600 });
        // A log that cannot be written (logs folder removed, disk full) costs the copy, not the daemon.
        out.on('error', (err) => {
          this.log.warn('cannot write a guest log on the host', { name, err: err.message });
          stream.destroy();
        });
        stream.on('data', (chunk: Buffer) => {
          out.write(chunk);
          this.offsets.add(bootId, name, chunk.length);
        });
        stream.on('error', () => {});
        stream.on('close', () => out.end());
      },
      (err: Error) => this.log.warn('cannot open a log stream', { name, err: err.message }),
    );
  }
}

/**
 * How much of each guest log has been copied to the host, per boot. Saved (debounced) in
 * run/log-offsets.json so a restarted daemon resumes without losing or repeating lines.
 */
class LogOffsets {
  private data: { bootId: string; offsets: Record<string, number> } = { bootId: '', offsets: {} };
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly file: string) {
    try {
      const d = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof this.data;
      if (typeof d.bootId === 'string' && d.offsets && typeof d.offsets === 'object') this.data = d;
    } catch {
      // none yet
    }
  }

  get(bootId: string, name: string): number {
    if (this.data.bootId !== bootId) this.data = { bootId, offsets: {} };
    return this.data.offsets[name] ?? 0;
  }

  add(bootId: string, name: string, n: number): void {
    if (this.data.bootId !== bootId) this.data = { bootId, offsets: {} };
    this.data.offsets[name] = (this.data.offsets[name] ?? 0) + n;
    this.timer ??= setTimeout(() => this.flush(), 500);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    try {
      fs.writeFileSync(this.file, JSON.stringify(this.data), { mode: 0o600 });
    } catch {
      // the run dir is gone (VM stopped): nothing to keep
    }
  }
}

function sessionClosed(): BerthError {
  return new BerthError('AGENT_UNREACHABLE', 'The session with the guest agent was closed while waiting for it.');
}
