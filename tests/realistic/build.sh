#!/usr/bin/env bash
# Build (or reuse) the realistic test base described by recipe.sh (Debian bookworm minbase +
# Node 22 + npm 10, no `agent` user), without an image registry.
#
#   tests/realistic/build.sh          build or reuse; prints the image tag as the last stdout line
#   tests/realistic/build.sh --tag    only print the tag
#
# The tag is pienv-test/realistic:<hash of recipe.sh and the CA bundle it copies in>. The
# imported rootfs is kept as $PIENV_TEST_CACHE/realistic-<hash>.tar (default
# /var/cache/pienv-test): an engine that lost its images re-imports it in seconds instead of
# running debootstrap again. Building needs root; importing a cached rootfs does not.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
say() { echo "realistic: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=recipe.sh
. "$here/recipe.sh"

[ -r "$CA" ] || die "no CA bundle at $CA (apt-get install ca-certificates)"
hash=$(cat "$here/recipe.sh" "$CA" | sha256sum | cut -c1-12)
tag=pienv-test/realistic:$hash
if [ "${1:-}" = "--tag" ]; then
  echo "$tag"
  exit 0
fi

command -v docker >/dev/null || die "the docker CLI is needed"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

import() {
  say "importing $1 as $tag"
  docker import "${IMPORT_CHANGES[@]}" --change "LABEL pienv-test.recipe=$hash" - "$tag" <"$1" >/dev/null
  echo "$tag"
}

cache=${PIENV_TEST_CACHE:-/var/cache/pienv-test}
tarball=$cache/realistic-$hash.tar
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  # Not ours to write (a user other than the one who built it): use its rootfs if it has one.
  if [ -s "$tarball" ] && [ -r "$tarball" ]; then
    import "$tarball"
    exit 0
  fi
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/pienv-test
  tarball=$cache/realistic-$hash.tar
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
if [ -s "$tarball" ]; then
  import "$tarball"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "building needs root (debootstrap); run it once as root: $0"
for tool in debootstrap npm tar flock; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install debootstrap npm)"
done

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
build_rootfs "$work/rootfs" "$work"
say "packing the rootfs"
tar --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
# Older recipes' tarballs are of no more use.
find "$cache" -maxdepth 1 -name 'realistic-*.tar' ! -name "realistic-$hash.tar" -delete
import "$tarball"
