"""Where xtalforge keeps what it computed once and reuses: one cache root for every cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XTALFORGE_CACHE_DIR, else $XDG_CACHE_HOME/xtalforge, else ~/.cache/xtalforge. Holds the
    known phases relaxed by an MLIP (`known_relaxed/`), CHGNet features of data sets and
    structures, and encoded training sets (`wyckoff/`); deleting it only costs recomputation."""
    env = os.environ.get("XTALFORGE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xtalforge"
