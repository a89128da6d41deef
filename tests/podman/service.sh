#!/usr/bin/env bash
# Podman's Docker-compatible API on a private socket and a private storage root, so it never
# touches the Docker engine (or a Podman) others use on this machine.
#
#   tests/podman/service.sh start DIR   -> prints unix://DIR/podman.sock once it answers
#   tests/podman/service.sh stop DIR    -> stops that service (its containers and storage
#                                          stay in DIR; rm -rf DIR after stop removes them)
#
# Rootful when run by root (CI runs as root), rootless when run by another user. The sandbox lacks CAP_SYS_RESOURCE, so the containers.conf
# written below also empties default_ulimits (that part is this machine's, not pienv's).
# `init: true` needs catatonit (Debian: apt-get install podman catatonit).
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock="$dir/podman.sock"
export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
# Registries on 127.0.0.1 (any port: the location is a prefix) over plain HTTP, as Docker
# allows them without configuration (tests/test_sharing.py's registry).
export CONTAINERS_REGISTRIES_CONF="$dir/registries.conf"
# Run as a non-root user, the service is rootless Podman: it keeps its runtime state under
# XDG_RUNTIME_DIR, which only a login session provides (tests/test_rootless.py).
if [ "$(id -u)" != 0 ] && [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$dir/xdg"
  mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
fi

case "$cmd" in
start)
  command -v podman >/dev/null || { echo "podman is not installed (apt-get install podman catatonit)" >&2; exit 1; }
  cat >"$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "$dir/tmp"
CONF
  cat >"$CONTAINERS_REGISTRIES_CONF" <<CONF
[[registry]]
location = "127.0.0.1"
insecure = true
CONF
  cat >"$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
  if [ -S "$sock" ] && curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
    echo "unix://$sock"
    exit 0
  fi
  rm -f "$sock"
  # From DIR: conmon writes an empty `oom` file into its working directory when it sees an
  # OOM kill (not where Podman looks for it), which left one in the repository (9474d4a).
  # exec: the pid file names podman itself, and no shell is left holding the caller's stdout
  # (a $(...) or a captured subprocess would wait on it for ever).
  # Its compatible API's image load keeps a copy of each upload in TMPDIR (/var/tmp by
  # default) and never removes it: keep them in DIR.
  mkdir -p "$dir/tmp"
  (cd "$dir" && TMPDIR="$dir/tmp" exec setsid podman system service --time=0 "unix://$sock" \
    >"$dir/service.log" 2>&1 </dev/null) &
  echo $! >"$dir/service.pid"
  for _ in $(seq 1 100); do
    curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && { echo "unix://$sock"; exit 0; }
    sleep 0.2
  done
  echo "podman service did not answer on $sock; its log:" >&2
  tail -20 "$dir/service.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/service.pid" ]; then
    pid=$(cat "$dir/service.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/service.pid" "$sock"
  fi
  # Rootless with the private runtime dir made above: the pause process that holds the user
  # namespace outlives the service (a login session's own one is never touched).
  pause="$dir/xdg/libpod/tmp/pause.pid"
  if [ "$(id -u)" != 0 ] && [ "${XDG_RUNTIME_DIR:-}" = "$dir/xdg" ] && [ -f "$pause" ]; then
    kill "$(cat "$pause")" 2>/dev/null || true
    rm -f "$pause"
  fi
  # Rootful Podman mounts its overlay store on itself (and a container's layers under it) and
  # leaves them when the service stops: unmount what lies under DIR, so rm -rf DIR works.
  if [ "$(id -u)" = 0 ]; then
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
