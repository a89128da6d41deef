"""Where the store lives: ``$PIENV_HOME``, else the user data directory."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    env = os.environ.get("PIENV_HOME")
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pienv"))
