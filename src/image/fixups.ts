import fs from 'node:fs/promises';
import path from 'node:path';
import { BerthError, errnoCode } from '../util/errors.js';
import { mkdirInTree, writeFileMode } from './fsutil.js';
import { runTool } from './run.js';
import type { PackSpec } from './manifest.js';

/**
 * What maintainer scripts would have done on a real install and the guest needs, plus berth's own
 * files. Everything here writes inside `root` only. Runs after extraction and pruning and before
 * guest/rootfs is copied over the tree, so a file in guest/rootfs wins over a generated one.
 */

/** The iptables "alternatives" (set in each engine pack): dockerd runs `iptables`. Legacy x_tables rather than nft, because the
 * manifest's module set (ip_tables, iptable_*, xt_*) is the legacy one. */
const IPTABLES_LINKS = ['iptables', 'iptables-save', 'iptables-restore', 'ip6tables', 'ip6tables-save', 'ip6tables-restore'];
const IPTABLES_TARGET = 'xtables-legacy-multi';

/** Mount points the guest's init scripts use (the root image is read-only; they must exist in it). */
export const MOUNT_POINTS = ['proc', 'sys', 'dev', 'run', 'tmp', 'mnt/data', 'var/lib/docker', 'var/lib/containerd', 'root', 'etc/berth'];

/** The docker group's gid; fixed so files on the data disk keep their group across images. */
export const DOCKER_GID = 999;

export interface FixupInputs {
  /** The image key, recorded in /etc/os-release. */
  key: string;
  /** versions.json content, installed as /etc/berth/image.json. */
  imageJson: string;
}

/**
 * What an engine pack needs beyond its unpacked packages: the iptables alternatives, only the
 * emulators the pack keeps, the binfmt_misc registrations for them (/usr/lib/berth/binfmt.conf, read
 * by the base's init at every boot), and /etc/berth/engine.json. Writes inside `root` only.
 */
export async function applyPackFixups(root: string, pack: PackSpec, engineJson: string): Promise<{ emulators: string[] }> {
  const sbin = path.join(root, 'usr', 'sbin');
  try {
    await fs.access(path.join(sbin, IPTABLES_TARGET));
  } catch {
    throw new BerthError('IMAGE_BUILD_FAILED', `Engine pack ${pack.id} build failed at step "rootfs": /usr/sbin/${IPTABLES_TARGET} is missing (dockerd needs iptables).`, {
      hint: `Keep "iptables" in the packages of pack ${pack.id} in guest/manifest.json and out of "exclude" and "prune".`,
    });
  }
  for (const l of IPTABLES_LINKS) {
    const p = path.join(sbin, l);
    await fs.rm(p, { force: true });
    await fs.symlink(IPTABLES_TARGET, p);
  }
  for (const rel of BASE_OWNED) await fs.rm(path.join(root, rel), { force: true });
  const emulators = await keepEmulators(root, pack.emulators);
  const lines: string[] = [];
  for (const arch of emulators) lines.push(`${arch}\t${await binfmtRegistration(root, arch)}`);
  await mkdirInTree(root, 'usr/lib/berth');
  await writeFileMode(path.join(root, 'usr', 'lib', 'berth', 'binfmt.conf'), lines.map((l) => `${l}\n`).join(''), 0o644);
  await mkdirInTree(root, 'etc/berth');
  await writeFileMode(path.join(root, 'etc', 'berth', 'engine.json'), engineJson, 0o644);
  return { emulators };
}

/**
 * Files berth's base provides (guest/rootfs and the base fixups). A package's own default (Debian's
 * containerd ships a config.toml) would be laid over them by the pack and win, so packs drop them.
 */
const BASE_OWNED = ['etc/containerd/config.toml', 'etc/docker/daemon.json', 'etc/passwd', 'etc/group', 'etc/os-release', 'etc/hosts', 'etc/hostname'];

/** qemu-user's emulators: /usr/bin/qemu-ARCH (Debian 13) or /usr/bin/qemu-ARCH-static (Debian 12). */
const EMULATOR_FILE = /^qemu-([a-z0-9_]+?)(-static)?$/;

/**
 * Removes every qemu-user emulator not in `wanted` (with its binfmt-P link and binfmt.d file) and
 * returns the wanted ones that are present, in `wanted`'s order. A wanted emulator that the
 * packages do not ship is an error: the manifest promised it.
 */
