/**
 * Ethernet II frames as QEMU hands them over: destination MAC, source MAC, EtherType, payload; no
 * preamble, no FCS, no VLAN tags (a tagged frame is not ours and is dropped).
 *
 * Outgoing frames are built in one buffer with FRAME_PREFIX bytes reserved in front for the
 * link's length prefix (qemu-link.ts), so a segment is written once and sent without a copy.
 */

export const ETH_HEADER = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
/** Bytes reserved before the Ethernet header of every outgoing frame (QEMU's length prefix). */
export const FRAME_PREFIX = 4;

export interface EthFrame {
  dst: Buffer;
  src: Buffer;
  type: number;
  /** Views into the frame, no copies. */
  payload: Buffer;
}

/** Undefined for frames too short to hold a header. */
export function parseEthernet(frame: Buffer): EthFrame | undefined {
  if (frame.length < ETH_HEADER) return undefined;
  return {
    dst: frame.subarray(0, 6),
    src: frame.subarray(6, 12),
    type: frame.readUInt16BE(12),
    payload: frame.subarray(ETH_HEADER),
  };
}

/**
 * Allocates an outgoing frame of `payloadLength` bytes after the Ethernet header, with the prefix
 * reserved, and writes the header. Returns the buffer and the offset where the payload starts.
 */
export function allocFrame(dst: Buffer, src: Buffer, type: number, payloadLength: number): { buf: Buffer; off: number } {
  // allocUnsafe: every byte is written by the caller (headers, then payload); the prefix by the link.
  const buf = Buffer.allocUnsafe(FRAME_PREFIX + ETH_HEADER + payloadLength);
  dst.copy(buf, FRAME_PREFIX, 0, 6);
  src.copy(buf, FRAME_PREFIX + 6, 0, 6);
  buf.writeUInt16BE(type, FRAME_PREFIX + 12);
  return { buf, off: FRAME_PREFIX + ETH_HEADER };
}
