import type { DaemonClient } from './daemon-client.js';
import type { NetworkReport } from '../daemon/api-types.js';
import type { Out } from './render.js';

/** `berth network [--json]`: the VM's network and the translator's counters. */
export async function showNetwork(client: DaemonClient, args: { json: boolean }, out: Out): Promise<number> {
  const report = ((await client.getIfRunning('/v1/network')) as NetworkReport | undefined) ?? { network: null, stats: null };
  if (args.json) {
    out.write(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  const n = report.network;
  if (!n) {
    out.write('berth is not running.\n');
    return 0;
  }
  const lines = [
    `backend:      ${n.backend}`,
    ...(n.subnet ? [`subnet:       ${n.subnet} (MTU ${n.mtu})`] : []),
    `VM address:   ${n.vmAddress}`,
    `host alias:   ${n.hostAlias} (host.docker.internal → the host's 127.0.0.1)`,
  ];
  if (n.linkUp !== null) lines.push(`translator:   ${n.linkUp ? 'connected' : 'NOT connected to the VM'}${n.translatorRestarts ? `, restarted ${n.translatorRestarts}× (last failure: ${n.lastFailure ?? 'unknown'})` : ''}`);
  const st = report.stats as { tcp?: Record<string, number>; udp?: Record<string, number>; dns?: Record<string, number>; dropped?: Record<string, number>; link?: Record<string, number> } | null;
  if (st) {
    if (st.tcp) lines.push(`tcp:          ${st.tcp.flows} flows (${st.tcp.connecting} connecting), ${st.tcp.opened} opened, ${st.tcp.refused} refused, ${st.tcp.connectFailures} failed connects, ${st.tcp.queuedBytes} bytes queued`);
    if (st.udp) lines.push(`udp:          ${st.udp.flows} flows, ${st.udp.sent} sent, ${st.udp.received} received, ${st.udp.dropped} dropped`);
    if (st.dns) lines.push(`dns:          ${st.dns.udp} over UDP, ${st.dns.tcp} over TCP`);
    if (st.link) lines.push(`frames:       ${st.link.received} from the VM, ${st.link.sent} to it`);
    for (const [why, count] of Object.entries(st.dropped ?? {})) lines.push(`dropped:      ${count} × ${why}`);
  }
  out.write(lines.join('\n') + '\n');
  return 0;
}