async function keepEmulators(root: string, wanted: string[]): Promise<string[]> {
  const bin = path.join(root, 'usr', 'bin');
  const present = new Set<string>();
  for (const name of await fs.readdir(bin)) {
    const m = EMULATOR_FILE.exec(name);
    if (!m) continue;
    const arch = m[1]!;
    if (wanted.includes(arch)) present.add(arch);
    else await fs.rm(path.join(bin, name), { force: true });
  }
  const dropDir = async (dir: string, archOf: (name: string) => string | undefined): Promise<void> => {
    let names: string[];
    try {
      names = await fs.readdir(path.join(root, dir));
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return;
      throw err;
    }
    for (const name of names) {
      const arch = archOf(name);
      if (arch !== undefined && !present.has(arch)) await fs.rm(path.join(root, dir, name), { force: true });
    }
  };
  await dropDir('usr/libexec/qemu-binfmt', (n) => /^([a-z0-9_]+)-binfmt-P$/.exec(n)?.[1]);
  for (const d of BINFMT_DIRS) await dropDir(d, (n) => /^qemu-([a-z0-9_]+)\.conf$/.exec(n)?.[1]);
  const missing = wanted.filter((a) => !present.has(a));
  if (missing.length > 0) {
    throw new BerthError('IMAGE_BUILD_FAILED', `The engine pack's packages ship no qemu-user emulator for ${missing.join(', ')}.`, {
      hint: 'Add qemu-user (Debian 13) or qemu-user-static (Debian 12) to the pack\'s packages, or remove those names from its "emulators".',
      details: { missing },
    });
  }
  return wanted.filter((a) => present.has(a));
}

/** Where Debian's qemu packages put their binfmt_misc definitions (Debian 13, then Debian 12). */
const BINFMT_DIRS = ['usr/share/qemu/binfmt.d', 'usr/lib/binfmt.d'];

/**
 * The string written to /proc/sys/fs/binfmt_misc/register for `arch`: magic and mask from
 * Debian's own definition, our interpreter path, and the flags containers need (kernel
 * Documentation/admin-guide/binfmt-misc.rst): F opens the emulator at registration, so it runs in
 * every mount namespace (containers do not have it); C (which implies O) computes credentials from
 * the program, not the emulator, so set-uid programs work; P keeps argv[0], which qemu expects
 * when its name ends in -binfmt-P.
 */
async function binfmtRegistration(root: string, arch: string): Promise<string> {
  for (const dir of BINFMT_DIRS) {
    let text: string;
    try {
      text = await fs.readFile(path.join(root, dir, `qemu-${arch}.conf`), 'utf8');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') continue;
      throw err;
    }
    const def = parseBinfmtDefinition(text);
    if (!def) break;
    const interpreter = await emulatorPath(root, arch);
    return `:qemu-${arch}:M:${def.offset}:${def.magic}:${def.mask}:${interpreter}:POCF`;
  }
  throw new BerthError('IMAGE_BUILD_FAILED', `The engine pack has no usable binfmt_misc definition for ${arch} (qemu-${arch}.conf).`, {
    hint: 'Use Debian\'s qemu-user (13) or qemu-user-static (12) package, which ship them.',
    details: { arch },
  });
}

/** The interpreter for `arch`: the -binfmt-P link if the package has it, else the emulator itself. */
async function emulatorPath(root: string, arch: string): Promise<string> {
  const candidates = [`/usr/libexec/qemu-binfmt/${arch}-binfmt-P`, `/usr/bin/qemu-${arch}`, `/usr/bin/qemu-${arch}-static`];
  for (const c of candidates) {
    try {
      await fs.stat(path.join(root, c)); // Debian's -binfmt-P links are relative: this follows them inside the tree
      return c;
    } catch {
      /* next */
    }
  }
  throw new BerthError('IMAGE_BUILD_FAILED', `No emulator file for ${arch} in the engine pack.`, { hint: 'Check the pack\'s qemu-user package.' });
}

/** Magic and mask bytes: binfmt_misc's \xHH escapes (and plain printable characters but ":"). */
const BINFMT_BYTES = /^(?:\\x[0-9a-fA-F]{2}|[!-9;-\[\]-~])+$/;

/**
 * Parses a binfmt.d line `:name:M:offset:magic:mask:interpreter:flags` (the first non-comment line).
 * Returns undefined if it is not a magic ("M") definition with a well-formed magic and mask.
 */
export function parseBinfmtDefinition(text: string): { offset: string; magic: string; mask: string } | undefined {
  const line = text.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#'));
  if (!line) return undefined;
  const f = line.split(':');
  if (f.length !== 8 || f[0] !== '' || f[2] !== 'M') return undefined;
  const [, , , offset, magic, mask] = f as [string, string, string, string, string, string];
  if (!/^[0-9]{0,3}$/.test(offset) || !BINFMT_BYTES.test(magic) || (mask !== '' && !BINFMT_BYTES.test(mask))) return undefined;
  return { offset, magic, mask };
}

