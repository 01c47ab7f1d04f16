import { randomBytes } from 'node:crypto';

/**
 * Single-use tickets that open the file server (docs/files.md "Security"): each is good for one
 * connection to one share, once, until it expires. The boot's tickets reach the guest's init
 * through fw_cfg and are used up by the boot's mounts; a remount gets fresh ones over the
 * control channel. So nothing a process in the VM can read later opens the server: what was in
 * fw_cfg is spent, and the guest's mount helper proves its connection itself, so no ticket is ever
 * in a command line or in the mount options.
 */
export interface Ticket {
  ticket: string;
  share: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
}

/** A new ticket: 32 random bytes, hex. */
export function newTicket(): string {
  return randomBytes(32).toString('hex');
}

/** The tickets a file server accepts; at most MAX outstanding (the oldest go first). */
export class TicketBook {
  static readonly MAX = 256;
  private readonly tickets = new Map<string, Ticket>();

  constructor(private readonly now: () => number = Date.now) {}

  add(t: Ticket): void {
    this.tickets.set(t.ticket, t);
    while (this.tickets.size > TicketBook.MAX) this.tickets.delete(this.tickets.keys().next().value as string);
  }

  /** The share a valid ticket opens; the ticket is spent whether or not it was still valid. */
  consume(ticket: string): string | undefined {
    const t = this.tickets.get(ticket);
    if (!t) return undefined;
    this.tickets.delete(ticket);
    return t.expiresAt > this.now() ? t.share : undefined;
  }

  revokeAll(): void {
    this.tickets.clear();
  }

  get size(): number {
    return this.tickets.size;
  }
}
