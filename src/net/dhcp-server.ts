/**
 * The translator's DHCP server (docs/network.md, "DHCP and the guest's network"): one static
 * lease, the VM's address, handed out with the gateway as router and DNS server, the link MTU, the
 * host's domain and search list, and an (infinite by default) lease. Stateless: every answer
 * follows from the configuration and the request alone.
 *
 * `handle()` takes the UDP payload a guest sent to port 67 and returns the reply payload; the
 * caller wraps it in UDP (67 → 68), IPv4 (from serverIp) and Ethernet.
 */

import { formatIp4, formatMac, type Ip4 } from './address.js';
import {
  BOOTREQUEST,
  DhcpMessageType,
  DhcpOption,
  buildDhcpReply,
  clientId,
  dhcpMessageType,
  encodeDomainSearch,
  ip4Value,
  isValidDomainName,
  maxMessageSize,
  parameterRequestList,
  parseDhcpMessage,
  requestedIp,
  serverId,
  u16Value,
  u32Value,
  type DhcpMessage,
} from './dhcp-wire.js';

export interface DhcpConfig {
  serverIp: Ip4;
  subnetMask: Ip4;
  router: Ip4;
  /** Option 6; omitted when empty. */
  dnsServers: Ip4[];
  /** The one address we lease (the VM). */
  clientIp: Ip4;
  /** Option 26, 68..65535 (RFC 2132 §5.1). */
  mtu: number;
  /** Option 15; omitted when absent or empty. */
  domainName?: string;
  /** Option 119; omitted when empty. Invalid names are skipped (with a warning). */
  searchList: string[];
  /** Option 51; 0xffffffff = infinite (RFC 2132 §9.2). */
  leaseSeconds: number;
  /**
   * When set, only this hardware address (6 bytes) is answered: the static lease of the VM's MAC
   * (docs/network.md, "Address plan"). Others, e.g. a container with its own MAC bridged onto the
   * link, get no answer rather than a second copy of the VM's address.
   */
  clientMac?: Buffer;
}

export type DhcpLogLevel = 'debug' | 'info' | 'warn';
export type DhcpLog = (level: DhcpLogLevel, msg: string, fields?: Record<string, unknown>) => void;

export interface DhcpAnswer {
  reply: Buffer;
  /**
   * True when the client set the BROADCAST flag or has no address yet (ciaddr 0), and for every
   * NAK (RFC 2131 §4.1): send to 255.255.255.255 and the client's MAC. Otherwise unicast to
   * `yiaddr` and the client's MAC (chaddr).
   */
  broadcast: boolean;
  /**
   * Where the reply is unicast when `broadcast` is false: the address the reply gives the client
   * (its yiaddr), or for an INFORM, whose reply carries yiaddr 0, the client's own ciaddr.
   */
  yiaddr: Ip4;
}

/** IPv4 (20) + UDP (8) header bytes; option 57 counts them (RFC 2132 §9.10). */
const IP_UDP_HEADERS = 28;
/** RFC 2131 §2: every client accepts DHCP messages in 576-byte datagrams; option 57's floor too. */
const MIN_MAX_MESSAGE = 576;

const noLog: DhcpLog = () => {};

/** Options the server sends, in default order after 53 and 54. */
type Offered = Array<readonly [tag: number, value: Buffer]>;

export class DhcpServer {
  private readonly cfg: DhcpConfig;
  private readonly log: DhcpLog;
  /** Option values computed once from the configuration (every tag except 53, 54, 51). */
  private readonly common: Offered;
  /** Tags in `common` that may be dropped, in this order, when a reply is too large. */
  private static readonly DROPPABLE = [DhcpOption.DomainSearch, DhcpOption.DomainName];

