import dgram from 'node:dgram';
import type { Ip4 } from './address.js';
import { buildUdpFrame } from './udp-wire.js';
import { IPV4_HEADER } from './ipv4.js';

/**
 * Guest UDP flows as host sockets (docs/network.md "UDP and ICMP"): one `dgram` socket per guest
 * (source, destination) pair. Replies are accepted only from the destination the guest sent to, as
 * a NAT would. Flows close after `idleMs` without traffic, or `activeIdleMs` once the far side has
 * answered; beyond `maxFlows` the least recently used flow is closed.
 */

export interface UdpServiceOptions {
  emit: (frame: Buffer) => boolean;
  srcMac: Buffer;
  guestMac: () => Buffer;
  mtu: number;
  maxFlows: number;
  idleMs: number;
  activeIdleMs: number;
  log: (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

interface UdpFlow {
  key: string;
  sock: dgram.Socket;
  guestIp: Ip4;
  guestPort: number;
  peerIp: Ip4;
  peerPort: number;
  host: string;
  port: number;
  lastActive: number;
  answered: boolean;
}

export interface UdpStats {
  flows: number;
  sent: number;
  received: number;
  dropped: number;
}

const SWEEP_MS = 5000;

export class UdpService {
  private readonly flows = new Map<string, UdpFlow>();
  private sweeper: NodeJS.Timeout | undefined;
  private counters = { sent: 0, received: 0, dropped: 0 };

  constructor(private readonly o: UdpServiceOptions) {}

  stats(): UdpStats {
    return { flows: this.flows.size, ...this.counters };
  }

  /**
   * Sends a guest datagram to `host:port`. The guest sees replies as coming from `peerIp:peerPort`
   * (where it sent the datagram).
   */
  send(guestIp: Ip4, guestPort: number, peerIp: Ip4, peerPort: number, host: string, port: number, payload: Buffer): void {
    const key = `${guestIp}:${guestPort}>${peerIp}:${peerPort}`;
    let flow = this.flows.get(key);
    if (flow) {
      this.flows.delete(key); // re-insert: Map order is recency order
      this.flows.set(key, flow);
    } else {
      if (this.flows.size >= this.o.maxFlows) this.closeFlow(this.flows.values().next().value as UdpFlow, 'flow table full');
      flow = this.open(key, guestIp, guestPort, peerIp, peerPort, host, port);
    }
    flow.lastActive = Date.now();
    this.counters.sent++;
    flow.sock.send(payload, port, host, (err) => {
      if (err) {
        this.counters.dropped++;
        this.o.log('debug', 'udp send failed', { to: `${host}:${port}`, err: (err as NodeJS.ErrnoException).code ?? err.message });
      }
    });
  }

  closeAll(): void {
    for (const f of [...this.flows.values()]) this.closeFlow(f, 'translator stopping');
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  private open(key: string, guestIp: Ip4, guestPort: number, peerIp: Ip4, peerPort: number, host: string, port: number): UdpFlow {
    const sock = dgram.createSocket('udp4');
    const flow: UdpFlow = { key, sock, guestIp, guestPort, peerIp, peerPort, host, port, lastActive: Date.now(), answered: false };
    sock.on('message', (msg, rinfo) => {
      if (rinfo.address !== host || rinfo.port !== port) {
        this.counters.dropped++;
        return; // not the destination the guest talks to
      }
      this.toGuest(flow, msg);
    });
    sock.on('error', (err) => {
      this.o.log('debug', 'udp flow socket error', { flow: key, err: (err as NodeJS.ErrnoException).code ?? err.message });
      this.closeFlow(flow, 'socket error');
    });
    this.flows.set(key, flow);
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS);
    return flow;
  }

  private toGuest(flow: UdpFlow, msg: Buffer): void {
    if (msg.length > this.o.mtu - IPV4_HEADER - 8) {
      // It cannot cross the link in one frame and the translator does not fragment.
      this.counters.dropped++;
      return;
    }
    flow.lastActive = Date.now();
    flow.answered = true;
    this.counters.received++;
    this.o.emit(buildUdpFrame({ srcMac: this.o.srcMac, dstMac: this.o.guestMac(), src: flow.peerIp, dst: flow.guestIp, srcPort: flow.peerPort, dstPort: flow.guestPort }, msg));
  }

  private sweep(): void {
    const now = Date.now();
    for (const f of [...this.flows.values()]) {
      const limit = f.answered ? this.o.activeIdleMs : this.o.idleMs;
      if (now - f.lastActive > limit) this.closeFlow(f, 'idle');
    }
    if (this.flows.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  private closeFlow(f: UdpFlow, why: string): void {
    if (this.flows.get(f.key) !== f) return;
    this.flows.delete(f.key);
    try {
      f.sock.close();
    } catch {
      // already closed
    }
    this.o.log('debug', 'udp flow closed', { flow: f.key, why });
  }
}
