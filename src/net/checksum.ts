/**
 * The Internet checksum (RFC 1071): the one's complement of the one's complement sum of 16-bit
 * big-endian words. With QEMU's stream netdev there is no vnet header, so no checksum offload:
 * the guest sends full checksums and verifies ours (docs/network.md).
 *
 * The running sum is kept in a JavaScript number (exact up to 2^53), not folded per word: a 64 KiB
 * packet adds at most 32768 × 0xffff < 2^31, so one fold at the end suffices for any frame.
 */

/** Adds the 16-bit words of buf[off, off+len) to `sum` (an odd trailing byte is padded with 0). */
export function sumWords(buf: Uint8Array, off: number, len: number, sum = 0): number {
  const end = off + len;
  const even = off + (len & ~1);
  let i = off;
  for (; i < even; i += 2) sum += (buf[i]! << 8) | buf[i + 1]!;
  if (i < end) sum += buf[i]! << 8;
  return sum;
}

/** Folds a running sum into 16 bits of one's complement sum. */
export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The checksum field value for the bytes (with the checksum field itself zeroed or included). */
export function checksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return ~fold(sumWords(buf, off, len, initial)) & 0xffff;
}

/** Sum of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768) for TCP/UDP checksums. */
export function pseudoHeaderSum(src: number, dst: number, proto: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + length;
}
