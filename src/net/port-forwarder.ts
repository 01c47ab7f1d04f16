import dgram from 'node:dgram';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { parseIp4, type Ip4 } from './address.js';
import type { NetLog, Stack } from './stack.js';

/**
 * Host listeners for published ports (docs/network.md "Port publishing"), inside the translator's
 * worker: an accepted TCP connection becomes a flow the stack opens into the guest; a UDP datagram
 * from a host client is sent into the guest from a source port reserved for that client, and the
 * guest's answers to that port go back to the client.
 *
 * Listeners are exclusive (no SO_REUSEPORT): a port another program holds is reported as failed,
 * never shared or taken over (Lima PR #5293: a guest must not be able to take a host port over).
 */

export interface ForwardSpec {
  /** Stable id chosen by the publisher (e.g. "tcp/127.0.0.1:8080"). */
  id: string;
  proto: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
  guestIp: string;
  guestPort: number;
  /** Also listen on ::1 (best effort), so `localhost` works whichever family a client tries first. */
  alsoIpv6Loopback?: boolean;
}

export interface ForwardState {
  id: string;
  state: 'listening' | 'failed';
  error?: string;
}

interface Active {
  spec: ForwardSpec;
  guestIp: Ip4;
  close(): void;
}

const UDP_CLIENT_IDLE_MS = 60_000;
const MAX_UDP_CLIENTS = 256;

