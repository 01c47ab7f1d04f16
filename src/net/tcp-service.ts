import net from 'node:net';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Ip4 } from './address.js';
import type { Ipv4Packet } from './ipv4.js';
import { ACK, buildTcpFrame, FIN, RST, SYN, seqAdd, type TcpSegment } from './tcp-wire.js';
import { flowKey, TcpFlow, type FlowEnv, type FlowLimits } from './tcp-flow.js';

/**
 * The TCP side of the translator: the flow table, new connections from the guest (host connects,
 * with limits), connections into the guest for published ports, resets for segments that belong
 * to no flow, the shared retransmission timer, and the memory bounds (docs/network.md "Bounds").
 */

/** Where a guest connection goes; decided by the stack's policy (policy.ts). */
export type TcpRoute =
  | { kind: 'host'; host: string; port: number }
  /** A local service of berth behind a Unix socket (the 9P file server). */
  | { kind: 'unix'; path: string }
  /** An in-process service (DNS over TCP): a fresh duplex per connection. */
  | { kind: 'local'; open: () => Duplex }
  | { kind: 'refuse'; why: string };

export interface TcpServiceOptions {
  limits: FlowLimits;
  maxFlows: number;
  maxConnecting: number;
  /** Host-to-guest bytes queued across all flows before every host socket pauses. */
  queuedMax: number;
  connectTimeoutMs: number;
  route: (dstIp: Ip4, dstPort: number) => TcpRoute;
  /** Sends a frame to the guest; false when the link is congested. */
  emit: (frame: Buffer) => boolean;
  isLinkBlocked: () => boolean;
  srcMac: Buffer;
  guestMac: () => Buffer;
  log: (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

export interface TcpStats {
  flows: number;
  connecting: number;
  queuedBytes: number;
  opened: number;
  refused: number;
  resetsSent: number;
  connectFailures: number;
}

const TICK_MS = 50;

export class TcpService {
  private readonly flows = new Map<string, TcpFlow>();
  private readonly timed = new Set<TcpFlow>();
  private readonly waitingLink = new Set<TcpFlow>();
  private readonly pressured = new Set<TcpFlow>();
  private readonly acksDue = new Set<TcpFlow>();
  private timer: NodeJS.Timeout | undefined;
  private connecting = 0;
  private queued = 0;
  private counters = { opened: 0, refused: 0, resetsSent: 0, connectFailures: 0 };
  private readonly env: FlowEnv;

  constructor(private readonly o: TcpServiceOptions) {
    const self = this;
    this.env = {
      emit: (frame) => o.emit(frame),
      get linkBlocked() {
        return o.isLinkBlocked();
      },
      waitForLink: (flow) => this.waitingLink.add(flow),
      ackDue: (flow) => this.acksDue.add(flow),
      adjustQueued: (delta, flow) => this.adjustQueued(delta, flow),
      get globalPressure() {
        return self.queued > o.queuedMax;
      },
      schedule: (flow) => this.schedule(flow),
      closed: (flow, why) => this.onFlowClosed(flow, why),
      srcMac: o.srcMac,
      get guestMac() {
        return o.guestMac();
      },
    };
  }

  stats(): TcpStats {
    return { flows: this.flows.size, connecting: this.connecting, queuedBytes: this.queued, ...this.counters };
  }

  /** A TCP segment from the guest. */
  input(ip: Ipv4Packet, seg: TcpSegment): void {
    const key = flowKey(ip.src, seg.srcPort, ip.dst, seg.dstPort);
    const flow = this.flows.get(key);
    const isSyn = (seg.flags & (SYN | ACK | RST)) === SYN; // ECE/CWR are fine (google/gvisor#7075)
    if (flow) {
      if (isSyn && flow.state !== 'connecting' && flow.state !== 'synReceived' && flow.origin === 'guest' && flow.synSeq !== seg.seq) {
        // A new connection on the same ports: the guest has forgotten the old one, whose host
        // side is then a broken connection (reset, not a clean end).
        flow.abortHostOnly('replaced by a new connection on the same ports');
        return this.newConnection(key, ip, seg);
      }
      return flow.input(seg);
    }
    if (isSyn) return this.newConnection(key, ip, seg);
    this.resetNoFlow(ip, seg);
  }

  /** Sends the ACKs that segments of the last batch made due (one per flow per batch). */
  flushAcks(): void {
    for (const f of this.acksDue) f.flushAck();
    this.acksDue.clear();
  }

  /** The link to QEMU drained: flows that waited for it send again. */
  onLinkDrain(): void {
    const waiting = [...this.waitingLink];
    this.waitingLink.clear();
    for (const f of waiting) {
      if (this.o.isLinkBlocked()) {
        this.waitingLink.add(f);
        continue;
      }
      f.pump();
    }
  }

  /**
   * Opens a connection into the guest for an accepted (paused) host socket: a published port.
   * Returns false (and resets the socket) when limits forbid it.
   */
  openToGuest(guestIp: Ip4, guestPort: number, peerIp: Ip4, sock: Duplex): boolean {
    if (this.flows.size >= this.o.maxFlows) {
      this.o.log('warn', 'too many TCP flows; refusing a published-port connection', { flows: this.flows.size });
      sock.destroy();
      return false;
    }
    let peerPort = 0;
    for (let tries = 0; tries < 64; tries++) {
      const p = 32768 + (randomBytes(2).readUInt16BE(0) % (61000 - 32768));
      if (!this.flows.has(flowKey(guestIp, guestPort, peerIp, p))) {
        peerPort = p;
        break;
      }
    }
    if (!peerPort) {
      sock.destroy();
      return false;
    }
    const flow = new TcpFlow('host', guestIp, guestPort, peerIp, peerPort, this.env, this.o.limits, randomIss());
    this.flows.set(flow.key, flow);
    this.counters.opened++;
    flow.openToGuest(sock);
    return true;
  }

  /** Resets every flow (the translator is stopping). */
  closeAll(why: string): void {
    for (const f of [...this.flows.values()]) f.abort(why);
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private newConnection(key: string, ip: Ipv4Packet, seg: TcpSegment): void {
    const refuse = (why: string) => {
      this.counters.refused++;
      this.o.log('debug', 'refused a guest TCP connection', { to: `${ip.dst}:${seg.dstPort}`, why });
      this.sendReset(ip, seg, 0, seqAdd(seg.seq, 1), RST | ACK);
    };
    if (this.flows.size >= this.o.maxFlows) return refuse(`flow table full (${this.o.maxFlows})`);
    const route = this.o.route(ip.dst, seg.dstPort);
    if (route.kind === 'refuse') return refuse(route.why);
    if (route.kind !== 'local' && this.connecting >= this.o.maxConnecting) return refuse(`${this.o.maxConnecting} connects already in flight`);

    const flow = new TcpFlow('guest', ip.src, seg.srcPort, ip.dst, seg.dstPort, this.env, this.o.limits, randomIss());
    flow.acceptSyn(seg);
    this.flows.set(key, flow);
    this.counters.opened++;
    if (route.kind === 'local') return flow.hostConnected(route.open());

    this.connecting++;
    let settled = false;
    const sock = route.kind === 'unix' ? net.connect({ path: route.path, allowHalfOpen: true }) : net.connect({ host: route.host, port: route.port, allowHalfOpen: true, noDelay: true });
    const done = (err?: Error) => {
      if (settled) return;
      settled = true;
      this.connecting--;
      clearTimeout(timer);
      sock.off('error', done);
      if (err) {
        this.counters.connectFailures++;
        sock.destroy();
        flow.hostConnectFailed((err as NodeJS.ErrnoException).code ?? err.message);
      } else {
        flow.hostConnected(sock);
      }
    };
    const timer = setTimeout(() => done(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })), this.o.connectTimeoutMs);
    sock.once('connect', () => done());
    sock.on('error', done);
  }

  /** RFC 9293 §3.10.7.1: the reply to a segment that belongs to no connection. Never answers an RST. */
  private resetNoFlow(ip: Ipv4Packet, seg: TcpSegment): void {
    if (seg.flags & RST) return;
    if (seg.flags & ACK) return this.sendReset(ip, seg, seg.ack, 0, RST);
    const len = seg.payload.length + (seg.flags & SYN ? 1 : 0) + (seg.flags & FIN ? 1 : 0);
    this.sendReset(ip, seg, 0, seqAdd(seg.seq, len), RST | ACK);
  }

  private sendReset(ip: Ipv4Packet, seg: TcpSegment, seq: number, ack: number, flags: number): void {
    this.counters.resetsSent++;
    this.o.emit(
      buildTcpFrame({ srcMac: this.o.srcMac, dstMac: this.o.guestMac(), src: ip.dst, dst: ip.src, srcPort: seg.dstPort, dstPort: seg.srcPort, seq, ack, flags, window: 0 }),
    );
  }

  private adjustQueued(delta: number, flow: TcpFlow): void {
    const wasPressured = this.queued > this.o.queuedMax;
    this.queued += delta;
    if (delta > 0 && this.queued > this.o.queuedMax) this.pressured.add(flow);
    if (wasPressured && this.queued <= this.o.queuedMax / 2) {
      const relieved = [...this.pressured];
      this.pressured.clear();
      for (const f of relieved) f.relieve();
    }
  }

  private schedule(flow: TcpFlow): void {
    this.timed.add(flow);
    this.timer ??= setInterval(() => this.tick(), TICK_MS);
  }

  private tick(): void {
    const now = performance.now();
    for (const f of this.timed) {
      const d = f.nextDeadline;
      if (d === 0 || f.state === 'closed') {
        this.timed.delete(f);
        continue;
      }
      if (now >= d) f.tick(now);
    }
    if (this.timed.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  private onFlowClosed(flow: TcpFlow, why: string): void {
    if (this.flows.get(flow.key) === flow) this.flows.delete(flow.key);
    this.timed.delete(flow);
    this.waitingLink.delete(flow);
    this.pressured.delete(flow);
    this.acksDue.delete(flow);
    this.o.log('debug', 'tcp flow closed', { flow: flow.key, why });
  }
}

function randomIss(): number {
  return randomBytes(4).readUInt32BE(0);
}
