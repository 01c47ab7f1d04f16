import type { Duplex } from 'node:stream';
import type { Ip4 } from './address.js';
import { ACK, buildTcpFrame, FIN, PSH, RST, seqAdd, seqDiff, seqLeq, seqLt, SYN, type TcpOut, type TcpSegment } from './tcp-wire.js';

/**
 * One translated TCP connection: the guest's end is spoken here (sequence numbers, windows,
 * retransmission), the other end is a host `Duplex` (a `net.Socket`, or an in-process service such
 * as DNS over TCP). See docs/network.md "TCP translation" for the rules and their sources.
 *
 * Two origins:
 * - 'guest': the guest sent a SYN; the flow starts in `connecting` while the host connect runs,
 *   answers SYN-ACK once it succeeded (`synReceived`), and is `established` on the guest's ACK.
 * - 'host': a published port accepted a host connection; the flow sends a SYN into the guest
 *   (`synSent`) and is `established` on the guest's SYN-ACK. The host socket stays paused until then.
 *
 * The flow never keeps TIME_WAIT: it is `closed` (and forgotten by TcpService) once both directions
 * have ended and our FIN is acknowledged, or on a reset either way.
 */

/** The window our own SYN offers (a SYN's window is never scaled, RFC 7323 §2.2). */
const SYN_WINDOW = 65535;
export type FlowState = 'connecting' | 'synSent' | 'synReceived' | 'established' | 'closed';

/** What a flow needs from the service that owns it. */
export interface FlowEnv {
  /** Sends a complete frame to the guest; false when the link is congested (still queued). */
  emit(frame: Buffer): boolean;
  readonly linkBlocked: boolean;
  /** Called when a flow wants to send data but the link is blocked; the service calls `pump()` on drain. */
  waitForLink(flow: TcpFlow): void;
  /** Host-to-guest bytes queued by all flows; the flow adds and removes its own. */
  adjustQueued(delta: number, flow: TcpFlow): void;
  /** True while all flows must pause their host sockets (global memory bound reached). */
  readonly globalPressure: boolean;
  /** This flow owes the guest an ACK at the end of the current batch. */
  ackDue(flow: TcpFlow): void;
  /** Arms the service's timer for this flow (deadline in ms, performance.now() clock). */
  schedule(flow: TcpFlow, at: number): void;
  closed(flow: TcpFlow, why: string): void;
  readonly srcMac: Buffer;
  readonly guestMac: Buffer;
}

export interface FlowLimits {
  /** Host-to-guest bytes queued per flow before the host socket is paused. */
  sendQueueMax: number;
  /** Guest-to-host bytes buffered in the host socket before the advertised window closes. */
  receiveBudget: number;
  /** Our window-scale shift (used only if the guest offers scaling). */
  windowScale: number;
  /** Our MSS towards the guest (MTU − 40). */
  mss: number;
}

const RTO_INITIAL_MS = 1000; // RFC 6298 §2.1
const RTO_MAX_MS = 30_000;
const MAX_RETRIES = 8;
const SYN_RETRIES = 5;
const PERSIST_INITIAL_MS = 200;
const PERSIST_MAX_MS = 5000;
const DEFAULT_GUEST_MSS = 536; // RFC 9293 §3.7.1, when the SYN has no MSS option

export class TcpFlow {
  state: FlowState;
  sock: Duplex | undefined;
  /** The sequence number of the guest's SYN (guest-origin flows), to tell a new connection on the same ports. */
  synSeq = 0;

  // Guest → host (we receive).
  private rcvNxt = 0;
  private rcvScale = 0;
  /** Window scaling is in effect only when both SYNs carried the option (RFC 7323 §1.3). */
  private scaling = false;
  private rcvRightEdge = 0;
  private guestFin = false;

  // Host → guest (we send). `queue` holds the bytes from sndUna on: sent-but-unacknowledged, then unsent.
  private readonly iss: number;
  private sndUna: number;
  private sndNxt: number;
  private sndWnd = 0;
  private sndScale = 0;
  private guestMss = DEFAULT_GUEST_MSS;
  private queue: Buffer[] = [];
  private queueHead = 0; // bytes of queue[0] already acknowledged
  private queued = 0;
  private hostEof = false;
  private finSent = false;
  private finSeq = 0;
  private finAcked = false;
  private paused = false;