  /** Throws on an invalid configuration (a bug in the caller, not guest input). */
  constructor(cfg: DhcpConfig, log: DhcpLog = noLog) {
    if (!Number.isInteger(cfg.mtu) || cfg.mtu < 68 || cfg.mtu > 0xffff) throw new RangeError(`invalid MTU ${cfg.mtu}`);
    if (!Number.isInteger(cfg.leaseSeconds) || cfg.leaseSeconds < 0 || cfg.leaseSeconds > 0xffffffff) {
      throw new RangeError(`invalid lease time ${cfg.leaseSeconds}`);
    }
    if (cfg.clientMac && cfg.clientMac.length !== 6) throw new RangeError('clientMac must be 6 bytes');
    this.cfg = cfg;
    this.log = log;

    const common: Offered = [
      [DhcpOption.SubnetMask, ip4Value(cfg.subnetMask)],
      [DhcpOption.Router, ip4Value(cfg.router)],
    ];
    if (cfg.dnsServers.length > 0) common.push([DhcpOption.DnsServers, ip4Value(...cfg.dnsServers)]);
    common.push([DhcpOption.InterfaceMtu, u16Value(cfg.mtu)]);
    if (cfg.domainName !== undefined && cfg.domainName !== '') {
      if (isValidDomainName(cfg.domainName)) common.push([DhcpOption.DomainName, Buffer.from(cfg.domainName.replace(/\.$/, ''), 'latin1')]);
      else log('warn', 'dhcp: not sending an invalid domain name', { domain: cfg.domainName });
    }
    const search = cfg.searchList.filter((n) => {
      if (isValidDomainName(n)) return true;
      log('warn', 'dhcp: leaving an invalid name out of the search list', { domain: n });
      return false;
    });
    if (search.length > 0) common.push([DhcpOption.DomainSearch, encodeDomainSearch(search)]);
    this.common = common;
  }

  /**
   * Handles one DHCP message (the UDP payload sent to port 67). Returns the reply and where to send
   * it, or undefined when no answer is due (malformed, not a BOOTREQUEST, not for us, RELEASE,
   * DECLINE). Never throws.
   */
  handle(payload: Buffer): DhcpAnswer | undefined {
    try {
      return this.handleUnsafe(payload);
    } catch (err) {
      this.log('warn', 'dhcp: internal error while handling a message', { err: err instanceof Error ? err.message : String(err) });
      return undefined;
    }
  }

  private handleUnsafe(payload: Buffer): DhcpAnswer | undefined {
    const parsed = parseDhcpMessage(payload);
    if (!parsed.ok) {
      this.log('debug', 'dhcp: dropped a malformed message', { reason: parsed.reason, bytes: payload.length });
      return undefined;
    }
    const msg = parsed.msg;
    if (msg.op !== BOOTREQUEST) return undefined; // a BOOTREPLY: another server on the link, or our own echo
    const type = dhcpMessageType(msg);
    const fields = { type: type === undefined ? 'none' : DhcpMessageType[type], mac: formatMac(msg.chaddr), xid: hex(msg.xid) };
    if (type === undefined) {
      // Plain BOOTP (no option 53) or a bad option 53: not served.
      this.log('debug', 'dhcp: ignored a message without a valid DHCP message type', fields);
      return undefined;
    }
    if (msg.giaddr !== 0) {
      // A relayed message would need its reply sent to the relay (RFC 2131 §4.1); the guest link
      // has no relays, so this is not a client of ours.
      this.log('debug', 'dhcp: ignored a relayed message', { ...fields, giaddr: formatIp4(msg.giaddr) });
      return undefined;
    }
    if (this.cfg.clientMac && !this.cfg.clientMac.equals(msg.chaddr)) {
      this.log('debug', 'dhcp: ignored a client other than the VM', fields);
      return undefined;
    }

    switch (type) {
      case DhcpMessageType.Discover:
        this.log('debug', 'dhcp: offering', { ...fields, ip: formatIp4(this.cfg.clientIp) });
        return this.answer(msg, DhcpMessageType.Offer);

      case DhcpMessageType.Request: {
        // RFC 2131 §4.3.2: a REQUEST naming another server id means the client chose that server
        // (SELECTING state); we stay silent.
        const sid = serverId(msg);
        if (sid !== undefined && sid !== this.cfg.serverIp) {
          this.log('debug', 'dhcp: ignored a request for another server', { ...fields, server: formatIp4(sid) });
          return undefined;
        }
        // Option 50 in SELECTING and INIT-REBOOT; ciaddr in RENEWING and REBINDING (§4.3.2).
        const wanted = requestedIp(msg) ?? (msg.ciaddr !== 0 ? msg.ciaddr : undefined);
        if (wanted !== undefined && wanted !== this.cfg.clientIp) {
          this.log('info', 'dhcp: refusing a request for another address', { ...fields, requested: formatIp4(wanted) });
          return this.nak(msg, `address ${formatIp4(wanted)} is not available; use ${formatIp4(this.cfg.clientIp)}`);
        }
        this.log('info', 'dhcp: lease acknowledged', { ...fields, ip: formatIp4(this.cfg.clientIp) });
        return this.answer(msg, DhcpMessageType.Ack);
      }

      case DhcpMessageType.Inform:
        this.log('debug', 'dhcp: answering inform', { ...fields, ciaddr: formatIp4(msg.ciaddr) });
        return this.answer(msg, DhcpMessageType.Inform);

      case DhcpMessageType.Decline:
        // The client found our address in use on the link (RFC 2131 §4.4.1): a configuration
        // problem we cannot fix by offering another address (there is only one).
        this.log('warn', 'dhcp: the guest declined its address (in use by another host?)', { ...fields, ip: formatIp4(requestedIp(msg) ?? 0) });
        return undefined;

      case DhcpMessageType.Release:
        this.log('info', 'dhcp: the guest released its address', { ...fields, ip: formatIp4(msg.ciaddr) });
        return undefined;

      default:
        // OFFER, ACK, NAK are server messages; a BOOTREQUEST carrying one is bogus.
        this.log('debug', 'dhcp: ignored a server message type in a request', fields);
        return undefined;
    }
  }

