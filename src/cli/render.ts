import type { BerthError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import type { StatusReport } from '../daemon/api-types.js';

/**
 * Human output. Every command also has --json output, which bypasses this module entirely.
 */
export interface Out {
  write(text: string): void;
}

export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Renders progress events as one line per finished step ("  ✓ Launch QEMU  0.3 s  pid 123").
 * On a terminal the step in progress is shown on a line that the finished line replaces.
 */
export function progressRenderer(out: Out, isTty: boolean): (e: ProgressEvent) => void {
  const titles = new Map<string, string>();
  let pending = false;
  const clearPending = () => {
    if (pending && isTty) out.write('\r\x1b[2K');
    pending = false;
  };
  return (e) => {
    switch (e.type) {
      case 'step-begin':
        titles.set(e.id, e.title);
        clearPending();
        if (isTty) {
          out.write(`  … ${e.title}`);
          pending = true;
        }
        break;
      case 'step-progress':
        if (isTty && e.total > 0) {
          out.write(`\r\x1b[2K  … ${titles.get(e.id) ?? e.id} ${Math.floor((100 * e.done) / e.total)}%${e.unit ? ` (${e.done}/${e.total} ${e.unit})` : ''}`);
          pending = true;
        }
        break;
      case 'step-end': {
        clearPending();
        const title = titles.get(e.id) ?? e.id;
        out.write(`  ${e.ok ? '✓' : '✗'} ${title.padEnd(44)} ${formatMs(e.ms).padStart(8)}${e.detail ? `  ${e.detail}` : ''}\n`);
        break;
      }
      case 'note':
        clearPending();
        out.write(`${e.level === 'warn' ? 'warning: ' : ''}${e.message}\n`);
        break;
    }
  };
}

export function renderError(err: BerthError): string {
  let text = `berth: ${err.message}\n`;
  if (err.hint) text += `  → ${err.hint}\n`;
  const d = err.details ?? {};
  for (const key of ['consoleTail', 'qemuLogTail', 'daemonLogTail', 'stderrTail']) {
    const v = d[key];
    if (typeof v === 'string' && v.trim()) {
      text += `\n  last lines of ${key.replace('Tail', '').replace(/([A-Z])/g, ' $1').toLowerCase()}:\n`;
      text += v
        .split('\n')
        .map((l) => `    ${l}`)
        .join('\n');
      text += '\n';
    }
  }
  return text;
}

export function renderStatus(s: StatusReport): string {
  const lines: string[] = [];
  lines.push(`state:        ${s.state}${s.engine && s.state === 'running' && s.engine.state !== 'ready' ? ` (engine ${s.engine.state})` : ''}`);
  if (s.state === 'running' || s.state === 'starting') {
    lines.push(`docker host:  ${s.dockerHost}`);
    lines.push(`backend:      ${s.backend === 'namespace' ? 'namespace (the host\'s kernel, no VM)' : (s.backend ?? '-')}`);
    lines.push(`accelerator:  ${s.accelerator ?? '-'}`);
    lines.push(`resources:    ${s.cpus} CPUs, ${s.memoryMiB} MiB memory, ${s.diskGiB} GiB data disk`);
    lines.push(`image:        ${s.imageVersion ?? '-'}`);
    lines.push(`engine:       ${s.enginePack ? `${s.enginePack.id} (Docker ${s.enginePack.dockerVersion}, pack ${s.enginePack.key})` : '-'}`);
    if (s.network) {
      const n = s.network;
      const link = n.linkUp === null ? '' : n.linkUp ? '' : ' (translator not connected)';
      lines.push(`network:      ${n.backend}${n.subnet ? ` ${n.subnet}` : ''}, VM ${n.vmAddress || '?'}, host ${n.hostAlias || '?'}${link}`);
      if (n.translatorRestarts > 0) lines.push(`              translator restarted ${n.translatorRestarts}×; last failure: ${n.lastFailure ?? 'unknown'}`);
    }
    if (s.api) {
      const a = s.api;
      const streams = `${a.streams.host} control streams${a.streams.guest === null ? '' : ` (guest ${a.streams.guest})`}`;
      lines.push(`docker api:   ${a.state}${a.reason ? `: ${a.reason}` : ''}; ${a.connections} connections, ${streams}`);
    }
    if (s.qemuPid) lines.push(`qemu pid:     ${s.qemuPid}`);
    if (s.uptimeSec !== null) lines.push(`uptime:       ${formatMs(s.uptimeSec * 1000)}`);
  }
  if (s.lastStart) lines.push(`last start:   ${formatMs(s.lastStart.totalMs)}`);
  for (const w of s.warnings) lines.push(`warning:      ${w}`);
  if (s.failure) {
    lines.push(`failure:      ${s.failure.message}`);
    if (s.failure.hint) lines.push(`              → ${s.failure.hint}`);
  }
  lines.push(`home:         ${s.home}`);
  return lines.join('\n') + '\n';
}
