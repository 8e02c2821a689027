#!/bin/sh
# Install the Debian packages the tests need (run as root): ssh-keygen is the
# fingerprint oracle, rpm/rpmbuild give a real rpm database, shellcheck and
# systemd-analyze lint the rc script and units, mandoc and man lint the man page,
# qemu and debootstrap boot a real Debian guest, unshare/ip give the
# sandbox where the binary sets a live hostname; GNU time gives scripts/bench
# the peak RSS of each run.
set -eu
pkgs="openssh-client rpm shellcheck systemd mandoc util-linux iproute2 e2fsprogs
      debootstrap qemu-system-x86 qemu-user-static qemu-utils netcat-openbsd
      man-db time"
missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "test-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
