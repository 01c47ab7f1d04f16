import type { Duplex } from 'node:stream';
import { BROADCAST_IP4, BROADCAST_MAC, formatIp4, type Ip4 } from './address.js';
import { buildArpReply, parseArp, ARP_REQUEST } from './arp.js';
import { ETHERTYPE_ARP, ETHERTYPE_IPV4, parseEthernet } from './ethernet.js';
import { parseEchoRequest } from './icmp-wire.js';
import { IcmpService, type Pinger } from './icmp-service.js';
import { parseIpv4, PROTO_ICMP, PROTO_TCP, PROTO_UDP, type Ipv4Packet } from './ipv4.js';
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT } from './dhcp-wire.js';
import { DNS_PORT, Policy, type NetPlan } from './policy.js';
import { TcpService, type TcpStats } from './tcp-service.js';
import { parseTcp } from './tcp-wire.js';
import { UdpService, type UdpStats } from './udp-service.js';
import { buildUdpFrame, parseUdp, type UdpDatagram } from './udp-wire.js';

/**
 * The translator's network stack: frames in from the guest, frames out to it (docs/network.md).
 * It answers ARP for its own addresses, serves DHCP and DNS on the gateway, answers ICMP echo, and
 * hands TCP and UDP to the services that turn them into host sockets. Every frame is parsed once,
 * with bounds, by the wire modules; a frame that fails to parse is counted and dropped, never thrown.
 */

