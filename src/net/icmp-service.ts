import { execFile } from 'node:child_process';
import { formatIp4, type Ip4 } from './address.js';
import { buildEchoReply, type IcmpEcho } from './icmp-wire.js';

/**
 * ICMP echo for the guest (docs/network.md "UDP and ICMP"). Node has no ICMP sockets, so echo to an
 * outside host runs the host's `ping` once and replies only if that ping was answered; without a
 * usable `ping` (missing, or not allowed to this user) the request is dropped. Echo to the
 * translator's own addresses is answered directly.
 */

export type Pinger = (host: string, timeoutSec: number) => Promise<boolean>;

export interface IcmpServiceOptions {
  emit: (frame: Buffer) => boolean;
  srcMac: Buffer;
  guestMac: () => Buffer;
  /** Addresses the translator answers itself. */
  local: ReadonlySet<Ip4>;
  pinger?: Pinger;
  maxInFlight: number;
}

export class IcmpService {
  private inFlight = 0;
  private readonly pinger: Pinger;
  private counters = { answered: 0, forwarded: 0, dropped: 0 };

  constructor(private readonly o: IcmpServiceOptions) {
    this.pinger = o.pinger ?? systemPing;
  }

  stats(): { answered: number; forwarded: number; dropped: number } {
    return { ...this.counters };
  }

  echo(src: Ip4, dst: Ip4, echo: IcmpEcho): void {
    const reply = () => this.o.emit(buildEchoReply({ srcMac: this.o.srcMac, dstMac: this.o.guestMac(), src: dst, dst: src }, echo));
    if (this.o.local.has(dst)) {
      this.counters.answered++;
      reply();
      return;
    }
    if (this.inFlight >= this.o.maxInFlight) {
      this.counters.dropped++;
      return;
    }
    this.inFlight++;
    // The echo data is a view into the frame; keep a copy for the reply.
    const kept: IcmpEcho = { id: echo.id, seq: echo.seq, data: Buffer.from(echo.data) };
    this.pinger(formatIp4(dst), 2).then(
      (ok) => {
        this.inFlight--;
        if (!ok) {
          this.counters.dropped++;
          return;
        }
        this.counters.forwarded++;
        this.o.emit(buildEchoReply({ srcMac: this.o.srcMac, dstMac: this.o.guestMac(), src: dst, dst: src }, kept));
      },
      () => {
        this.inFlight--;
        this.counters.dropped++;
      },
    );
  }
}

/** `ping -c 1 -W timeout host` (iputils or busybox); true if it got an answer. */
export const systemPing: Pinger = (host, timeoutSec) =>
  new Promise((resolve) => {
    execFile('ping', ['-n', '-c', '1', '-W', String(timeoutSec), host], { timeout: (timeoutSec + 1) * 1000 }, (err) => resolve(!err));
  });
