import fs from 'node:fs/promises';
import zlib from 'node:zlib';
import { promisify } from 'node:util';
import { BerthError } from '../util/errors.js';
import { toolPath } from './host-tools.js';
import { runTool } from './run.js';

/**
 * Turns a bzImage into the uncompressed ELF `vmlinux` that QEMU boots through the PVH entry point.
 * Under TCG the kernel's own decompression of its payload costs ~3 s of every boot; doing it once
 * at build time removes that (docs/image.md, step "kernel").
 *
 * The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst) says where the payload is:
 *   0x1f1 setup_sects (u8; 0 means 4)   0x202 "HdrS" magic   0x206 protocol version (u16)
 *   0x248 payload_offset (u32 LE)       0x24c payload_length (u32 LE)
 * payload_offset counts from the protected-mode code, which starts at (setup_sects + 1) * 512.
 * The payload fields exist from boot protocol 2.08 on.
 */
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const HDRS = 0x53726448; // "HdrS" read as u32 LE

export interface KernelPayload {
  compression: 'xz' | 'gzip' | 'zstd';
  /** Byte offset of the payload in the bzImage. */
  offset: number;
  length: number;
}

function notBzImage(why: string): BerthError {
  return new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "kernel": the kernel file is not a usable bzImage (${why}).`, {
    hint: 'kernel.package in guest/manifest.json must be an x86 Debian kernel image package (xz-, zstd- or gzip-compressed).',
  });
}

/** Locates and identifies the compressed payload of a bzImage. Throws IMAGE_BUILD_FAILED otherwise. */
export function parseBzImage(bzImage: Buffer): KernelPayload {
  if (bzImage.length < 0x250 || bzImage.readUInt32LE(0x202) !== HDRS) throw notBzImage('no "HdrS" boot header at 0x202');
  const protocol = bzImage.readUInt16LE(0x206);
  if (protocol < 0x208) throw notBzImage(`boot protocol ${protocol >> 8}.${(protocol & 0xff).toString().padStart(2, '0')} has no payload fields (2.08 needed)`);
  const setupSects = bzImage[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + bzImage.readUInt32LE(0x248);
  const length = bzImage.readUInt32LE(0x24c);
  if (length === 0 || offset + length > bzImage.length) throw notBzImage(`payload ${offset}+${length} lies outside the ${bzImage.length}-byte file`);
  const head = bzImage.subarray(offset, offset + 6);
  if (head.equals(XZ_MAGIC)) return { compression: 'xz', offset, length };
  if (head.subarray(0, 3).equals(GZIP_MAGIC)) return { compression: 'gzip', offset, length };
  if (head.subarray(0, 4).equals(ZSTD_MAGIC)) return { compression: 'zstd', offset, length };
  throw notBzImage(`payload compression not supported (magic ${head.toString('hex')}; xz, zstd and gzip are)`);
}

/**
 * Decompresses the payload of `bzImagePath` into `outPath` and checks the result is an ELF file.
 * Returns the payload description and the size of the written vmlinux.
 */
export async function extractVmlinux(bzImagePath: string, outPath: string, signal?: AbortSignal): Promise<KernelPayload & { size: number }> {
  const bz = await fs.readFile(bzImagePath);
  const payload = parseBzImage(bz);
  const data = bz.subarray(payload.offset, payload.offset + payload.length);
  if (payload.compression === 'xz' || payload.compression === 'zstd') {
    // The kernel appends the uncompressed size (4 bytes) after the compressed stream: xz is told to
    // stop after one stream, and zstd gets the stream without those bytes (it would reject them as
    // trailing garbage). Output goes straight to the file.
    const [tool, args, input] = payload.compression === 'xz' ? ['xz', ['-dc', '--single-stream'], data] : ['zstd', ['-dcq'], data.subarray(0, data.length - 4)];
    const out = await fs.open(outPath, 'w', 0o644);
    try {
      await runTool(toolPath(tool), args, {
        code: 'IMAGE_BUILD_FAILED',
        what: `Image build failed at step "kernel": ${tool} cannot decompress the kernel payload`,
        signal,
        input,
        stdoutFd: out.fd,
      });
    } finally {
      await out.close();
    }
  } else {
    let elf: Buffer;
    try {
      elf = await gunzipLenient(data);
    } catch (err) {
      throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "kernel": cannot decompress the gzip kernel payload: ${(err as Error).message}.`, { cause: err });
    }
    await fs.writeFile(outPath, elf, { mode: 0o644 });
  }
  const fh = await fs.open(outPath, 'r');
  let head: Buffer;
  let size: number;
  try {
    head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0);
    size = (await fh.stat()).size;
  } finally {
    await fh.close();
  }
  if (!head.equals(ELF_MAGIC)) {
    throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "kernel": the decompressed kernel is not an ELF file (starts with ${head.toString('hex')}).`, {
      hint: 'kernel.package in guest/manifest.json must be an x86 Debian kernel image package.',
    });
  }
  return { ...payload, size };
}

const inflateRaw = promisify(zlib.inflateRaw);

/**
 * gunzip that tolerates bytes after the gzip member (Node's gunzip rejects them): skips the gzip
 * header (RFC 1952 2.3) and inflates the raw deflate stream, which stops at its own end.
 */
export async function gunzipLenient(data: Buffer): Promise<Buffer> {
  if (data.length < 18 || !data.subarray(0, 3).equals(GZIP_MAGIC)) throw new Error('not gzip data');
  const flags = data[3]!;
  let pos = 10;
  if (flags & 0x04) pos += 2 + data.readUInt16LE(pos); // FEXTRA
  if (flags & 0x08) pos = data.indexOf(0, pos) + 1; // FNAME, NUL-terminated
  if (flags & 0x10) pos = data.indexOf(0, pos) + 1; // FCOMMENT, NUL-terminated
  if (flags & 0x02) pos += 2; // FHCRC
  if (pos <= 0 || pos >= data.length) throw new Error('truncated gzip header');
  return inflateRaw(data.subarray(pos));
}
