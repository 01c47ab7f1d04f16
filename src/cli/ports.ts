import type { DaemonClient } from './daemon-client.js';
import type { PortsReport } from '../daemon/api-types.js';
import type { Out } from './render.js';

/** `berth ports [--json]`: every published port, where it goes, and whether it is listening. */
export async function showPorts(client: DaemonClient, args: { json: boolean }, out: Out): Promise<number> {
  const report = ((await client.getIfRunning('/v1/ports')) as PortsReport | undefined) ?? { backend: 'none', forwards: [] };
  if (args.json) {
    out.write(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  out.write(renderPorts(report));
  return 0;
}

export function renderPorts(r: PortsReport): string {
  if (r.backend === 'none') return 'berth is not running; no ports are published.\n';
  if (r.backend === 'qemu-user') return 'Ports are not published with network.backend "qemu-user"; set it to "berth" and restart.\n';
  if (r.forwards.length === 0) return 'No published ports.\n';
  const rows = r.forwards.map((f) => [
    `${f.hostIp.includes(':') ? `[${f.hostIp}]` : f.hostIp}:${f.hostPort}/${f.proto}`,
    `${f.guestIp}:${f.guestPort}`,
    f.containerName,
    f.state === 'failed' ? `failed: ${f.error ?? 'unknown error'}` : f.state,
  ]);
  const head = ['HOST', 'TO', 'CONTAINER', 'STATE'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < cells.length - 1 ? c.padEnd(widths[i]!) : c)).join('  ') + '\n';
  return line(head) + rows.map(line).join('');
}
