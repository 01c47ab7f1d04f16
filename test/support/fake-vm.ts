import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { BerthError } from '../../src/util/errors.js';
import { Mux } from '../../src/control/mux.js';
import { dialUnixSocket, socketLink } from '../../src/control/socket-link.js';
import type { MuxLink } from '../../src/control/mux.js';
import { serveAgentApi } from '../../src/control/rpc.js';
import { fakeAgentHandlers } from './fake-agent.js';
import type { ProgressListener } from '../../src/util/progress.js';
import type { Settings } from '../../src/settings/settings.js';
import type { ImageSource, ResolvedImage } from '../../src/daemon/image-source.js';
import type { Attachment, Booted, BootRequest, DataStore, DataStoreState, LaunchedGuest, PreparedHost, VmDriver } from '../../src/vm/driver.js';
import { emittedWithin } from '../../src/util/events.js';

/**
 * A driver for unit tests of the state machine (docs/backends.md "Testing"). Its guest is an
 * in-process agent that speaks the real control protocol (mux, HELLO, rpc, events, a Docker
 * stream answering /_ping) on a Unix socket, so the host side under test (GuestSession,
 * RunningGuest, the Docker API proxy) is the production code. What a test can make happen:
 * a guest that exits during the boot, an agent that never connects, a crash while running, a
 * shutdown the agent ignores.
 */
export interface FakeBehaviour {
  /** The guest process exits this many ms after launch, before its agent connects. */
  exitDuringBoot?: number;
  /** The agent never connects (the start runs into its deadline). */
  agentSilent?: boolean;
  /** The agent answers system.shutdown but the guest never powers off. */
  ignoreShutdown?: boolean;
  /** The engine reports failed instead of ready. */
  engineFails?: boolean;
  /** The engine answers every Docker API request with HTTP 500 (a failure after the boot). */
  apiFails?: boolean;
}

export class FakeDriver implements VmDriver {
  readonly kind = 'fake';
  readonly sharesBy = '9p' as const;
  readonly hostKernel = false;
  readonly dataStore: FakeDataStore;
  behaviour: FakeBehaviour = {};
  /** Every guest launched or adopted, in order. */
  readonly guests: FakeGuest[] = [];
  /** A guest `adopt()` returns (one an earlier daemon "left running"). */
  leftRunning: FakeGuest | undefined;
  prepared = 0;
  cleanups = 0;
  /** Attachments made by boot and not yet closed. */
  openAttachments = 0;

  constructor(private readonly controlSocket: string, dataPath: string) {
    this.dataStore = new FakeDataStore(dataPath);
  }

  async prepare(_settings: Settings, image: () => Promise<ResolvedImage>, _emit: ProgressListener): Promise<PreparedHost> {
    this.prepared++;
    await image();
    return { accelerator: 'fake', detail: null };
  }

  async boot<T>(_req: BootRequest, attach: (guest: LaunchedGuest) => Attachment<T>, _emit: ProgressListener): Promise<Booted<T>> {
    const guest = await this.launch();
    const attachment = attach(guest);
    this.openAttachments++;
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      this.openAttachments--;
      await attachment.close();
    };
    const exited = new Promise<never>((_, reject) => guest.once('exit', reject));
    exited.catch(() => {});
    try {
      const attached = await Promise.race([attachment.ready, exited]);
      // The controller owns the attachment's parts from here (RunningGuest closes them).
      this.openAttachments--;
      closed = true;
      return { guest, attached, accelerator: 'fake' };
    } catch (err) {
      await close();
      if (!guest.hasExited) await guest.forceOff(1000);
      throw err;
    }
  }

  /** Launches a guest as `boot` does, without attaching: for a test that plays an earlier daemon. */
  async launch(): Promise<FakeGuest> {
    const guest = new FakeGuest(this.controlSocket, this.behaviour);
    this.guests.push(guest);
    await guest.listen();
    return guest;
  }

  async adopt(): Promise<LaunchedGuest | undefined> {
    const g = this.leftRunning;
    this.leftRunning = undefined;
    return g && !g.hasExited ? g : undefined;
  }

  async consoleTail(): Promise<string> {
    return 'fake console: last line';
  }

  async cleanup(): Promise<void> {
    this.cleanups++;
    await fs.rm(this.controlSocket, { force: true });
  }
}

let nextPid = 40_000;

/** A fake guest process: a Unix socket server whose connections each get an agent. */
export class FakeGuest extends EventEmitter implements LaunchedGuest {
  readonly pid = nextPid++;
  private exited = false;
  private readonly server = net.createServer();
  private readonly sockets = new Set<net.Socket>();
  private bootTimer: NodeJS.Timeout | undefined;
  /** Agent RPC calls received, by method. */
  readonly calls: string[] = [];

  constructor(
    private readonly controlSocket: string,
    private readonly behaviour: FakeBehaviour,
  ) {
    super();
  }

  get hasExited(): boolean {
    return this.exited;
  }

  async openControl(): Promise<MuxLink> {
    return socketLink(await dialUnixSocket(this.controlSocket, 20, 20));
  }

