import net from 'node:net';
import type { ForwardSpec } from '../net/port-forwarder.js';
import { parseExtraForward } from '../settings/settings.js';

/**
 * Which host listeners a container's published ports need (docs/network.md "Port publishing").
 * Pure functions over `docker inspect` data. That data comes from the guest, so it is validated
 * here field by field; anything unexpected is skipped, never trusted.
 *
 * Docker reports the user's intent in HostConfig.PortBindings (HostIp "" for `-p 8080:80`,
 * "127.0.0.1" for `-p 127.0.0.1:8080:80`, "0.0.0.0" when asked for explicitly) and what it bound
 * in NetworkSettings.Ports (HostIp "0.0.0.0" and "::" for the first case; the real port for `-P`).
 */
export interface PublishedForward extends ForwardSpec {
  containerId: string;
  containerName: string;
}

export interface PublishOptions {
  /** Host address for publishes without one: "127.0.0.1" (also ::1 when `ipv6Loopback`) or "0.0.0.0". */
  defaultAddress: string;
  ipv6Loopback: boolean;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

interface Binding {
  hostIp: string;
  hostPort: number | undefined;
}

function bindings(v: unknown): Binding[] {
  if (!Array.isArray(v)) return [];
  const out: Binding[] = [];
  for (const b of v.slice(0, 64)) {
    if (!isObj(b)) continue;
    const hostIp = typeof b.HostIp === 'string' ? b.HostIp : '';
    if (hostIp !== '' && net.isIP(hostIp) === 0) continue;
    const p = typeof b.HostPort === 'string' && /^\d{1,5}$/.test(b.HostPort) ? Number(b.HostPort) : undefined;
    out.push({ hostIp, hostPort: p !== undefined && p >= 1 && p <= 65535 ? p : undefined });
  }
  return out;
}

/** The container's IPv4 address the forward connects to, or undefined (host or none network). */
function containerIp(inspect: Obj): string | undefined {
  const ns = isObj(inspect.NetworkSettings) ? inspect.NetworkSettings : {};
  const networks = isObj(ns.Networks) ? ns.Networks : {};
  const mode = isObj(inspect.HostConfig) && typeof inspect.HostConfig.NetworkMode === 'string' ? inspect.HostConfig.NetworkMode : '';
  const names = Object.keys(networks).sort();
  const ordered = names.includes(mode) ? [mode, ...names.filter((n) => n !== mode)] : names;
  for (const n of ordered) {
    const e = networks[n];
    if (isObj(e) && typeof e.IPAddress === 'string' && net.isIPv4(e.IPAddress)) return e.IPAddress;
  }
  return typeof ns.IPAddress === 'string' && net.isIPv4(ns.IPAddress) ? ns.IPAddress : undefined;
}

export function forwardsOfContainer(inspect: unknown, o: PublishOptions): PublishedForward[] {
  if (!isObj(inspect)) return [];
  const id = typeof inspect.Id === 'string' && /^[0-9a-f]{12,64}$/.test(inspect.Id) ? inspect.Id : undefined;
  const state = isObj(inspect.State) ? inspect.State : {};
  if (!id || state.Running !== true) return [];
  const name = typeof inspect.Name === 'string' ? inspect.Name.replace(/^\//, '').slice(0, 256) : id.slice(0, 12);
  const ip = containerIp(inspect);
  if (!ip) return [];
  const ports = isObj(inspect.NetworkSettings) && isObj(inspect.NetworkSettings.Ports) ? inspect.NetworkSettings.Ports : {};
  const intents = isObj(inspect.HostConfig) && isObj(inspect.HostConfig.PortBindings) ? inspect.HostConfig.PortBindings : {};
  const out = new Map<string, PublishedForward>();
  for (const [key, bound] of Object.entries(ports).slice(0, 4096)) {
    const m = /^(\d{1,5})\/(tcp|udp)$/.exec(key);
    if (!m) continue; // sctp and anything else: not forwarded
    const guestPort = Number(m[1]);
    const proto = m[2] as 'tcp' | 'udp';
    if (guestPort < 1 || guestPort > 65535) continue;
    const wanted = bindings(intents[key]);
    for (const b of bindings(bound)) {
      if (b.hostPort === undefined) continue;
      // The user's address for this binding: the intent with the same host port, else the one
      // that left the port to Docker (-p 80, -P), else none (publish-all).
      const intent = wanted.find((w) => w.hostPort === b.hostPort) ?? wanted.find((w) => w.hostPort === undefined);
      const asked = intent?.hostIp ?? '';
      let hostIp: string;
      let alsoIpv6Loopback = false;
      // Docker binds "0.0.0.0" and "::" for one publish without an address: both map to the same
      // forward and the second is dropped as a duplicate below.
      if (asked !== '') hostIp = asked;
      else {
        hostIp = o.defaultAddress;
        alsoIpv6Loopback = o.ipv6Loopback && hostIp === '127.0.0.1';
      }
      const fid = `${proto}/${hostIp}:${b.hostPort}`;
      if (out.has(fid)) continue;
      out.set(fid, { id: fid, proto, hostIp, hostPort: b.hostPort, guestIp: ip, guestPort, ...(alsoIpv6Loopback ? { alsoIpv6Loopback } : {}), containerId: id, containerName: name });
    }
  }
  return [...out.values()];
}

/** Forwards from the `ports.extra` setting to ports of the VM itself. */
export function extraForwards(extra: string[], vmIp: string): PublishedForward[] {
  const out: PublishedForward[] = [];
  for (const text of extra) {
    const f = parseExtraForward(text);
    if (!f) continue;
    const id = `${f.proto}/${f.hostIp}:${f.hostPort}`;
    out.push({ id, proto: f.proto, hostIp: f.hostIp, hostPort: f.hostPort, guestIp: vmIp, guestPort: f.vmPort, containerId: '', containerName: '(VM: ports.extra)' });
  }
  return out;
}
