import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { downloadPackages, prepareAptState, resolveClosure, updatePrivateIndices, type AptContext } from '../../src/image/apt.js';
import { createMergedUsrTree, extractDeb } from '../../src/image/extract.js';
import { cacheDir, run } from './harness.js';

/**
 * Container images for the e2e tests, built from Debian packages with berth's own image-builder
 * pieces (apt resolution and download into the shared deb cache, dpkg-deb extraction into a
 * merged-/usr tree) and imported with `docker import`: no registry, no Docker Hub, no chroot.
 *
 * Every image has busybox-static with a link per applet (a shell and the usual tools), plus the
 * packages asked for with their dependencies (socat for UDP and TCP services, inotify-tools for
 * file watching, ...). Tarballs are cached in $BERTH_CACHE/test-images by package list.
 */
export async function debianImageTar(packages: string[], opts: { arch?: 'arm64' | 'armhf' | 'ppc64el' | 's390x'; setuid?: string[] } = {}): Promise<Buffer> {
  const wanted = ['busybox-static', ...packages].sort();
  // The tag names the layout this code writes: a change to it must not reuse old tarballs.
  const key = createHash('sha256').update(['layout-2', opts.arch ?? 'native', ...wanted, '--setuid', ...(opts.setuid ?? [])].join(' ')).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), 'test-images');
  const tarFile = path.join(dir, `${key}.tar`);
  if (fs.existsSync(tarFile)) return fs.readFileSync(tarFile);
  fs.mkdirSync(dir, { recursive: true });
  const work = fs.mkdtempSync(path.join(dir, `build-${key}-`));
  try {
    const apt: AptContext = { stateDir: path.join(work, 'apt'), debsDir: path.join(cacheDir(), 'debs') };
    if (opts.arch) {
      // Another architecture's packages come from Debian's mirror through a private apt state.
      apt.arch = opts.arch;
      apt.source = {
        name: `bookworm-${opts.arch}`,
        spec: { keyring: '/usr/share/keyrings/debian-archive-keyring.gpg', lines: ['http://deb.debian.org/debian bookworm main'] },
        listsDir: path.join(cacheDir(), 'apt', `test-bookworm-${opts.arch}`, 'lists'),
      };
    }
    await prepareAptState(apt);
    await updatePrivateIndices(apt);
    const closure = await resolveClosure(apt, wanted);
    await downloadPackages(apt, closure, () => {});
    const root = path.join(work, 'root');
    await createMergedUsrTree(root);
    for (const p of closure) await extractDeb(path.join(apt.debsDir, p.filename), root);
    for (const d of ['etc', 'tmp', 'root', 'proc', 'sys', 'dev', 'var/tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    const busybox = path.join(root, 'usr', 'bin', 'busybox');
    // A foreign busybox cannot run here: its applets are listed by the native build of the same
    // Debian package (the same configuration).
    const list = await run(opts.arch ? await nativeBusybox(work) : busybox, ['--list']);
    if (list.code !== 0 || !list.stdout.includes('sh')) throw new Error(`busybox --list failed: ${list.stderr}`);
    for (const applet of list.stdout.split('\n').filter(Boolean)) {
      const link = path.join(root, 'usr', 'bin', applet);
      if (applet !== 'busybox' && !fs.existsSync(link) && !fs.existsSync(path.join(root, 'usr', 'sbin', applet))) fs.symlinkSync('busybox', link);
    }
    // Set-uid copies, as `sudo` is: /usr/local/bin/<name>-suid, root-owned, mode 4755.
    for (const prog of opts.setuid ?? []) {
      const to = path.join(root, 'usr', 'local', 'bin', `${prog}-suid`);
      fs.mkdirSync(path.dirname(to), { recursive: true });
      fs.copyFileSync(path.join(root, 'usr', 'bin', prog), to);
      fs.chmodSync(to, 0o4755);
    }
    fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    fs.writeFileSync(path.join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    const tar = await tarTree(root);
    fs.writeFileSync(`${tarFile}.tmp`, tar);
    fs.renameSync(`${tarFile}.tmp`, tarFile);
    return tar;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function tarTree(root: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const p = spawn('tar', ['-C', root, '--owner=0', '--group=0', '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    p.stdout.on('data', (d: Buffer) => chunks.push(d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`tar exited ${code}`))));
  });
}

/** The host architecture's busybox from the deb cache (the base image build put it there), unpacked under `work`. */
async function nativeBusybox(work: string): Promise<string> {
  const debs = path.join(cacheDir(), 'debs');
  const deb = fs.readdirSync(debs).find((f) => f.startsWith('busybox-static_') && f.endsWith('_amd64.deb'));
  if (!deb) throw new Error(`busybox-static (amd64) .deb not found in ${debs}: build the image first`);
  const dir = path.join(work, 'native-busybox');
  const x = await run('dpkg-deb', ['-x', path.join(debs, deb), dir]);
  if (x.code !== 0) throw new Error(`dpkg-deb failed: ${x.stderr}`);
  return path.join(dir, 'bin', 'busybox');
}