  async listen(): Promise<void> {
    await fs.rm(this.controlSocket, { force: true });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => {});
      if (!this.behaviour.agentSilent) this.serveAgent(s);
    });
    await new Promise<void>((resolve) => this.server.listen(this.controlSocket, resolve));
    if (this.behaviour.exitDuringBoot !== undefined) {
      this.bootTimer = setTimeout(() => this.exit(new BerthError('QEMU_EXITED', 'The VM stopped unexpectedly: the fake guest exited during its boot.')), this.behaviour.exitDuringBoot);
    }
  }

  /** The guest dies (QEMU killed, say). */
  crash(): void {
    this.exit(new BerthError('QEMU_EXITED', 'The VM stopped unexpectedly: the fake guest was killed by SIGKILL.'));
  }

  waitExit(timeoutMs: number): Promise<boolean> {
    return this.exited ? Promise.resolve(true) : emittedWithin(this, 'exit', timeoutMs);
  }

  async forceOff(_timeoutMs: number): Promise<void> {
    this.exit(new BerthError('QEMU_EXITED', 'The fake guest was forced off.'));
  }

  private exit(err: BerthError): void {
    if (this.exited) return;
    this.exited = true;
    clearTimeout(this.bootTimer);
    for (const s of this.sockets) s.destroy();
    this.server.close();
    this.emit('exit', err);
  }

  private serveAgent(socket: net.Socket): void {
    const engine = this.behaviour.engineFails ? { state: 'failed', detail: 'dockerd exited with status 1' } : { state: 'ready', readyAfterMs: 5 };
    const mux = new Mux(socketLink(socket), {
      role: 'guest',
      helloIntervalMs: 20,
      info: () => ({ bootId: `boot-${this.pid}`, agentVersion: 'fake', imageKey: 'fake', kernel: 'fake', bootTimes: { initramfs: 0.5 }, agentStartMs: 1, engine }),
    });
    socket.on('close', () => mux.close());
    mux.handle('events', (stream: Duplex) => {
      stream.on('error', () => {});
      stream.write(JSON.stringify({ type: 'engine', ...engine }) + '\n');
    });
    mux.handle('logs', (stream: Duplex) => {
      stream.on('error', () => {});
      stream.resume();
    });
    mux.handle('docker', (stream: Duplex) => answerPing(stream, this.behaviour.apiFails ? 500 : 200));
    const handlers = fakeAgentHandlers();
    serveAgentApi(mux, {
      ...handlers,
      'system.info': async (p) => {
        this.calls.push('system.info');
        return { ...(await handlers['system.info'](p)), streams: mux.streamCount };
      },
      'system.shutdown': async (p) => {
        this.calls.push('system.shutdown');
        if (!this.behaviour.ignoreShutdown) setTimeout(() => this.exit(new BerthError('QEMU_EXITED', 'powered off')), 20);
        return handlers['system.shutdown'](p);
      },
    });
  }
}

/** Answers every HTTP request on a Docker stream with `status` and a two-byte body (enough for /_ping). */
function answerPing(stream: Duplex, status: number): void {
  let buf = '';
  stream.on('error', () => {});
  stream.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    let end: number;
    while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
      buf = buf.slice(end + 4);
      stream.write(`HTTP/1.1 ${status} ${status === 200 ? 'OK' : 'Internal Server Error'}\r\nApi-Version: 1.45\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\nOK`);
    }
  });
}

/** A data store that is a plain file; snapshots are names in a list. */
export class FakeDataStore implements DataStore {
  readonly snapshots: string[] = [];
  readonly engineStamp: string;

  constructor(readonly path: string) {
    this.engineStamp = `${path}.engine.json`;
  }

  async ensure(sizeGiB: number): Promise<DataStoreState> {
    let created = false;
    try {
      await fs.access(this.path);
    } catch {
      await fs.writeFile(this.path, '');
      created = true;
    }
    return { virtualGiB: sizeGiB, allocatedBytes: 0, created };
  }

  async createSnapshot(name: string): Promise<void> {
    this.snapshots.push(name);
  }

  async applySnapshot(name: string): Promise<void> {
    if (!this.snapshots.includes(name)) throw new BerthError('DISK_FAILED', `no snapshot ${name}`);
  }

  async deleteSnapshot(name: string): Promise<void> {
    this.snapshots.splice(this.snapshots.indexOf(name), 1);
  }

  async listSnapshots(): Promise<string[]> {
    return [...this.snapshots];
  }
}

/** An image source whose base and pack are names only (the fake driver boots nothing). */
export function fakeImageSource(): ImageSource & { ensured: number } {
  const image: ResolvedImage = {
    key: 'fakebasekey0000000',
    vmlinux: '/nonexistent/vmlinux',
    initramfs: '/nonexistent/initramfs',
    rootfs: '/nonexistent/rootfs.squashfs',
    cmdline: 'console=ttyS0',
    versions: {} as ResolvedImage['versions'],
    pack: { id: '26', key: 'fakepackkey000000', squashfs: '/nonexistent/pack.squashfs', versions: { title: 'Docker 26 (fake)', engineVersion: '26.1.5' } as ResolvedImage['pack']['versions'], dockerCli: undefined, cliPlugins: {} },
  };
  const source = {
    ensured: 0,
    async ensure(): Promise<ResolvedImage> {
      source.ensured++;
      return image;
    },
    async current(): Promise<ResolvedImage> {
      return image;
    },
  };
  return source;
}
