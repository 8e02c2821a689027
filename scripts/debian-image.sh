#!/usr/bin/env bash
# Build, once, a minimal bootable Debian tree (systemd, openssh-server, a
# kernel) for the boot test, and print its path. The tree is a template as
# an image builder would leave it: no SSH host keys, an empty machine-id, a
# generic hostname, DHCP on the first NIC. imds-init is NOT in it: the test
# installs it into a copy with scripts/install.sh.
#
# Cached under $IMDS_INIT_BOOT_CACHE (default ~/.cache/imds-init-boot), keyed
# by a hash of this script, so it survives fresh clones on one machine and is
# rebuilt when the recipe changes. Packages come only from the Debian mirror
# configured for apt on this machine (or $IMDS_INIT_DEBIAN_MIRROR).
#
# With --arm64-libs it makes instead an arm64 tree holding only the C and
# C++ runtime libraries (debootstrap's first stage: unpacked, never run), so
# qemu-aarch64-static -L TREE can run the arm64 binary on this machine.
#
# usage: scripts/debian-image.sh [--arm64-libs]   prints the tree's path
set -euo pipefail

suite=bookworm
# libatomic1: the official Node.js binary, and so imds-init, needs
# libatomic.so.1, which a minimal Debian does not have.
packages=systemd,systemd-sysv,udev,kmod,e2fsprogs,openssh-server,linux-image-amd64,initramfs-tools,libatomic1
arm64=false
case ${1:-} in
--arm64-libs) arm64=true ;;
"") ;;
*) echo "usage: $0 [--arm64-libs]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "debian-image: must run as root (debootstrap, chroot)" >&2; exit 1; }

# The first Debian archive apt uses here, from deb822 or one-line sources.
mirror() {
  if [ -n "${IMDS_INIT_DEBIAN_MIRROR:-}" ]; then echo "$IMDS_INIT_DEBIAN_MIRROR"; return; fi
  local f url
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    url=$(awk '
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }
      /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }
    ' "$f")
    if [ -n "$url" ]; then echo "${url%/}"; return; fi
  done
  echo "debian-image: no Debian mirror found in /etc/apt/sources.list*; set IMDS_INIT_DEBIAN_MIRROR" >&2
  exit 1
}

cache=${IMDS_INIT_BOOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-init-boot}
key=$(sha256sum "$0" | cut -c1-16)
tree=$cache/debian-$suite-$key
$arm64 && tree=$cache/arm64-libs-$suite-$key
mkdir -p "$cache"

# One builder at a time; a second caller waits and then uses the result.
exec 9>"$cache/lock"
flock 9
if [ -f "$tree.complete" ]; then
  echo "$tree"
  exit 0
fi

url=$(mirror)
work=$tree.building
rm -rf "$work" "$work.dl" "$tree"
mkdir -p "$work" "$cache/debs"
if $arm64; then
  echo "debian-image: arm64 runtime libraries from $url (once)" >&2
  # debootstrap resolves and fetches the packages (checked against the
  # archive's signed Release); only the libraries are unpacked.
  if ! debootstrap --download-only --arch=arm64 --variant=minbase --include=libatomic1,libstdc++6 \
    "$suite" "$work.dl" "$url" >"$cache/debootstrap-arm64.log" 2>&1; then
    tail -n 30 "$cache/debootstrap-arm64.log" >&2
    echo "debian-image: debootstrap failed; full log: $cache/debootstrap-arm64.log" >&2
    exit 1
  fi
  for p in libc6 libgcc-s1 libstdc++6 libatomic1; do
    for deb in "$work.dl/var/cache/apt/archives/${p}"_*_arm64.deb; do
      dpkg-deb -x "$deb" "$work"
    done
  done
  rm -rf "$work.dl"
  ls "$work"/usr/lib/aarch64-linux-gnu/libatomic.so.1 "$work"/lib/ld-linux-aarch64.so.1 >/dev/null
  mv "$work" "$tree"
  touch "$tree.complete"
  echo "$tree"
  exit 0
fi
echo "debian-image: debootstrap $suite from $url (a few minutes, once)" >&2
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
  "$suite" "$work" "$url" >"$cache/debootstrap.log" 2>&1; then
  tail -n 30 "$cache/debootstrap.log" >&2
  echo "debian-image: debootstrap failed; full log: $cache/debootstrap.log" >&2
  exit 1
fi

# Root on the first virtio disk; console on the first serial port (the
# kernel command line says so; the getty generator starts serial-getty).
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$work/etc/fstab"
echo debian-template >"$work/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$work/etc/hosts"

# DHCP from QEMU's user network on whatever the NIC is called.
mkdir -p "$work/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
  >"$work/etc/systemd/network/80-dhcp.network"
chroot "$work" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service >&2
# Nothing in the guest may try to reach the outside (QEMU runs it with
# restrict=on anyway); these timers would only slow the boot down.
chroot "$work" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >&2 2>/dev/null || true

# A template as an image builder leaves it: every instance makes its own.
rm -f "$work"/etc/ssh/ssh_host_*
: >"$work/etc/machine-id"
rm -f "$work/var/lib/dbus/machine-id"

# Smaller tree, faster copies: nothing here is needed to boot.
chroot "$work" apt-get clean >&2
rm -rf "$work"/var/lib/apt/lists/* "$work"/usr/share/doc/* "$work"/usr/share/locale/* "$work"/usr/share/man/*
rm -rf "$work"/var/log/*.log "$work/var/cache/debconf"/*-old

# A small initramfs: QEMU's virtio disk and ext4 are all it must find.
printf 'virtio_pci\nvirtio_blk\next4\n' >>"$work/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$work/etc/initramfs-tools/initramfs.conf"
chroot "$work" update-initramfs -u -k all >&2

ls "$work"/boot/vmlinuz-* "$work"/boot/initrd.img-* >/dev/null
rm -rf "$tree"
mv "$work" "$tree"
touch "$tree.complete"
echo "debian-image: built $tree in $(($(date +%s) - start)) s" >&2
echo "$tree"
