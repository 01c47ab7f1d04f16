/** Shared fixtures for the image builder's unit tests (src/image/*.test.ts); the builder itself never imports them. */

/** A valid manifest in the shape of guest/manifest.json (a copy: that file changes independently). */
export function sampleManifest(): Record<string, unknown> {
  return {
    name: 'berth-guest',
    format: 2,
    arch: 'amd64',
    sources: {
      trixie: { keyring: '/usr/share/keyrings/debian-archive-keyring.gpg', lines: ['http://deb.debian.org/debian trixie main'] },
    },
    base: {
      source: 'host',
      kernel: {
        package: 'linux-image-amd64',
        cmdline: 'console=ttyS0 quiet',
        initramfsModules: ['virtio_blk', 'squashfs', 'overlay'],
        modules: ['virtio_blk', 'squashfs', 'overlay', 'br_netfilter', 'xt_MASQUERADE', '9pnet_fd'],
      },
      packages: ['busybox-static', 'kmod', 'nodejs=18.20.4+dfsg-1~deb12u3'],
    },
    packs: [
      { id: '26', title: 'Docker 26', source: 'trixie', packages: ['docker.io', 'containerd', 'runc', 'iptables', 'qemu-user'], emulators: ['aarch64'] },
      { id: '20.10', title: 'Docker 20.10', source: 'host', packages: ['docker.io', 'containerd', 'runc', 'iptables'] },
    ],
    exclude: ['perl', 'perl-modules-5.36', 'libpam0g'],
    prune: ['usr/share/doc', 'lib/systemd'],
  };
}