export interface DnsResponder {
  answer(query: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined>;
  tcpSession(): Duplex;
}

export interface DhcpResponder {
  handle(payload: Buffer): { reply: Buffer; broadcast: boolean; yiaddr: number } | undefined;
}

export type NetLog = (level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;

export interface StackOptions {
  plan: NetPlan;
  mtu: number;
  /** The translator's MAC (gateway and host alias). */
  mac: Buffer;
  allowLinkLocal: boolean;
  deniedHostPorts: () => ReadonlySet<number>;
  /** Unix socket of the 9P file server reached at gateway:564 (docs/files.md), if sharing is on. */
  fileServerSocket?: string;
  dns: DnsResponder;
  dhcp: DhcpResponder;
  emit: (frame: Buffer) => boolean;
  isLinkBlocked: () => boolean;
  log: NetLog;
  pinger?: Pinger;
  /** Overrides for tests. */
  tuning?: Partial<StackTuning>;
}

export interface StackTuning {
  maxTcpFlows: number;
  maxConnecting: number;
  sendQueueMax: number;
  receiveBudget: number;
  queuedMax: number;
  connectTimeoutMs: number;
  maxUdpFlows: number;
  udpIdleMs: number;
  udpActiveIdleMs: number;
}

export const DEFAULT_TUNING: StackTuning = {
  maxTcpFlows: 4096,
  maxConnecting: 256,
  sendQueueMax: 4 * 1024 * 1024,
  receiveBudget: 4 * 1024 * 1024,
  queuedMax: 256 * 1024 * 1024,
  connectTimeoutMs: 30_000,
  maxUdpFlows: 1024,
  udpIdleMs: 30_000,
  udpActiveIdleMs: 180_000,
};

export interface StackStats {
  frames: number;
  dropped: Record<string, number>;
  tcp: TcpStats;
  udp: UdpStats;
  icmp: { answered: number; forwarded: number; dropped: number };
  dns: { udp: number; tcp: number };
  guestMac: string | null;
}

const WINDOW_SCALE = 7; // 4 MiB receive budget needs ≥ 6; 7 leaves room (max 8 MiB)

export class Stack {
  private guestMacAddr: Buffer | undefined;
  private readonly policy: Policy;
  readonly tcp: TcpService;
  private readonly udp: UdpService;
  private readonly icmp: IcmpService;
  private frames = 0;
  private readonly dropped: Record<string, number> = {};
  private dnsCount = { udp: 0, tcp: 0 };

  constructor(private readonly o: StackOptions) {
    const t = { ...DEFAULT_TUNING, ...(o.tuning ?? {}) };
    this.policy = new Policy({ plan: o.plan, allowLinkLocal: o.allowLinkLocal, deniedHostPorts: o.deniedHostPorts, fileServer: o.fileServerSocket !== undefined });
    const guestMac = () => this.guestMacAddr ?? BROADCAST_MAC;
    this.tcp = new TcpService({
      limits: { sendQueueMax: t.sendQueueMax, receiveBudget: t.receiveBudget, windowScale: WINDOW_SCALE, mss: o.mtu - 40 },
      maxFlows: t.maxTcpFlows,
      maxConnecting: t.maxConnecting,
      queuedMax: t.queuedMax,
      connectTimeoutMs: t.connectTimeoutMs,
      route: (dst, port) => {
        const d = this.policy.tcp(dst, port);
        if (d.kind === 'host') return d;
        if (d.kind === 'dns') {
          this.dnsCount.tcp++;
          return { kind: 'local', open: () => o.dns.tcpSession() };
        }
        if (d.kind === 'files' && o.fileServerSocket) return { kind: 'unix', path: o.fileServerSocket };
        return { kind: 'refuse', why: d.kind === 'refuse' ? d.why : 'not a TCP service' };
      },
      emit: o.emit,
      isLinkBlocked: o.isLinkBlocked,
      srcMac: o.mac,
      guestMac,
      log: o.log,
    });
    this.udp = new UdpService({ emit: o.emit, srcMac: o.mac, guestMac, mtu: o.mtu, maxFlows: t.maxUdpFlows, idleMs: t.udpIdleMs, activeIdleMs: t.udpActiveIdleMs, log: o.log });
    this.icmp = new IcmpService({ emit: o.emit, srcMac: o.mac, guestMac, local: new Set([o.plan.gateway, o.plan.hostAlias]), maxInFlight: 8, ...(o.pinger ? { pinger: o.pinger } : {}) });
  }

  get guestMac(): Buffer | undefined {
    return this.guestMacAddr;
  }

  stats(): StackStats {
    return {
      frames: this.frames,
      dropped: { ...this.dropped },
      tcp: this.tcp.stats(),
      udp: this.udp.stats(),
      icmp: this.icmp.stats(),
      dns: { ...this.dnsCount },
      guestMac: this.guestMacAddr ? [...this.guestMacAddr].map((b) => b.toString(16).padStart(2, '0')).join(':') : null,
    };
  }

  /** One frame from the guest. Call `endBatch()` after the frames of one read. */
  input(frame: Buffer): void {
    this.frames++;
    const eth = parseEthernet(frame);
    if (!eth) return this.drop('short frame');
    const toUs = eth.dst.equals(this.o.mac);
    if (!toUs && !eth.dst.equals(BROADCAST_MAC)) return this.drop('not addressed to the translator');
    if (eth.src[0]! & 1) return this.drop('multicast source MAC');
    if (eth.type === ETHERTYPE_ARP) return this.onArp(eth.src, eth.payload);
    if (eth.type !== ETHERTYPE_IPV4) return this.drop(`ethertype 0x${eth.type.toString(16)}`);
    const ip = parseIpv4(eth.payload);
    if (!ip.ok) return this.drop(ip.reason);
    this.learn(eth.src);
    switch (ip.pkt.proto) {
      case PROTO_TCP: {
        if (!toUs) return this.drop('broadcast TCP');
        const t = parseTcp(ip.pkt);
        if (!t.ok) return this.drop(t.reason);
        return this.tcp.input(ip.pkt, t.seg);
      }
      case PROTO_UDP: {
        const u = parseUdp(ip.pkt);
        if (!u.ok) return this.drop(u.reason);
        return this.onUdp(ip.pkt, u.dgram);
      }
      case PROTO_ICMP: {
        const echo = toUs ? parseEchoRequest(ip.pkt) : undefined;
        if (!echo) return this.drop('ICMP other than echo request');
        // The same policy as for TCP and UDP: no pings to loopback, link-local, the subnet's other addresses.
        const dst = ip.pkt.dst;
        if (dst !== this.o.plan.gateway && dst !== this.o.plan.hostAlias && this.policy.icmp(dst).kind === 'refuse') return this.drop('ICMP echo to a refused destination');
        return this.icmp.echo(ip.pkt.src, dst, echo);
      }
      default:
        return this.drop(`IP protocol ${ip.pkt.proto}`);
    }
  }

  endBatch(): void {
    this.tcp.flushAcks();
  }

  linkDrained(): void {
    this.tcp.onLinkDrain();
  }

  /** A published TCP port: opens a connection into the guest for an accepted host socket. */
  openTcpToGuest(guestIp: Ip4, guestPort: number, sock: Duplex): boolean {
    return this.tcp.openToGuest(guestIp, guestPort, this.o.plan.hostAlias, sock);
  }

  /**
   * A published UDP port: sends `payload` into the guest from the host alias address and the
   * given source port (one per host client, chosen by the forwarder).
   */
  sendUdpToGuest(guestIp: Ip4, guestPort: number, srcPort: number, payload: Buffer): void {
    this.o.emit(buildUdpFrame({ srcMac: this.o.mac, dstMac: this.guestMacAddr ?? BROADCAST_MAC, src: this.o.plan.hostAlias, dst: guestIp, srcPort, dstPort: guestPort }, payload));
  }

  /** Guest datagrams to (host alias, port) that a UDP forward claims; set by the port forwarder. */
  udpReplyHandler: ((guestIp: Ip4, guestPort: number, hostAliasPort: number, payload: Buffer) => boolean) | undefined;

  close(): void {
    this.tcp.closeAll('translator stopping');
    this.udp.closeAll();
  }

  private onArp(src: Buffer, payload: Buffer): void {
    const arp = parseArp(payload);
    if (!arp) return this.drop('malformed ARP');
    if (arp.op !== ARP_REQUEST) return; // replies and gratuitous announcements need nothing from us
    this.learn(src);
    const { gateway, hostAlias } = this.o.plan;
    if (arp.targetIp !== gateway && arp.targetIp !== hostAlias) return;
    this.o.emit(buildArpReply(arp, this.o.mac, arp.targetIp));
  }

  private onUdp(ip: Ipv4Packet, d: UdpDatagram): void {
    const dest = this.policy.udp(ip.dst, d.dstPort);
    if (dest.kind === 'dhcp') {
      if (d.srcPort !== DHCP_CLIENT_PORT) return this.drop('DHCP from a port other than 68');
      const r = this.o.dhcp.handle(d.payload);
      if (!r) return;
      const broadcast = r.broadcast;
      this.o.emit(
        buildUdpFrame(
          { srcMac: this.o.mac, dstMac: broadcast ? BROADCAST_MAC : (this.guestMacAddr ?? BROADCAST_MAC), src: this.o.plan.gateway, dst: broadcast ? BROADCAST_IP4 : r.yiaddr, srcPort: DHCP_SERVER_PORT, dstPort: DHCP_CLIENT_PORT },
          r.reply,
        ),
      );
      return;
    }
    if (ip.dst === this.o.plan.hostAlias && this.udpReplyHandler?.(ip.src, d.srcPort, d.dstPort, d.payload)) return;
    if (dest.kind === 'dns') {
      this.dnsCount.udp++;
      const query = Buffer.from(d.payload); // the frame's memory is reused after this turn
      this.o.dns.answer(query, 'udp').then(
        (answer) => {
          if (!answer) return;
          this.o.emit(buildUdpFrame({ srcMac: this.o.mac, dstMac: this.guestMacAddr ?? BROADCAST_MAC, src: ip.dst, dst: ip.src, srcPort: DNS_PORT, dstPort: d.srcPort }, answer));
        },
        (err: Error) => this.o.log('warn', 'dns answer failed', { err: err.message }),
      );
      return;
    }
    if (dest.kind === 'refuse') return this.drop(`UDP to ${formatIp4(ip.dst)}:${d.dstPort} refused: ${dest.why}`);
    if (dest.kind === 'host') this.udp.send(ip.src, d.srcPort, ip.dst, d.dstPort, dest.host, dest.port, d.payload);
  }

  private learn(src: Buffer): void {
    if (!this.guestMacAddr || !this.guestMacAddr.equals(src)) {
      this.guestMacAddr = Buffer.from(src);
      this.o.log('info', 'guest MAC learned', { mac: [...src].map((b) => b.toString(16).padStart(2, '0')).join(':') });
    }
  }

  private drop(reason: string): void {
    // Group by the reason's first words so the table stays small whatever the guest sends.
    // Hex numbers too: `ethertype 0x${...}` would otherwise add a key per EtherType the guest sends.
    const key = reason.replace(/(?<=[\s(:./=])(0x[0-9a-f]+|\d+)/gi, 'N').slice(0, 60);
    this.dropped[key] = (this.dropped[key] ?? 0) + 1;
  }
}
