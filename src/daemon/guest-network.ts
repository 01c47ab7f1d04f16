import { formatIp4 } from '../net/address.js';
import { planFor } from '../net/policy.js';
import type { NetWorkerConfig } from '../net/worker-protocol.js';
import type { BerthPaths } from '../settings/paths.js';
import { parseExtraForward, type Settings } from '../settings/settings.js';
import type { VmNetwork } from '../vm/qemu-args.js';

/**
 * The guest network of one start, derived from the settings (docs/network.md "Address plan"):
 * what QEMU gets, what the kernel command line tells the guest, and the translator's configuration.
 */
export const GUEST_MAC = '02:b3:27:00:00:02';
export const TRANSLATOR_MAC = '02:b3:27:00:00:01';
/** QEMU's user network puts the host at 10.0.2.2. */
const SLIRP_HOST = '10.0.2.2';
const SLIRP_GUEST = '10.0.2.15';

export interface GuestNetwork {
  vm: VmNetwork;
  /** Kernel command-line words for the guest's init and engine. */
  cmdline: string;
  /** The translator's configuration; undefined with QEMU's user network. */
  translator: NetWorkerConfig | undefined;
  /** The host as the guest sees it (host.docker.internal). */
  hostAlias: string;
  /** The VM's own address on its network. */
  guestIp: string;
}

/** `fileServer`: the guest may reach the 9P file server at gateway:564 (folders are shared). */
export function guestNetwork(settings: Settings, paths: BerthPaths, fileServer = false): GuestNetwork {
  if (settings['network.backend'] === 'qemu-user') {
    const forwards = settings['ports.extra'].flatMap((t) => {
      const f = parseExtraForward(t);
      return f ? [{ proto: f.proto, hostIp: f.hostIp, hostPort: f.hostPort, guestPort: f.vmPort }] : [];
    });
    return { vm: { kind: 'user', mac: GUEST_MAC, forwards }, cmdline: `berth.hostalias=${SLIRP_HOST}`, translator: undefined, hostAlias: SLIRP_HOST, guestIp: SLIRP_GUEST };
  }
  const external = process.env.BERTH_BENCH_NETDEV_SOCKET;
  if (external) {
    // Benchmarks only (bench/net.ts): the guest's NIC is plugged into another translator (passt)
    // listening on this socket, so both run the same guest in the same way.
    return { vm: { kind: 'stream-client', socket: external, mac: GUEST_MAC, mtu: settings['network.mtu'] }, cmdline: '', translator: undefined, hostAlias: '', guestIp: '' };
  }
  const plan = planFor(settings['network.subnet']);
  const mtu = settings['network.mtu'];
  const hostAlias = formatIp4(plan.hostAlias);
  return {
    vm: { kind: 'stream', socket: paths.netSocket, mac: GUEST_MAC, mtu },
    cmdline: `berth.hostalias=${hostAlias}`,
    translator: {
      socketPath: paths.netSocket,
      subnet: settings['network.subnet'],
      mtu,
      allowLinkLocal: settings['network.allowLinkLocal'],
      translatorMac: TRANSLATOR_MAC,
      guestMac: GUEST_MAC,
      deniedHostPorts: [],
      ...(fileServer ? { fileServerSocket: paths.p9Socket } : {}),
    },
    hostAlias,
    guestIp: formatIp4(plan.guest),
  };
}
