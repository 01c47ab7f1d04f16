import { DHCP_SERVER_PORT } from './dhcp-wire.js';
import { formatIp4, inSubnet, isMulticastIp4, parseSubnet, BROADCAST_IP4, type Ip4, type Subnet } from './address.js';

/**
 * Where guest traffic may go (docs/network.md, "What the guest can reach on the host, and what it
 * cannot"). The one place that decides; every rule has an attack test (policy.test.ts and the e2e
 * security suite).
 */

/** The translator's addresses on the guest network. */
export interface NetPlan {
  subnet: Subnet;
  gateway: Ip4;
  hostAlias: Ip4;
  guest: Ip4;
}

export const DNS_PORT = 53;
/** The 9P file server, on the gateway (docs/files.md "Transport"). */
export const P9_PORT = 564;

/** Derives the plan from a subnet: gateway .1, guest .2, host alias = last usable address. */
export function planFor(subnetText: string): NetPlan {
  const subnet = parseSubnet(subnetText);
  if (!subnet || subnet.prefix > 24) throw new Error(`network.subnet must be an IPv4 network of /24 or larger, like 198.19.248.0/24 (got ${JSON.stringify(subnetText)})`);
  const broadcast = (subnet.network | ~subnet.mask) >>> 0;
  return { subnet, gateway: subnet.network + 1, guest: subnet.network + 2, hostAlias: broadcast - 1 };
}

export type Destination =
  /** An ordinary host socket to this address. */
  | { kind: 'host'; host: string; port: number }
  /** A service of the translator itself. */
  | { kind: 'dns' }
  | { kind: 'dhcp' }
  | { kind: 'files' }
  | { kind: 'refuse'; why: string };

export interface PolicyOptions {
  plan: NetPlan;
  /** Let the guest reach 169.254.0.0/16 (cloud metadata services); off by default. */
  allowLinkLocal: boolean;
  /** Host TCP ports berth itself listens on that the guest must not reach through the host alias. */
  deniedHostPorts: () => ReadonlySet<number>;
  /** The file server is on (gateway:564 leads to it). */
  fileServer?: boolean;
}

const LINK_LOCAL = parseSubnet('169.254.0.0/16')!;
const LOOPBACK = parseSubnet('127.0.0.0/8')!;
const THIS_NETWORK = parseSubnet('0.0.0.0/8')!;

export class Policy {
  constructor(private readonly o: PolicyOptions) {}

  tcp(dst: Ip4, port: number): Destination {
    return this.decide(dst, port, 'tcp');
  }

  udp(dst: Ip4, port: number): Destination {
    return this.decide(dst, port, 'udp');
  }

  /** ICMP echo: the same address rules (any port-independent refusal applies). */
  icmp(dst: Ip4): Destination {
    return this.decide(dst, 1, 'udp');
  }

  private decide(dst: Ip4, port: number, proto: 'tcp' | 'udp'): Destination {
    const { plan } = this.o;
    if (port === 0) return { kind: 'refuse', why: 'port 0' };
    if (dst === plan.gateway) {
      if (port === DNS_PORT) return { kind: 'dns' };
      if (proto === 'tcp' && port === P9_PORT && this.o.fileServer) return { kind: 'files' };
      if (proto === 'udp' && port === DHCP_SERVER_PORT) return { kind: 'dhcp' };
      return { kind: 'refuse', why: `the gateway serves only DNS${proto === 'udp' ? ' and DHCP' : this.o.fileServer ? ' and the file server' : ''}` };
    }
    if (dst === plan.hostAlias) {
      if (proto === 'tcp' && this.o.deniedHostPorts().has(port)) return { kind: 'refuse', why: `host port ${port} belongs to berth itself` };
      return { kind: 'host', host: '127.0.0.1', port };
    }
    if (dst === BROADCAST_IP4 && proto === 'udp' && port === DHCP_SERVER_PORT) return { kind: 'dhcp' };
    if (inSubnet(dst, plan.subnet)) return { kind: 'refuse', why: `${formatIp4(dst)} is not an address of the berth network` };
    if (dst === BROADCAST_IP4 || isMulticastIp4(dst)) return { kind: 'refuse', why: 'broadcast or multicast' };
    if (inSubnet(dst, LOOPBACK) || inSubnet(dst, THIS_NETWORK)) return { kind: 'refuse', why: 'martian destination' };
    if (inSubnet(dst, LINK_LOCAL) && !this.o.allowLinkLocal) return { kind: 'refuse', why: 'link-local addresses (cloud metadata) are off; setting network.allowLinkLocal' };
    return { kind: 'host', host: formatIp4(dst), port };
  }
}