  /**
   * OFFER (to DISCOVER), ACK (to REQUEST) or ACK to INFORM (`kind` Inform): fields per RFC 2131
   * table 3. INFORM's ACK has yiaddr 0 and no lease time (§3.4).
   */
  private answer(msg: DhcpMessage, kind: DhcpMessageType.Offer | DhcpMessageType.Ack | DhcpMessageType.Inform): DhcpAnswer {
    const inform = kind === DhcpMessageType.Inform;
    const yiaddr = inform ? 0 : this.cfg.clientIp;
    const ciaddr = kind === DhcpMessageType.Offer ? 0 : msg.ciaddr;
    const extra: Offered = inform ? [] : [[DhcpOption.LeaseTime, u32Value(this.cfg.leaseSeconds)]];
    let offered: Offered = [...extra, ...this.common];
    // Keep the reply within what the client can receive (option 57, at least 576 bytes with IP and
    // UDP headers: RFC 2131 §2, RFC 2132 §9.10). busybox udhcpc reads into a fixed 548-byte
    // buffer, so a long search list must go rather than the whole reply.
    const limit = Math.max(MIN_MAX_MESSAGE, maxMessageSize(msg) ?? MIN_MAX_MESSAGE) - IP_UDP_HEADERS;
    const type = inform ? DhcpMessageType.Ack : kind;
    let reply = this.build(msg, type, yiaddr, ciaddr, offered);
    for (const tag of DhcpServer.DROPPABLE) {
      if (reply.length <= limit) break;
      if (!offered.some(([t]) => t === tag)) continue;
      offered = offered.filter(([t]) => t !== tag);
      this.log('warn', 'dhcp: reply too large for the client; leaving an option out', { option: tag, limit });
      reply = this.build(msg, type, yiaddr, ciaddr, offered);
    }
    return {
      reply,
      broadcast: msg.broadcast || msg.ciaddr === 0,
      yiaddr: inform ? msg.ciaddr : yiaddr,
    };
  }

  /** NAK: only 53, 54, a message (56) and the echoed client id (RFC 2131 table 3); always broadcast (§4.1). */
  private nak(msg: DhcpMessage, text: string): DhcpAnswer {
    const reply = this.build(msg, DhcpMessageType.Nak, 0, 0, [[DhcpOption.Message, Buffer.from(text, 'latin1')]]);
    return { reply, broadcast: true, yiaddr: 0 };
  }

  /**
   * Builds a reply: 53 and 54 first, then `offered` in the order of the client's parameter request
   * list (option 55) where it names them, then the rest in our order (clients such as busybox
   * udhcpc ask for only some of what they use), then the client id echoed (RFC 6842 §3).
   */
  private build(msg: DhcpMessage, type: DhcpMessageType, yiaddr: Ip4, ciaddr: Ip4, offered: Offered): Buffer {
    let ordered = offered;
    const prl = parameterRequestList(msg);
    if (prl) {
      const rank = new Map<number, number>();
      prl.forEach((tag, i) => {
        if (!rank.has(tag)) rank.set(tag, i);
      });
      // Array.prototype.sort is stable: unrequested options keep their order, after the requested.
      const unrequested = prl.length;
      ordered = [...offered].sort(([a], [b]) => (rank.get(a) ?? unrequested) - (rank.get(b) ?? unrequested));
    }
    const options: Offered = [
      [DhcpOption.MessageType, Buffer.from([type])],
      [DhcpOption.ServerId, ip4Value(this.cfg.serverIp)],
      ...ordered,
    ];
    const cid = clientId(msg);
    if (cid) options.push([DhcpOption.ClientId, cid]);
    return buildDhcpReply({
      xid: msg.xid,
      flags: msg.flags,
      ciaddr,
      yiaddr,
      siaddr: 0,
      giaddr: msg.giaddr,
      chaddr: msg.chaddr,
      options,
    });
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
