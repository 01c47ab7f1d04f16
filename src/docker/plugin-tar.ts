import path from 'node:path';
import { decodeBody } from './go-json.js';
import { pluginConfigCodec } from './bodies.js';
import { checkPluginConfig, refusalMessage, type MountPolicy } from './mount-policy.js';

/**
 * Reads the tar stream of `POST /plugins/create` as it passes (docs/docker-proxy.md step 4) to
 * find the plugin's `config.json`, whose mounts and devices are checked before dockerd gets the
 * end of the archive. dockerd extracts the archive and reads `config.json` from its top
 * (moby plugin/backend_linux.go CreateFromContext; names are cleaned and may not leave the
 * folder), so every entry whose cleaned name is `config.json` or lies under it counts: exactly one
 * regular file of at most 1 MiB is accepted. dockerd would also take a compressed archive; the
 * docker CLI sends it uncompressed, and berth refuses the others rather than decompress them.
 */
const BLOCK = 512;
const MAX_CONFIG = 1024 * 1024;
/** PAX and GNU long-name records: bounded like the config. */
const MAX_META = 1024 * 1024;

type Verdict = { ok: true } | { ok: false; reason: string };

export class PluginArchiveCheck {
  private buf: Buffer = Buffer.alloc(0);
  /** Bytes left in the current entry's data, then its padding. */
  private skip = 0;
  private collect: { kind: 'config' | 'pax' | 'longname'; parts: Buffer[]; size: number; want: number } | undefined;
  private paxPath: string | undefined;
  private longName: string | undefined;
  private config: Buffer | undefined;
  private configs = 0;
  private ended = false;
  private error: string | undefined;
  private started = false;

  /** Feeds archive bytes; returns why the archive is refused, as soon as that is known. */
  push(chunk: Buffer): string | undefined {
    if (this.error || this.ended) return this.error;
    if (!this.started && chunk.length > 0) {
      this.started = true;
      const magic = chunk.subarray(0, 6);
      if (magic[0] === 0x1f && magic[1] === 0x8b) return (this.error = 'it is compressed (gzip); send an uncompressed tar, as `docker plugin create` does');
      if (magic.subarray(0, 3).toString('latin1') === 'BZh' || magic.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) || magic.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) {
        return (this.error = 'it is compressed; send an uncompressed tar, as `docker plugin create` does');
      }
    }
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (!this.error && !this.ended) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buf.length);
        if (n === 0) break;
        if (this.collect && this.collect.size < this.collect.want) {
          const take = Math.min(n, this.collect.want - this.collect.size);
          this.collect.parts.push(Buffer.from(this.buf.subarray(0, take)));
          this.collect.size += take;
          if (this.collect.size === this.collect.want) this.finishCollect();
        }
        this.skip -= n;
        this.buf = this.buf.subarray(n);
        continue;
      }
      if (this.buf.length < BLOCK) break;
      const h = this.buf.subarray(0, BLOCK);
      this.buf = this.buf.subarray(BLOCK);
      this.header(h);
    }
    return this.error;
  }

  private header(h: Buffer): void {
    if (h.every((b) => b === 0)) {
      this.ended = true; // Go's tar reader stops at the end marker; what follows is ignored.
      return;
    }
    const size = octal(h.subarray(124, 136));
    if (size === undefined) return void (this.error = 'a tar header with a malformed size');
    const type = String.fromCharCode(h[156]!);
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (type === 'x' || type === 'L') {
      if (size > MAX_META) return void (this.error = 'a tar metadata record larger than 1 MiB');
      this.collect = { kind: type === 'x' ? 'pax' : 'longname', parts: [], size: 0, want: size };
      this.skip = padded;
      if (size === 0) this.finishCollect();
      return;
    }
    if (type === 'g') {
      this.skip = padded; // global PAX records: a path there is not taken for the next entry
      return;
    }
    const name = this.paxPath ?? this.longName ?? tarName(h);
    this.paxPath = undefined;
    this.longName = undefined;
    const clean = path.posix.normalize(`/${name}`).slice(1).replace(/\/+$/, '');
    this.skip = padded;
    if (clean === 'config.json') {
      if (type !== '0' && type !== '\0' && type !== '7') return void (this.error = '"config.json" in the archive is not a regular file');
      if (++this.configs > 1) return void (this.error = 'the archive holds "config.json" more than once');
      if (size > MAX_CONFIG) return void (this.error = '"config.json" is larger than 1 MiB');
      this.collect = { kind: 'config', parts: [], size: 0, want: size };
      if (size === 0) this.finishCollect();
    } else if (clean.startsWith('config.json/')) this.error = '"config.json" in the archive is a folder';
  }

  private finishCollect(): void {
    const c = this.collect!;
    this.collect = undefined;
    const data = Buffer.concat(c.parts);
    if (c.kind === 'config') this.config = data;
    else if (c.kind === 'longname') this.longName = data.toString('utf8').replace(/\0.*$/s, '');
    else {
      // PAX records: "<len> key=value\n"; only `path` matters here.
      let i = 0;
      while (i < data.length) {
        const sp = data.indexOf(0x20, i);
        const len = sp > i ? Number(data.toString('latin1', i, sp)) : NaN;
        if (!Number.isSafeInteger(len) || len <= 0 || i + len > data.length) return void (this.error = 'a malformed PAX record');
        const rec = data.toString('utf8', sp + 1, i + len - 1);
        const eq = rec.indexOf('=');
        if (eq > 0 && rec.slice(0, eq) === 'path') this.paxPath = rec.slice(eq + 1);
        i += len;
      }
    }
  }

  /** The body ended: decide on the config found. */
  finish(policy: MountPolicy): Verdict {
    if (this.error) return { ok: false, reason: this.error };
    if (this.skip > 0 || this.collect) return { ok: false, reason: 'the archive ends inside an entry' };
    if (!this.config) return { ok: false, reason: 'it has no config.json' };
    const decoded = decodeBody(this.config, pluginConfigCodec);
    if (!decoded.ok) return { ok: false, reason: `its config.json cannot be read: ${decoded.reason}` };
    const d = checkPluginConfig(decoded.value, policy);
    return d.ok ? { ok: true } : { ok: false, reason: refusalMessage(d, policy).replace(/^berth: /, '') };
  }
}

function tarName(h: Buffer): string {
  const name = cstr(h.subarray(0, 100));
  const magic = h.toString('latin1', 257, 263);
  const prefix = magic.startsWith('ustar') ? cstr(h.subarray(345, 500)) : '';
  return prefix ? `${prefix}/${name}` : name;
}

function cstr(b: Buffer): string {
  const z = b.indexOf(0);
  return b.toString('utf8', 0, z < 0 ? b.length : z);
}

/** A tar numeric field: octal digits (with spaces or NULs around), or base-256 (high bit set). */
function octal(b: Buffer): number | undefined {
  if (b[0]! & 0x80) {
    if (b[0]! & 0x40) return undefined; // negative
    let v = b[0]! & 0x3f;
    for (let i = 1; i < b.length; i++) v = v * 256 + b[i]!;
    return Number.isSafeInteger(v) ? v : undefined;
  }
  const s = b.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return undefined;
  return Number.parseInt(s, 8);
}
