import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { BerthError } from '../util/errors.js';
import { extractVmlinux, gunzipLenient, parseBzImage } from './kernel.js';

const FAKE_ELF = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]), Buffer.alloc(5000, 0x90)]);

/**
 * A minimal synthetic bzImage: the boot header fields the parser reads, `setupSects` 512-byte
 * setup sectors (0 means 4), then the protected-mode part with the payload at `pad` bytes in,
 * followed by 4 bytes (the kernel appends the uncompressed size after xz payloads).
 */
function bzImage(payload: Buffer, opts: { setupSects?: number; pad?: number; protocol?: number; trailer?: boolean } = {}): Buffer {
  const setupSects = opts.setupSects ?? 0;
  const pad = opts.pad ?? 0x3c8;
  const pm = ((setupSects || 4) + 1) * 512;
  const trailer = opts.trailer === false ? Buffer.alloc(0) : Buffer.from([0x11, 0x22, 0x33, 0x44]);
  const buf = Buffer.alloc(pm + pad + payload.length + trailer.length + 100, 0xcc);
  buf[0x1f1] = setupSects;
  buf.writeUInt32LE(0x53726448, 0x202); // "HdrS"
  buf.writeUInt16LE(opts.protocol ?? 0x020f, 0x206);
  buf.writeUInt32LE(pad, 0x248);
  buf.writeUInt32LE(payload.length + trailer.length, 0x24c);
  payload.copy(buf, pm + pad);
  trailer.copy(buf, pm + pad + payload.length);
  return buf;
}

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-kernel-'));
  try {
    await fn(dir);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function isBuildFailure(re: RegExp) {
  return (err: unknown) => err instanceof BerthError && err.code === 'IMAGE_BUILD_FAILED' && re.test(err.message);
}

test('parseBzImage finds a gzip payload (setup_sects 0 means 4)', () => {
  const gz = zlib.gzipSync(FAKE_ELF);
  const p = parseBzImage(bzImage(gz, { setupSects: 0, pad: 0x100 }));
  assert.equal(p.compression, 'gzip');
  assert.equal(p.offset, 5 * 512 + 0x100);
  assert.equal(p.length, gz.length + 4);
});

test('parseBzImage honours a non-default setup_sects', () => {
  const gz = zlib.gzipSync(FAKE_ELF);
  const p = parseBzImage(bzImage(gz, { setupSects: 27, pad: 8 }));
  assert.equal(p.offset, 28 * 512 + 8);
});

test('extractVmlinux decompresses a gzip payload with trailing bytes into the ELF', async () => {
  await withTmp(async (dir) => {
    await fs.writeFile(path.join(dir, 'vmlinuz'), bzImage(zlib.gzipSync(FAKE_ELF)));
    const r = await extractVmlinux(path.join(dir, 'vmlinuz'), path.join(dir, 'vmlinux'));
    assert.equal(r.compression, 'gzip');
    assert.equal(r.size, FAKE_ELF.length);
    assert.deepEqual(await fs.readFile(path.join(dir, 'vmlinux')), FAKE_ELF);
  });
});

test('extractVmlinux decompresses an xz payload with the xz CLI', async () => {
  const xz = execFileSync('xz', ['-c', '--check=crc32'], { input: FAKE_ELF });
  await withTmp(async (dir) => {
    await fs.writeFile(path.join(dir, 'vmlinuz'), bzImage(xz));
    const r = await extractVmlinux(path.join(dir, 'vmlinuz'), path.join(dir, 'vmlinux'));
    assert.equal(r.compression, 'xz');
    assert.deepEqual(await fs.readFile(path.join(dir, 'vmlinux')), FAKE_ELF);
  });
});

test('garbage is refused with a clear error', async () => {
  assert.throws(() => parseBzImage(Buffer.alloc(100)), isBuildFailure(/not a usable bzImage.*HdrS/));
  assert.throws(() => parseBzImage(Buffer.alloc(4096, 0x5a)), isBuildFailure(/HdrS/));
  assert.throws(() => parseBzImage(bzImage(Buffer.from('BZh91AY&SY not supported'))), isBuildFailure(/compression not supported/));
  assert.throws(() => parseBzImage(bzImage(zlib.gzipSync(FAKE_ELF), { protocol: 0x0206 })), isBuildFailure(/2\.08/));
  const truncated = bzImage(zlib.gzipSync(FAKE_ELF));
  truncated.writeUInt32LE(truncated.length, 0x24c);
  assert.throws(() => parseBzImage(truncated), isBuildFailure(/outside/));
  await withTmp(async (dir) => {
    await fs.writeFile(path.join(dir, 'vmlinuz'), bzImage(zlib.gzipSync(Buffer.from('not an elf file at all'))));
    await assert.rejects(extractVmlinux(path.join(dir, 'vmlinuz'), path.join(dir, 'vmlinux')), isBuildFailure(/not an ELF/));
    const badXz = Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(64, 1)]);
    await fs.writeFile(path.join(dir, 'vmlinuz2'), bzImage(badXz));
    await assert.rejects(extractVmlinux(path.join(dir, 'vmlinuz2'), path.join(dir, 'vmlinux2')), isBuildFailure(/xz/));
  });
});

test('gunzipLenient skips optional gzip header fields', async () => {
  // FNAME set: gzip -c with a file name stores it in the header.
  await withTmp(async (dir) => {
    await fs.writeFile(path.join(dir, 'named'), FAKE_ELF);
    const gz = execFileSync('gzip', ['-c', '-N', path.join(dir, 'named')]);
    assert.ok(gz[3]! & 0x08, 'FNAME flag set');
    assert.deepEqual(await gunzipLenient(Buffer.concat([gz, Buffer.from('trailing')])), FAKE_ELF);
  });
});
