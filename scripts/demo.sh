#!/usr/bin/env bash
# The main job, end to end: build dist/imds-init, start the project's own
# metadata emulator on loopback, and run the real binary against it into a
# scratch root (build/demo/root), twice: a first boot, then a second boot
# with nothing left to do. Nothing outside build/demo is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
node=node_modules/.bin/node

scripts/build.sh

demo=$PWD/build/demo
root=$demo/root
rm -rf "$demo"
mkdir -p "$root/etc/ssh" "$root/root" "$root/var/log"
chmod 700 "$root/root"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
# user-data runs chrooted into the root, so give it a shell: this machine's
# /bin/sh and the libraries it links.
for f in /bin/sh $(ldd "$(readlink -f /bin/sh)" | grep -o '/[^ ]*'); do
	mkdir -p "$root$(dirname "$f")"
	cp -L "$f" "$root$f"
done
install -d -m 700 "$root/root/.ssh"
if command -v ssh-keygen >/dev/null; then
	ssh-keygen -q -A -f "$root" # host keys, as the image's sshd would make them
	# An admin's existing key, with options: imds-init must keep it as it is.
	ssh-keygen -q -t ed25519 -N '' -C admin@console -f "$demo/admin"
	printf 'no-pty %s\n' "$(cat "$demo/admin.pub")" >"$root/root/.ssh/authorized_keys"
	chmod 600 "$root/root/.ssh/authorized_keys"
else
	echo "demo: ssh-keygen not found; the fingerprint block will be empty" >&2
fi

"$node" scripts/imds-emulator.ts --data scripts/demo-instance.json --port 0 >"$demo/emulator.out" 2>"$demo/emulator.err" &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true' EXIT
url=
for _ in $(seq 100); do
	url=$(sed -n '1s/^listening on //p' "$demo/emulator.out")
	[ -n "$url" ] && break
	sleep 0.05
done
[ -n "$url" ] || { echo "demo: the emulator did not start" >&2; cat "$demo/emulator.err" >&2; exit 1; }

run() {
	echo
	echo "\$ imds-init $*"
	dist/imds-init "$@" || echo "(exit status $?)"
}

run run --root "$root" --metadata-url "$url"
run run --root "$root" --metadata-url "$url"
run status --root "$root"
echo
echo "--- $root/etc/hostname"
cat "$root/etc/hostname"
echo "--- $root/root/.ssh/authorized_keys"
cat "$root/root/.ssh/authorized_keys"
echo "--- $root/var/log/imds-init-user-data.log"
cat "$root/var/log/imds-init-user-data.log"