  // Timers.
  private rtoAt = 0;
  private rto = RTO_INITIAL_MS;
  private retries = 0;
  private persistAt = 0;
  private persistMs = PERSIST_INITIAL_MS;
  private dupAcks = 0;
  private ackDue = false;
  private lastWindowSent = 0;

  constructor(
    readonly origin: 'guest' | 'host',
    readonly guestIp: Ip4,
    readonly guestPort: number,
    /** The address and port the guest sees on the other side. */
    readonly peerIp: Ip4,
    readonly peerPort: number,
    private readonly env: FlowEnv,
    private readonly limits: FlowLimits,
    iss: number,
  ) {
    this.iss = iss >>> 0;
    this.sndUna = this.iss;
    this.sndNxt = this.iss;
    this.state = origin === 'guest' ? 'connecting' : 'synSent';
  }

  get key(): string {
    return flowKey(this.guestIp, this.guestPort, this.peerIp, this.peerPort);
  }

  /** Host → guest bytes held (for stats and tests). */
  get queuedBytes(): number {
    return this.queued;
  }

  /** An ACK is due at the end of this batch (one per flow per batch, see TcpService.flushAcks). */
  private markAckDue(): void {
    if (this.ackDue) return;
    this.ackDue = true;
    this.env.ackDue(this);
  }

  // ---------------------------------------------------------------------------------------------
  // Opening

  /** Guest-origin: the guest's SYN. Records its options; the SYN-ACK waits for the host connect. */
  acceptSyn(seg: TcpSegment): void {
    this.synSeq = seg.seq;
    this.rcvNxt = seqAdd(seg.seq, 1);
    this.guestMss = clampMss(seg.mss);
    this.takeScaling(seg);
    this.sndWnd = seg.window; // the SYN's window is never scaled (RFC 7323 §2.2)
  }

  private takeScaling(seg: TcpSegment): void {
    if (seg.wscale === undefined) return;
    this.scaling = true;
    this.sndScale = seg.wscale;
    this.rcvScale = this.limits.windowScale;
  }

  /** Guest-origin: the host connect succeeded. */
  hostConnected(sock: Duplex): void {
    if (this.state !== 'connecting') {
      sock.destroy();
      return;
    }
    this.attach(sock);
    this.state = 'synReceived';
    this.sendSynAck();
  }

  /** Guest-origin: the host connect failed; the guest gets RST|ACK for its SYN. */
  hostConnectFailed(why: string): void {
    if (this.state !== 'connecting') return;
    // RFC 9293 §3.10.7.1: <SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>. A SYN_SENT guest drops an RST whose
    // ACK is not its SND.NXT (ack 0 here made "connection refused" hang until the connect timed out).
    this.emitSegment(RST | ACK, 0, this.rcvNxt);
    this.close(`connect failed: ${why}`);
  }

  /** Host-origin: starts the handshake into the guest for an accepted (paused) host socket. */
  openToGuest(sock: Duplex): void {
    this.attach(sock);
    this.sndNxt = seqAdd(this.iss, 1);
    this.sendSyn();
  }

  private sendSyn(): void {
    this.emit({ seq: this.iss, ack: 0, flags: SYN, window: SYN_WINDOW, mss: this.limits.mss, wscale: this.limits.windowScale });
    this.armRto();
  }

  private sendSynAck(): void {
    this.sndNxt = seqAdd(this.iss, 1);
    // Scale our window only if the guest offered scaling; the SYN-ACK's own window is unscaled.
    const window = Math.min(65535, this.receiveWindow());
    this.rcvRightEdge = seqAdd(this.rcvNxt, window);
    this.emit({ seq: this.iss, ack: this.rcvNxt, flags: SYN | ACK, window, mss: this.limits.mss, ...(this.scaling ? { wscale: this.rcvScale } : {}) });
    this.armRto();
  }

  private attach(sock: Duplex): void {
    this.sock = sock;
    sock.on('data', (chunk: Buffer) => this.onHostData(chunk));
    sock.on('end', () => this.onHostEnd());
    sock.on('drain', () => this.onHostDrain());
    sock.on('finish', () => this.maybeFinish());
    sock.on('error', (err: Error) => this.onHostError(err));
    sock.on('close', () => this.onHostClose());
  }

  // ---------------------------------------------------------------------------------------------
  // Segments from the guest