export class PortForwarder {
  private readonly active = new Map<string, Active>();
  private readonly states = new Map<string, ForwardState>();
  /** Host-alias source port → the UDP forward and client it belongs to. */
  private readonly udpClients = new Map<number, { fwd: string; address: string; port: number; sock: dgram.Socket; last: number }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly stack: Stack,
    private readonly log: NetLog,
    private readonly onStates: (states: ForwardState[]) => void,
  ) {
    stack.udpReplyHandler = (guestIp, guestPort, aliasPort, payload) => this.udpReply(guestIp, guestPort, aliasPort, payload);
  }

  /** Makes the listeners match `specs`: opens new ones, closes removed ones, keeps the rest. */
  set(specs: ForwardSpec[]): void {
    const wanted = new Map(specs.map((s) => [s.id, s]));
    for (const [id, a] of this.active) {
      const w = wanted.get(id);
      if (!w || !sameSpec(w, a.spec)) {
        a.close();
        this.active.delete(id);
        this.states.delete(id);
      }
    }
    for (const s of specs) if (!this.active.has(s.id)) this.open(s);
    this.report();
  }

  closeAll(): void {
    for (const a of this.active.values()) a.close();
    this.active.clear();
    this.states.clear();
    if (this.sweeper) clearInterval(this.sweeper);
  }

  private report(): void {
    this.onStates([...this.states.values()]);
  }

  private setState(id: string, st: ForwardState): void {
    if (!this.active.has(id)) return;
    this.states.set(id, st);
    this.report();
  }

  private open(spec: ForwardSpec): void {
    const guestIp = parseIp4(spec.guestIp);
    if (guestIp === undefined) {
      this.states.set(spec.id, { id: spec.id, state: 'failed', error: `the container address ${spec.guestIp} is not an IPv4 address` });
      return;
    }
    const closers: (() => void)[] = [];
    const active: Active = { spec, guestIp, close: () => closers.forEach((c) => c()) };
    this.active.set(spec.id, active);
    const hosts = [spec.hostIp, ...(spec.alsoIpv6Loopback ? ['::1'] : [])];
    let primaryFailed = false;
    for (const [i, host] of hosts.entries()) {
      const primary = i === 0;
      const fail = (err: NodeJS.ErrnoException) => {
        if (!primary) {
          this.log('debug', 'optional ::1 listener not available', { forward: spec.id, err: err.code ?? err.message });
          return;
        }
        // The port belongs to another program: keep no ::1 listener either, or clients of
        // "localhost" that try ::1 first would reach the container instead of that program.
        primaryFailed = true;
        closers.slice(1).forEach((c) => c());
        const error = describeListenError(spec, err);
        this.log('warn', error, { forward: spec.id });
        this.setState(spec.id, { id: spec.id, state: 'failed', error });
      };
      const ok = () => {
        if (primary) this.setState(spec.id, { id: spec.id, state: 'listening' });
        else if (primaryFailed) closers[i]?.();
      };
      if (spec.proto === 'tcp') closers.push(this.listenTcp(spec, guestIp, host, ok, fail));
      else closers.push(this.listenUdp(spec, guestIp, host, ok, fail));
    }
  }

  private listenTcp(spec: ForwardSpec, guestIp: Ip4, host: string, ok: () => void, fail: (e: NodeJS.ErrnoException) => void): () => void {
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (sock) => {
      sock.setNoDelay(true);
      sock.on('error', () => {});
      this.stack.openTcpToGuest(guestIp, spec.guestPort, sock);
    });
    server.on('error', fail);
    server.listen({ host, port: spec.hostPort, exclusive: true, ipv6Only: host.includes(':') }, ok);
    return () => server.close();
  }

  private listenUdp(spec: ForwardSpec, guestIp: Ip4, host: string, ok: () => void, fail: (e: NodeJS.ErrnoException) => void): () => void {
    const sock = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', ipv6Only: host.includes(':') });
    sock.on('error', fail);
    sock.on('message', (msg, rinfo) => {
      const aliasPort = this.udpClientPort(spec.id, rinfo.address, rinfo.port, sock);
      if (aliasPort) this.stack.sendUdpToGuest(guestIp, spec.guestPort, aliasPort, msg);
    });
    sock.bind({ address: host, port: spec.hostPort, exclusive: true }, ok);
    return () => {
      for (const [p, c] of this.udpClients) if (c.sock === sock) this.udpClients.delete(p);
      try {
        sock.close();
      } catch {
        // never bound
      }
    };
  }

  /** The host-alias port that stands for this host client of a UDP forward (allocated on first use). */
  private udpClientPort(fwd: string, address: string, port: number, sock: dgram.Socket): number | undefined {
    for (const [p, c] of this.udpClients) {
      if (c.fwd === fwd && c.address === address && c.port === port) {
        c.last = Date.now();
        return p;
      }
    }
    if (this.udpClients.size >= MAX_UDP_CLIENTS) return undefined;
    for (let tries = 0; tries < 32; tries++) {
      const p = 32768 + (randomBytes(2).readUInt16BE(0) % (61000 - 32768));
      if (this.udpClients.has(p)) continue;
      this.udpClients.set(p, { fwd, address, port, sock, last: Date.now() });
      this.sweeper ??= setInterval(() => this.sweepUdp(), 5000);
      return p;
    }
    return undefined;
  }

  private udpReply(guestIp: Ip4, guestPort: number, aliasPort: number, payload: Buffer): boolean {
    const c = this.udpClients.get(aliasPort);
    if (!c) return false;
    const a = this.active.get(c.fwd);
    if (!a || a.guestIp !== guestIp || a.spec.guestPort !== guestPort) return false;
    c.last = Date.now();
    c.sock.send(Buffer.from(payload), c.port, c.address);
    return true;
  }

  private sweepUdp(): void {
    const now = Date.now();
    for (const [p, c] of this.udpClients) if (now - c.last > UDP_CLIENT_IDLE_MS) this.udpClients.delete(p);
    if (this.udpClients.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }
}

function sameSpec(a: ForwardSpec, b: ForwardSpec): boolean {
  return a.proto === b.proto && a.hostIp === b.hostIp && a.hostPort === b.hostPort && a.guestIp === b.guestIp && a.guestPort === b.guestPort && !!a.alsoIpv6Loopback === !!b.alsoIpv6Loopback;
}

function describeListenError(spec: ForwardSpec, err: NodeJS.ErrnoException): string {
  const where = `${spec.proto.toUpperCase()} port ${spec.hostPort} on ${spec.hostIp}`;
  switch (err.code) {
    case 'EADDRINUSE':
      return `${where} is already in use by another program on the host; the container keeps running but is not reachable there (publish another host port, or stop that program).`;
    case 'EACCES':
      return `${where} needs privileges berth does not have (ports below 1024 need root or CAP_NET_BIND_SERVICE); publish a port of 1024 or above.`;
    case 'EADDRNOTAVAIL':
      return `${where}: the address ${spec.hostIp} does not exist on this host.`;
    default:
      return `${where} could not be opened: ${err.code ?? err.message}.`;
  }
}