export async function applyFixups(root: string, inputs: FixupInputs): Promise<void> {
  for (const d of MOUNT_POINTS) await mkdirInTree(root, d);
  await fs.chmod(path.join(root, 'tmp'), 0o1777);
  await fs.chmod(path.join(root, 'root'), 0o700);

  const etc = path.join(root, 'etc');
  await writeFileMode(path.join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n', 0o644);
  await writeFileMode(path.join(etc, 'group'), `root:x:0:\ndocker:x:${DOCKER_GID}:\nnogroup:x:65534:\n`, 0o644);
  // (writeFileMode replaces a symlink, which is what base-files would have made os-release.)
  await writeFileMode(
    path.join(etc, 'os-release'),
    ['NAME="berth guest"', 'ID=berth', 'ID_LIKE=debian', 'PRETTY_NAME="berth guest"', `BERTH_IMAGE_KEY=${inputs.key}`, ''].join('\n'),
    0o644,
  );
  await writeFileMode(path.join(etc, 'berth', 'image.json'), inputs.imageJson, 0o644);
  await linkBusyboxApplets(root);
}

/** Applets never linked: the guest's PID 1 is berth's own init, not busybox's. */
const SKIPPED_APPLETS = new Set(['sbin/init', 'linuxrc', 'sbin/linuxrc']);

/**
 * Busybox-static installs only /bin/busybox, so plain `cat`, `ls` or `ps` do not exist for
 * `berth shell -- cat` or for scripts (busybox sh finds its applets internally, exec does not).
 * Every applet gets a link where no real program of the same path exists, so the real tools from
 * packages (kmod's modprobe, e2fsprogs' mkfs.ext4, util-linux's script) are kept. The list comes
 * from running the guest's own busybox, which is static and runs on the build host.
 */
async function linkBusyboxApplets(root: string): Promise<void> {
  const busybox = path.join(root, 'usr', 'bin', 'busybox');
  try {
    await fs.access(busybox);
  } catch {
    return; // no busybox in this tree (unit-test trees); the initramfs step reports it if needed
  }
  const { stdout } = await runTool(busybox, ['--list-full'], { code: 'IMAGE_BUILD_FAILED', what: 'Image build failed at step "rootfs" (listing busybox applets)' });
  for (const rel of stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (SKIPPED_APPLETS.has(rel) || rel.split('/').includes('..')) continue;
    const link = path.join(root, rel);
    try {
      await fs.lstat(link);
      continue; // a real program (or an earlier link) is there
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
    await fs.mkdir(path.dirname(link), { recursive: true });
    await fs.symlink('/usr/bin/busybox', link);
  }
}

/**
 * Copies `src/**` over `root`: regular files with their modes, symlinks as they are, directories
 * created with the source's mode when new (existing directories keep theirs, so guest/rootfs/etc
 * does not change /etc). Returns the number of files and links copied.
 */
export async function copyOverlay(src: string, root: string): Promise<number> {
  let n = 0;
  const walk = async (rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(path.join(src, rel), { withFileTypes: true });
    } catch (err) {
      if (rel === '' && errnoCode(err) === 'ENOENT') return; // no guest/rootfs: nothing to copy
      throw err;
    }
    for (const e of entries) {
      const r = path.join(rel, e.name);
      const from = path.join(src, r);
      const to = path.join(root, r);
      if (e.isDirectory()) {
        const mode = (await fs.stat(from)).mode & 0o7777;
        // mkdir follows an existing symlink such as lib -> usr/lib, keeping the tree merged.
        const created = await fs.mkdir(to, { recursive: true });
        if (created !== undefined) await fs.chmod(to, mode);
        await walk(r);
      } else if (e.isSymbolicLink()) {
        await fs.rm(to, { force: true });
        await fs.symlink(await fs.readlink(from), to);
        n++;
      } else if (e.isFile()) {
        await fs.rm(to, { force: true });
        await fs.copyFile(from, to);
        await fs.chmod(to, (await fs.stat(from)).mode & 0o7777);
        n++;
      }
    }
  };
  await walk('');
  return n;
}

/** Installs the agent bundle as /usr/lib/berth/agent.cjs (0644; node runs it, it is not executed). */
export async function installAgent(bundle: Buffer, root: string): Promise<void> {
  await mkdirInTree(root, 'usr/lib/berth');
  await writeFileMode(path.join(root, 'usr', 'lib', 'berth', 'agent.cjs'), bundle, 0o644);
}