  /** Handles a segment of this flow. The caller flushes `wantsAck` flows after the batch. */
  input(seg: TcpSegment): void {
    if (this.state === 'closed') return;
    if (seg.flags & RST) return this.onGuestReset(seg);
    switch (this.state) {
      case 'connecting':
        return; // a retransmitted SYN while the host connect runs: the SYN-ACK will come
      case 'synSent':
        return this.onSynSentInput(seg);
      case 'synReceived':
        if ((seg.flags & SYN) && seg.seq === seqAdd(this.rcvNxt, -1)) return this.sendSynAck(); // SYN retransmitted: our SYN-ACK was lost
        if (!(seg.flags & ACK) || seg.ack !== seqAdd(this.iss, 1)) return;
        this.state = 'established';
        this.sndUna = seg.ack;
        this.disarmRto();
        break;
      default:
        if (seg.flags & SYN) return; // duplicate SYN/SYN-ACK of an established flow: ignore
    }
    if (seg.flags & ACK) this.onAck(seg);
    this.onPayload(seg);
    this.pump();
    this.maybeFinish();
  }

  private onSynSentInput(seg: TcpSegment): void {
    if (!(seg.flags & SYN) || !(seg.flags & ACK) || seg.ack !== seqAdd(this.iss, 1)) {
      // Not a SYN-ACK for our SYN: RFC 9293 3.10.7.3, answer an unacceptable ACK with RST.
      if (seg.flags & ACK) this.emitSegment(RST, seg.ack, 0);
      return;
    }
    this.rcvNxt = seqAdd(seg.seq, 1);
    // What our SYN offered (its window is never scaled): the right edge the guest knows so far.
    this.rcvRightEdge = seqAdd(this.rcvNxt, SYN_WINDOW);
    this.guestMss = clampMss(seg.mss);
    this.takeScaling(seg);
    this.sndUna = seg.ack;
    this.sndWnd = seg.window;
    this.state = 'established';
    this.disarmRto();
    this.sendAck();
    this.sock?.resume();
    this.pump();
  }

  private onGuestReset(seg: TcpSegment): void {
    // RFC 5961 §3.2 in spirit: only an RST inside the receive window counts. The guest is the only
    // sender on this link, so a stale RST (an old connection on the same ports) is what we guard against.
    const inWindow = this.state === 'synSent' ? seg.ack === seqAdd(this.iss, 1) || (seg.flags & ACK) === 0 : seqLeq(this.rcvNxt, seg.seq) && seqLt(seg.seq, seqAdd(this.rcvNxt, Math.max(1, this.receiveWindow())));
    if (!inWindow) return;
    resetHost(this.sock);
    this.close('reset by the guest');
  }

  private onAck(seg: TcpSegment): void {
    const ack = seg.ack;
    const window = seg.window << this.sndScale;
    if (seqLt(this.sndUna, ack) && seqLeq(ack, this.sndNxt)) {
      this.consumeAcked(ack);
      this.dupAcks = 0;
      this.retries = 0;
      this.rto = RTO_INITIAL_MS;
      if (this.inFlight() > 0) this.armRto();
      else this.disarmRto();
    } else if (ack === this.sndUna && seg.payload.length === 0 && !(seg.flags & FIN) && window === this.sndWnd && this.inFlight() > 0) {
      // Three duplicate ACKs: the guest is missing the segment at sndUna (fast retransmit, RFC 5681 §3.2).
      if (++this.dupAcks === 3) this.rewind();
    }
    if (seqLeq(this.sndUna, ack)) {
      const opened = this.sndWnd === 0 && window > 0;
      this.sndWnd = window;
      if (window > 0) {
        this.persistAt = 0;
        this.persistMs = PERSIST_INITIAL_MS;
      }
      if (opened) this.pump();
    }
  }

  private consumeAcked(ack: number): void {
    let n = seqDiff(ack, this.sndUna);
    this.sndUna = ack;
    if (this.finSent && ack === seqAdd(this.finSeq, 1)) {
      this.finAcked = true;
      n -= 1; // the FIN's sequence number carries no byte
    }
    n = Math.min(n, this.queued);
    this.dropFromQueue(n);
  }

  private dropFromQueue(n: number): void {
    if (n <= 0) return;
    this.queued -= n;
    this.env.adjustQueued(-n, this);
    while (n > 0) {
      const first = this.queue[0]!;
      const left = first.length - this.queueHead;
      if (n < left) {
        this.queueHead += n;
        break;
      }
      n -= left;
      this.queue.shift();
      this.queueHead = 0;
    }
    if (this.paused && !this.env.globalPressure && this.queued <= this.limits.sendQueueMax / 2) {
      this.paused = false;
      this.sock?.resume();
    }
  }

