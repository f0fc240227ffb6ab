"""Where edgeseg keeps generated data and scan results between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: ``$EDGESEG_CACHE``, else ``$XDG_CACHE_HOME/edgeseg``, else
    ``~/.cache/edgeseg``. It is not created here."""
    if os.environ.get("EDGESEG_CACHE"):
        return Path(os.environ["EDGESEG_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgeseg"
    return Path.home() / ".cache" / "edgeseg"
