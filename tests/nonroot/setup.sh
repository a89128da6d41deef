#!/usr/bin/env bash
# Prepare a real non-root user for the tests that run pienv as one (the `nonroot` fixture):
# user pienvtest (uid 4321) in the docker group, the engine's socket group-docker 0660, and a
# venv made from Debian's /usr/bin/python3 (the default python3 may live under /root, which
# that user cannot read) holding pienv and its dependencies. Idempotent: the venv is rebuilt
# only when pyproject.toml's dependencies change. Needs root. Prints the venv path.
#
# The fixture runs the venv's `pienv` console script with PYTHONPATH=<checkout>/src, so the
# code under test is the checkout's; the venv's own copy of pienv only provides the script.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
NAME=${PIENV_NONROOT_USER:-pienvtest}
ID=${PIENV_NONROOT_UID:-4321}
VENV=${PIENV_NONROOT_VENV:-/opt/pienv-nonroot-venv}
PY=/usr/bin/python3

die() { echo "nonroot setup: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (creates user $NAME and $VENV)"
[ -x "$PY" ] || die "$PY is missing (apt-get install python3 python3-venv)"

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

getent group docker >/dev/null || groupadd --system docker
if ! getent passwd "$NAME" >/dev/null; then
  useradd --uid "$ID" --user-group --create-home --shell /bin/sh --groups docker "$NAME"
fi
[ "$(id -u "$NAME")" = "$ID" ] || die "user $NAME exists with uid $(id -u "$NAME"), not $ID"
id -nG "$NAME" | tr ' ' '\n' | grep -qx docker || usermod -aG docker "$NAME"
# Subordinate ids for rootless Podman (tests/test_rootless.py); Debian's useradd usually
# allocates them already.
for f in /etc/subuid /etc/subgid; do
  grep -q "^$NAME:" "$f" 2>/dev/null || echo "$NAME:100000:65536" >>"$f"
done

# The engine's socket, as Debian's docker.io sets it up: reachable by the docker group only.
sock=/var/run/docker.sock
case "${DOCKER_HOST:-}" in unix://*) sock=${DOCKER_HOST#unix://} ;; esac
if [ -S "$sock" ]; then
  [ "$(stat -c %G "$sock")" = docker ] || chgrp docker "$sock"
  [ "$(stat -c %a "$sock")" = 660 ] || chmod 0660 "$sock"
fi

# The checkout must be readable by that user (the fixture runs its src/ as that user).
probe=$root/src/pienv/__init__.py
runuser -u "$NAME" -- test -r "$probe" || die "$NAME cannot read $probe (check the modes of its parent directories)"

stamp=$("$PY" - "$root/pyproject.toml" <<'PYEOF'
import hashlib, sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print(hashlib.sha256("\n".join([sys.version, *deps]).encode()).hexdigest()[:16])
PYEOF
)
if [ "$(cat "$VENV/.pienv-stamp" 2>/dev/null)" != "$stamp" ]; then
  "$PY" -m venv --help >/dev/null 2>&1 && "$PY" -c 'import ensurepip' 2>/dev/null ||
    die "$PY cannot make a venv (apt-get install python3-venv)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$root" >&2
  echo "$stamp" >"$VENV/.pienv-stamp"
fi
chmod -R a+rX "$VENV"
echo "$VENV"