  private onPayload(seg: TcpSegment): void {
    let data = seg.payload;
    let seq = seg.seq;
    const fin = (seg.flags & FIN) !== 0;
    if (data.length === 0 && !fin) {
      // A keepalive probe (seq = rcvNxt − 1) wants an ACK; a pure ACK does not.
      if (seqLt(seq, this.rcvNxt)) this.markAckDue();
      return;
    }
    if (this.guestFin) {
      this.markAckDue(); // retransmitted FIN or data after FIN: re-ACK
      return;
    }
    if (seqLt(seq, this.rcvNxt)) {
      // Overlaps what we already have: keep only the new tail.
      const skip = seqDiff(this.rcvNxt, seq);
      this.markAckDue();
      if (skip > data.length || (skip === data.length && !fin)) return;
      data = data.subarray(skip);
      seq = this.rcvNxt;
    }
    if (seq !== this.rcvNxt) {
      // A hole before this segment: no reassembly, drop it and say where we are (dup ACK).
      this.markAckDue();
      return;
    }
    const room = Math.max(0, seqDiff(this.rcvRightEdge, this.rcvNxt));
    const take = Math.min(data.length, Math.max(room, 0));
    if (take > 0 && this.sock && !this.sock.writableEnded) {
      this.sock.write(take === data.length ? data : data.subarray(0, take));
      this.rcvNxt = seqAdd(this.rcvNxt, take);
    }
    this.markAckDue();
    if (fin && take === data.length) {
      this.rcvNxt = seqAdd(this.rcvNxt, 1);
      this.guestFin = true;
      if (this.sock && !this.sock.writableEnded) this.sock.end();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Host side

  private onHostData(chunk: Buffer): void {
    if (this.state === 'closed' || chunk.length === 0) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    this.env.adjustQueued(chunk.length, this);
    if (!this.paused && (this.queued > this.limits.sendQueueMax || this.env.globalPressure)) {
      this.paused = true;
      this.sock?.pause();
    }
    this.pump();
  }

  /** Resumes a socket paused by global pressure, once the pressure is gone (called by the service). */
  relieve(): void {
    if (this.paused && this.queued <= this.limits.sendQueueMax / 2) {
      this.paused = false;
      this.sock?.resume();
    }
  }

  private onHostEnd(): void {
    this.hostEof = true;
    this.pump();
    this.maybeFinish();
  }

  private onHostDrain(): void {
    // The host took what it had buffered: if the window we advertised was small, say it opened.
    if (this.state === 'established' && this.lastWindowSent < this.limits.receiveBudget / 2) this.sendAck();
    this.maybeFinish();
  }

  private onHostError(err: Error): void {
    if (this.state === 'closed') return;
    if (this.state === 'connecting') return; // the connector reports it
    // The host side reset or failed: reset the guest side with seq = snd.nxt exactly (RFC 5961).
    if (this.state !== 'synSent') this.emitSegment(RST | ACK, this.sndNxt, this.rcvNxt);
    this.close(`host socket error: ${(err as NodeJS.ErrnoException).code ?? err.message}`);
  }

  private onHostClose(): void {
    if (this.state === 'closed') return;
    if (this.state === 'synSent') {
      // The host client gave up before the guest answered.
      this.emitSegment(RST, this.sndNxt, 0);
      this.close('host closed before the guest answered');
      return;
    }
    // Closed without an error: both directions have ended (allowHalfOpen), or it was destroyed.
    if (!this.hostEof) {
      this.emitSegment(RST | ACK, this.sndNxt, this.rcvNxt);
      this.close('host socket closed');
      return;
    }
    this.maybeFinish();
  }

  // ---------------------------------------------------------------------------------------------
  // Sending to the guest

  private inFlight(): number {
    return seqDiff(this.sndNxt, this.sndUna);
  }

  /** Sends what the guest's window and the link allow: data segments, then our FIN. */
  pump(): void {
    if (this.state !== 'established') return;
    for (;;) {
      const sentData = Math.min(this.inFlight(), this.queued);
      const unsent = this.queued - sentData;
      if (unsent > 0) {
        const room = seqDiff(seqAdd(this.sndUna, this.sndWnd), this.sndNxt);
        if (room <= 0) {
          if (this.sndWnd === 0) this.armPersist();
          break;
        }
        if (this.env.linkBlocked) {
          this.env.waitForLink(this);
          break;
        }
        const len = Math.min(unsent, room, this.guestMss);
        const from = sentData;
        const last = len === unsent;
        this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: ACK | (last ? PSH : 0), window: this.windowField() }, len, (buf, off) => this.copyQueued(from, len, buf, off));
        this.sndNxt = seqAdd(this.sndNxt, len);
        this.ackDue = false;
        if (!this.rtoAt) this.armRto();
        continue;
      }
      if (this.hostEof && !this.finSent) {
        this.finSeq = this.sndNxt;
        this.finSent = true;
        this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: FIN | ACK, window: this.windowField() });
        this.sndNxt = seqAdd(this.sndNxt, 1);
        this.ackDue = false;
        if (!this.rtoAt) this.armRto();
      }
      break;
    }
  }

  /** Copies `len` queued bytes starting `from` bytes after sndUna into `buf` at `off`. */
  private copyQueued(from: number, len: number, buf: Buffer, off: number): void {
    let skip = from + this.queueHead;
    let i = 0;
    while (skip >= this.queue[i]!.length) {
      skip -= this.queue[i]!.length;
      i++;
    }
    let left = len;
    while (left > 0) {
      const chunk = this.queue[i++]!;
      const n = Math.min(left, chunk.length - skip);
      chunk.copy(buf, off, skip, skip + n);
      off += n;
      left -= n;
      skip = 0;
    }
  }

  /** Retransmits from sndUna (go-back-N: the path is a local link, losses are rare). */
  private rewind(): void {
    this.sndNxt = this.sndUna;
    if (this.finSent && !this.finAcked) this.finSent = false;
    this.dupAcks = 0;
    this.pump();
  }

  /** Sends the pending ACK now (called by the service after a batch of frames). */
  flushAck(): void {
    if (this.ackDue && this.state === 'established') this.sendAck();
    this.ackDue = false;
  }

  private sendAck(): void {
    this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: ACK, window: this.windowField() });
    this.ackDue = false;
  }

  /** Bytes we can take from the guest now: the budget minus what the host socket still buffers. */
  private receiveWindow(): number {
    const buffered = this.sock?.writableLength ?? 0;
    return Math.max(0, this.limits.receiveBudget - buffered);
  }

  /** The window field for the next segment; moves the right edge forward only (RFC 9293 §3.8.6). */
  private windowField(): number {
    let win = this.receiveWindow();
    if (win < this.limits.mss && win < this.limits.receiveBudget / 2) win = 0; // RFC 813: no tiny windows
    const max = 65535 << this.rcvScale;
    win = Math.min(win, max);
    if (seqLt(seqAdd(this.rcvNxt, win), this.rcvRightEdge)) win = seqDiff(this.rcvRightEdge, this.rcvNxt);
    win = Math.max(0, win); // a right edge behind rcv.nxt cannot make the field negative
    // Round up, not down, to the scale unit, so the right edge the guest computes never moves left.
    const field = Math.min(65535, Math.ceil(win / 2 ** this.rcvScale));
    const advertised = field * 2 ** this.rcvScale;
    const edge = seqAdd(this.rcvNxt, advertised);
    if (seqLt(this.rcvRightEdge, edge)) this.rcvRightEdge = edge;
    this.lastWindowSent = advertised;
    return field;
  }

  private emit(o: Pick<TcpOut, 'seq' | 'ack' | 'flags' | 'window' | 'mss' | 'wscale'>, payloadLength = 0, fill?: (buf: Buffer, off: number) => void): void {
    this.env.emit(
      buildTcpFrame(
        { srcMac: this.env.srcMac, dstMac: this.env.guestMac, src: this.peerIp, dst: this.guestIp, srcPort: this.peerPort, dstPort: this.guestPort, ...o },
        payloadLength,
        fill,
      ),
    );
  }

  private emitSegment(flags: number, seq: number, ack: number): void {
    this.emit({ seq, ack, flags, window: 0 });
  }

  // ---------------------------------------------------------------------------------------------
  // Timers (driven by the service's tick)

  private armRto(): void {
    this.rtoAt = performance.now() + this.rto;
    this.env.schedule(this, this.rtoAt);
  }

  private disarmRto(): void {
    this.rtoAt = 0;
  }

  private armPersist(): void {
    if (this.persistAt) return;
    this.persistAt = performance.now() + this.persistMs;
    this.env.schedule(this, this.persistAt);
  }

  /** The next deadline this flow has, or 0. */
  get nextDeadline(): number {
    const ds = [this.rtoAt, this.persistAt].filter((d) => d > 0);
    return ds.length ? Math.min(...ds) : 0;
  }

  /** Runs expired timers. */
  tick(now: number): void {
    if (this.state === 'closed') return;
    if (this.rtoAt && now >= this.rtoAt) this.onRto();
    if (this.persistAt && now >= this.persistAt && this.state === 'established') {
      this.persistAt = 0;
      if (this.sndWnd === 0 && this.queued > this.inFlight()) {
        // Zero-window probe (RFC 9293 3.8.6.1): an old sequence number makes Linux answer with an
        // ACK carrying its current window, without us committing data beyond it.
        this.emit({ seq: seqAdd(this.sndNxt, -1), ack: this.rcvNxt, flags: ACK, window: this.windowField() });
        this.persistMs = Math.min(this.persistMs * 2, PERSIST_MAX_MS);
        this.armPersist();
      }
    }
  }

  private onRto(): void {
    this.rtoAt = 0;
    this.retries++;
    const handshake = this.state === 'synSent' || this.state === 'synReceived';
    if (this.retries > (handshake ? SYN_RETRIES : MAX_RETRIES)) {
      if (this.state !== 'synSent') this.emitSegment(RST | ACK, this.sndNxt, this.rcvNxt);
      resetHost(this.sock);
      this.close(handshake ? 'the guest never completed the handshake' : 'the guest stopped acknowledging data');
      return;
    }
    this.rto = Math.min(this.rto * 2, RTO_MAX_MS);
    if (this.state === 'synSent') return this.sendSyn();
    if (this.state === 'synReceived') return this.sendSynAck();
    if (this.inFlight() > 0) {
      this.rewind();
      if (!this.rtoAt) this.armRto();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Closing

  private maybeFinish(): void {
    if (this.state !== 'established') return;
    const hostWriteDone = !this.sock || this.sock.writableFinished || (this.guestFin && this.sock.writableLength === 0);
    if (this.guestFin && this.finAcked && hostWriteDone) {
      // The guest's FIN may be the segment that got us here (it closed last, LAST-ACK): ACK it now,
      // since the flow leaves the table before the batch's flushAcks() would.
      if (this.ackDue) this.sendAck();
      this.sock?.destroy();
      this.close('closed both ways');
    }
  }

  /** Ends the flow without telling the guest (the caller already did, if needed). */
  close(why: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.rtoAt = 0;
    this.persistAt = 0;
    if (this.queued > 0) this.env.adjustQueued(-this.queued, this);
    this.queue = [];
    this.queued = 0;
    if (this.sock && !this.sock.destroyed) this.sock.destroy();
    this.env.closed(this, why);
  }

  /** Resets the host side only (the guest no longer knows this connection). */
  abortHostOnly(why: string): void {
    resetHost(this.sock);
    this.close(why);
  }

  /** Aborts the flow: RST to the guest and to the host (the translator is going away, or limits). */
  abort(why: string): void {
    if (this.state === 'closed') return;
    if (this.state !== 'connecting' && this.state !== 'synSent') this.emitSegment(RST | ACK, this.sndNxt, this.rcvNxt);
    resetHost(this.sock);
    this.close(why);
  }
}

export function flowKey(guestIp: Ip4, guestPort: number, peerIp: Ip4, peerPort: number): string {
  return `${guestIp}:${guestPort}>${peerIp}:${peerPort}`;
}

function clampMss(mss: number | undefined): number {
  if (mss === undefined || mss < 64) return DEFAULT_GUEST_MSS;
  return Math.min(mss, 65495);
}

/** RST on the host side when it is a TCP socket (SO_LINGER 0), plain destroy otherwise. */
function resetHost(sock: Duplex | undefined): void {
  if (!sock || sock.destroyed) return;
  const s = sock as Duplex & { resetAndDestroy?: () => void };
  // While our end() is still shutting the socket down, libuv refuses the reset (EINVAL) and Node
  // then forgets the handle without closing it (a leaked fd): plain destroy in that window.
  const shuttingDown = sock.writableEnded && !sock.writableFinished;
  if (typeof s.resetAndDestroy !== 'function' || shuttingDown) {
    sock.destroy();
    return;
  }
  try {
    s.resetAndDestroy();
  } catch {
    // Not a TCP handle (a flow served by a pipe or in-process stream): Node refuses the reset
    // with ERR_INVALID_HANDLE_TYPE; closing is the closest thing.
    sock.destroy();
  }
}
