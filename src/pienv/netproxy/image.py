"""The egress proxy's image, made without any image registry.

No registry is reachable on the machines pienv is tested on (and a user's may be offline), so
pienv assembles the image itself, FROM scratch, out of what this machine already has: the
Python interpreter pienv runs on (its base installation, not a venv), the shared libraries
`ldd` says it and the extension modules the proxy imports need, those stdlib modules only
(found by importing proxy.py in a child interpreter and listing sys.modules), and this
machine's CA bundle (the proxy checks the providers' certificates when it injects keys). Files
keep their absolute paths, so the interpreter finds its stdlib by its usual landmark. About
20 MB; built on first use and kept under a tag named by a hash of everything that went in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pienv.errors import PienvError
from pienv.netproxy import PROXY_SOURCE, REPOSITORY, interpreter

IN_IMAGE = "/pienv/proxy.py"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")
# What the interpreter is asked to print: every loaded module file, after importing proxy.py.
_LIST_MODULES = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("pienv_proxy", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
print(json.dumps(sorted(f for f in files if f)))
"""


@dataclass(frozen=True)
class ProxyImage:
    """What the image is made of: container path -> host file, and the interpreter's argv."""

    files: dict[str, str]
    command: list[str]

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}:{self.key[:16]}"

    @property
    def key(self) -> str:
        """Content hash of the recipe: the proxy's source, each file's path, size and mtime
        (hashing 20 MB of contents on every run would cost ~40 ms)."""
        h = hashlib.sha256(PROXY_SOURCE.read_bytes())
        for dest, src in sorted(self.files.items()):
            st = os.stat(src)
            h.update(f"{dest}\0{src}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(json.dumps(self.command).encode())
        return h.hexdigest()


def shared_libraries(paths: list[str]) -> set[str]:
    """Every library ``ldd`` lists for ``paths`` (the dynamic loader included), resolved."""
    try:
        out = subprocess.run(
            ["ldd", *paths], capture_output=True, text=True, check=False, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PienvError(f"cannot list the proxy's shared libraries (ldd): {exc}") from exc
    libs: set[str] = set()
    for line in out.splitlines():
        m = _LDD_LINE.search(line)
        if m:
            libs.add(m.group(1))
    return libs


def recipe() -> ProxyImage:
    """The files of the proxy image, found on this machine."""
    python = interpreter()
    try:
        listed = subprocess.run(
            [python, "-I", "-S", "-B", "-c", _LIST_MODULES, str(PROXY_SOURCE)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PienvError(f"cannot assemble the egress proxy from {python}: {exc}") from exc
    modules = [f for f in json.loads(listed) if f != str(PROXY_SOURCE)]
    binaries = [python] + [f for f in modules if f.endswith(".so")]
    files = {f: f for f in modules}
    for f in modules:
        # The stdlib's compiled files, where the installation has them: without them the
        # proxy would compile every module it imports at each start (about a second).
        cached = importlib.util.cache_from_source(f) if f.endswith(".py") else ""
        if cached and os.path.isfile(cached):
            files[cached] = cached
    for path in [python, *shared_libraries(binaries)]:
        files[path] = os.path.realpath(path)
    # The landmark the interpreter finds its prefix by (lib/pythonX.Y/os.py) is among the
    # modules already; lib-dynload must exist even when no extension module is loaded.
    ca = next((c for c in CA_BUNDLES if os.path.isfile(c)), None)
    if ca:
        files["/etc/ssl/certs/ca-certificates.crt"] = os.path.realpath(ca)
    files[IN_IMAGE] = str(PROXY_SOURCE)
    return ProxyImage(files, [python, "-I", "-S", "-B", IN_IMAGE])


def engine_arch_ok(engine_arch: str) -> bool:
    """Whether binaries of this machine run on an engine reporting ``engine_arch``."""
    here = platform.machine().lower()
    same = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}}
    return engine_arch.lower() in same.get(here, {here})


def build_context(image: ProxyImage, into: Path) -> None:
    """A build context in ``into``: the files under rootfs/ and a FROM scratch Dockerfile."""
    root = into / "rootfs"
    for dest, src in image.files.items():
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(target, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        os.chmod(target, os.stat(src).st_mode & 0o755)
    for d in ("run/pienv", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (into / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        f"LABEL dev.pienv.egress-proxy={image.key}\n"
        f"ENTRYPOINT {json.dumps(image.command)}\n"
    )


def temporary_context(image: ProxyImage) -> tempfile.TemporaryDirectory[str]:
    tmp = tempfile.TemporaryDirectory(prefix="pienv-proxy-")
    build_context(image, Path(tmp.name))
    return tmp
