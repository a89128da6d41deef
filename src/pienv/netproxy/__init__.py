"""pienv's egress proxy: the program (proxy.py, run inside its container) and its image
(image.py, assembled from this machine's Python). What the run path needs of it is here, with
no heavy imports: the image's tag."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PROXY_SOURCE = Path(__file__).with_name("proxy.py")
REPOSITORY = "pienv-egress-proxy"


def quick_tag() -> str:
    """The image's tag without assembling it (asked on every run with a policy, so no child
    interpreter and no ldd): the proxy's source, the interpreter's path, size, mtime and
    version. A new Python (or a pienv with another proxy) gets a new image; the files an
    image was made of are in its recipe (ProxyImage.key, a label)."""
    python = interpreter()
    st = os.stat(python)
    h = hashlib.sha256(PROXY_SOURCE.read_bytes())
    h.update(f"{python}\0{st.st_size}\0{st.st_mtime_ns}\0{sys.version}".encode())
    return f"{REPOSITORY}:{h.hexdigest()[:16]}"


def interpreter() -> str:
    """The base interpreter's binary: a venv's python is a link to (or copy of) it, and only
    the base installation has the stdlib beside it."""
    v = sys.version_info
    candidate = Path(sys.base_prefix) / "bin" / f"python{v.major}.{v.minor}"
    if candidate.is_file():
        return str(candidate.resolve())
    return os.path.realpath(sys.executable)
