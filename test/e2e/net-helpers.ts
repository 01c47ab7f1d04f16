import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { randomInt } from 'node:crypto';
import { sleep } from './harness.js';

/**
 * Host-side helpers of the networking e2e tests (network.test.ts, ports.test.ts): free ports,
 * small servers and clients on the host's loopback, and the host's TCP listeners from /proc.
 */

/** The subnet plan's fixed addresses (docs/network.md "Address plan"). */
export const GATEWAY = '198.19.248.1';
export const HOST_ALIAS = '198.19.248.254';

/**
 * A port nobody holds on 127.0.0.1 (and ::1 when the host has it). Taken from 20000–29999, not
 * the kernel's ephemeral range (32768+) where other programs' random ports and dockerd's `-P`
 * ports land. `prefer` is tried first (the port the issue names, e.g. 8080).
 */
export async function freePort(proto: 'tcp' | 'udp', prefer?: number): Promise<number> {
  if (prefer !== undefined && (await isFree(proto, prefer))) return prefer;
  for (let i = 0; i < 200; i++) {
    const p = randomInt(20000, 30000);
    if (await isFree(proto, p)) return p;
  }
  throw new Error(`no free ${proto} port found`);
}

export async function isFree(proto: 'tcp' | 'udp', port: number): Promise<boolean> {
  if (!(await canBind(proto, '127.0.0.1', port))) return false;
  return !hostHasIpv6Loopback() || (await canBind(proto, '::1', port));
}

function canBind(proto: 'tcp' | 'udp', host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (proto === 'tcp') {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen({ host, port, exclusive: true, ipv6Only: host.includes(':') }, () => s.close(() => resolve(true)));
    } else {
      const s = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', ipv6Only: host.includes(':') });
      s.once('error', () => {
        s.close();
        resolve(false);
      });
      s.bind({ address: host, port, exclusive: true }, () => s.close(() => resolve(true)));
    }
  });
}

let ipv6Loopback: boolean | undefined;
export function hostHasIpv6Loopback(): boolean {
  if (ipv6Loopback === undefined) {
    try {
      ipv6Loopback = fs.readFileSync('/proc/net/if_inet6', 'utf8').split('\n').some((l) => l.startsWith('00000000000000000000000000000001'));
    } catch {
      ipv6Loopback = false;
    }
  }
  return ipv6Loopback;
}

export function listen(server: net.Server, port = 0, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

export function close(server: net.Server | http.Server): Promise<void> {
  return new Promise((resolve) => {
    if ('closeAllConnections' in server) server.closeAllConnections();
    server.close(() => resolve());
  });
}

export type HttpAnswer = { status: number; body: string } | { error: string };

/** One GET on the host; never throws. */
export function httpGet(port: number, host = '127.0.0.1', path = '/', timeoutMs = 2000): Promise<HttpAnswer> {
  return new Promise((resolve) => {
    const req = http.get({ host, port, path, timeout: timeoutMs, agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    req.on('timeout', () => {
      req.destroy();
      resolve({ error: 'timeout' });
    });
  });
}

/**
 * Polls GET until it answers 200 with `body`; returns the milliseconds from `since` to that answer,
 * or throws with the last answer after `withinMs`.
 */
export async function waitForBody(port: number, body: string, since: number, withinMs: number, host = '127.0.0.1'): Promise<number> {
  let last: HttpAnswer = { error: 'never tried' };
  while (performance.now() - since < withinMs) {
    last = await httpGet(port, host, '/', 1000);
    if ('status' in last && last.status === 200 && last.body === body) return performance.now() - since;
    await sleep(10);
  }
  throw new Error(`${host}:${port} did not answer ${JSON.stringify(body)} within ${withinMs} ms; last: ${JSON.stringify(last)}`);
}

/** Polls until a TCP connect to the port is refused (no listener); returns the elapsed ms or throws. */
export async function waitForRefused(port: number, since: number, withinMs: number, host = '127.0.0.1'): Promise<number> {
  let last: HttpAnswer = { error: 'never tried' };
  while (performance.now() - since < withinMs) {
    last = await httpGet(port, host, '/', 1000);
    if ('error' in last && last.error === 'ECONNREFUSED') return performance.now() - since;
    await sleep(20);
  }
  throw new Error(`${host}:${port} still accepts connections after ${withinMs} ms; last: ${JSON.stringify(last)}`);
}

/** Sends one datagram from a fresh socket and waits for one answer (retrying the send every 300 ms). */
export function udpExchange(port: number, payload: string, withinMs: number, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    const done = (err: Error | undefined, v?: string) => {
      clearInterval(again);
      clearTimeout(timer);
      s.close();
      if (err) reject(err);
      else resolve(v!);
    };
    s.on('message', (m) => done(undefined, m.toString()));
    s.on('error', (e) => done(e));
    const send = () => s.send(Buffer.from(payload), port, host);
    const again = setInterval(send, 300);
    const timer = setTimeout(() => done(new Error(`no UDP answer from ${host}:${port} within ${withinMs} ms`)), withinMs);
    send();
  });
}

export interface TcpListener {
  address: string;
  port: number;
  inode: number;
}

/** Every listening TCP socket of this network namespace (/proc/net/tcp and tcp6). */
export function tcpListeners(): TcpListener[] {
  const out: TcpListener[] = [];
  for (const [file, v6] of [
    ['/proc/net/tcp', false],
    ['/proc/net/tcp6', true],
  ] as const) {
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    out.push(...parseProcNetTcp(text, v6));
  }
  return out;
}

/** Listening sockets of one /proc/net/tcp{,6} text (state 0A). */
export function parseProcNetTcp(text: string, v6: boolean): TcpListener[] {
  const out: TcpListener[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== '0A') continue;
    const [addrHex, portHex] = f[1]!.split(':');
    out.push({ address: v6 ? ipv6FromProc(addrHex!) : ipv4FromProc(addrHex!), port: Number.parseInt(portHex!, 16), inode: Number(f[9]) });
  }
  return out;
}

/** /proc/net/tcp writes each 32-bit word of an address in host (little-endian) byte order. */
function wordBytes(hex8: string): number[] {
  const b = [0, 2, 4, 6].map((i) => Number.parseInt(hex8.slice(i, i + 2), 16));
  return b.reverse();
}

function ipv4FromProc(hex: string): string {
  return wordBytes(hex).join('.');
}

function ipv6FromProc(hex: string): string {
  const bytes = [0, 8, 16, 24].flatMap((i) => wordBytes(hex.slice(i, i + 8)));
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${bytes.slice(12).join('.')}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hexs = groups.map((g) => g.toString(16));
  if (best < 0) return hexs.join(':');
  return `${hexs.slice(0, best).join(':')}::${hexs.slice(best + bestLen).join(':')}`;
}

/** Inodes of the sockets a process has open (from /proc/<pid>/fd; threads share the table). */
export function socketInodes(pid: number): Set<number> {
  const out = new Set<number>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(Number(m[1]));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** The TCP listeners owned by a process. */
export function tcpListenersOf(pid: number): TcpListener[] {
  const mine = socketInodes(pid);
  return tcpListeners().filter((l) => mine.has(l.inode));
}

export function isLoopback(address: string): boolean {
  return address === '::1' || /^(::ffff:)?127\./.test(address);
}
