import fs from 'node:fs/promises';
import path from 'node:path';
import { BerthError, errnoCode } from '../util/errors.js';
import { mkdirInTree, writeFileMode } from './fsutil.js';
import { runTool } from './run.js';

/**
 * What maintainer scripts would have done on a real install and the guest needs, plus berth's own
 * files. Everything here writes inside `root` only. Runs after extraction and pruning and before
 * guest/rootfs is copied over the tree, so a file in guest/rootfs wins over a generated one.
 */

/** The iptables "alternatives": dockerd runs `iptables`. Legacy x_tables rather than nft, because the
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

export async function applyFixups(root: string, inputs: FixupInputs): Promise<void> {
  for (const d of MOUNT_POINTS) await mkdirInTree(root, d);
  await fs.chmod(path.join(root, 'tmp'), 0o1777);
  await fs.chmod(path.join(root, 'root'), 0o700);

  const sbin = path.join(root, 'usr', 'sbin');
  try {
    await fs.access(path.join(sbin, IPTABLES_TARGET));
  } catch {
    throw new BerthError('IMAGE_BUILD_FAILED', `Image build failed at step "rootfs": /usr/sbin/${IPTABLES_TARGET} is missing from the image (dockerd needs iptables).`, {
      hint: 'Keep "iptables" in packages.engine of guest/manifest.json and out of "exclude" and "prune".',
    });
  }
  for (const l of IPTABLES_LINKS) {
    const p = path.join(sbin, l);
    await fs.rm(p, { force: true });
    await fs.symlink(IPTABLES_TARGET, p);
  }

  const etc = path.join(root, 'etc');
  await writeFileMode(path.join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n', 0o644);
  await writeFileMode(path.join(etc, 'group'), `root:x:0:\ndocker:x:${DOCKER_GID}:\nnogroup:x:65534:\n`, 0o644);
  // (writeFileMode replaces a symlink, which is what base-files would have made os-release.)
  await writeFileMode(
    path.join(etc, 'os-release'),
    ['NAME="berth guest"', 'ID=berth', 'ID_LIKE=debian', 'PRETTY_NAME="berth guest (Debian 12 packages)"', `BERTH_IMAGE_KEY=${inputs.key}`, ''].join('\n'),
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
