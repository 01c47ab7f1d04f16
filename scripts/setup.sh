#!/usr/bin/env bash
# Sets up berth on a fresh Debian/Ubuntu machine: the host packages it needs, the npm
# dependencies, and the build. Safe to run again. Needs root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86 + qemu-utils: the VM; squashfs-tools, kmod, xz-utils, cpio: the image builder;
# apt/dpkg are already there on Debian/Ubuntu. passt: only the anchor of `npm run bench` (small).
# e2fsprogs, util-linux: the namespace backend's data store and launcher (mkfs.ext4, unshare, nsenter).
PKGS=(qemu-system-x86 qemu-utils squashfs-tools kmod xz-utils zstd cpio ca-certificates passt e2fsprogs util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The image builder resolves guest packages from apt's indices: make sure they exist.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
fi

# yargs 18 (the CLI's parser) needs Node.js 20.19 or newer.
node -e 'const [M, m] = process.versions.node.split(".").map(Number); if (M < 20 || (M === 20 && m < 19)) { console.error("setup: berth needs Node.js 20.19 or newer, found " + process.version); process.exit(1); }'
npm ci --no-audit --no-fund
npm run build
echo "setup: done. Run bin/berth start"
