/** Shared fixtures for the image builder's unit tests (not used by the builder itself). */

/** A valid manifest in the shape of guest/manifest.json (a copy: that file changes independently). */
export function sampleManifest(): Record<string, unknown> {
  return {
    name: 'berth-guest',
    format: 1,
    arch: 'amd64',
    kernel: {
      package: 'linux-image-amd64',
      cmdline: 'console=ttyS0 quiet',
      initramfsModules: ['virtio_blk', 'squashfs', 'overlay'],
      modules: ['virtio_blk', 'squashfs', 'overlay', 'br_netfilter', 'xt_MASQUERADE', '9pnet_fd'],
    },
    packages: {
      base: ['busybox-static', 'kmod'],
      engine: ['docker.io', 'containerd', 'runc', 'iptables'],
      agent: ['nodejs=18.20.4+dfsg-1~deb12u3'],
    },
    exclude: ['perl', 'perl-modules-5.36', 'libpam0g'],
    prune: ['usr/share/doc', 'lib/systemd'],
  };
}
