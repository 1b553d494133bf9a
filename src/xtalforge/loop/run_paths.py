"""Paths in a run folder's config.yaml that keep working when the folder is moved or copied.

A file a campaign names (hull references, reference structures, the synthesis model and
precursors, a SQLite tracking store) is written into config.yaml relative to the run folder
when it lies in the folder that holds the run folder (the output_dir: `runs/mlflow.db` becomes
`../mlflow.db`), and absolute otherwise (a data set elsewhere on the machine stays where it
is). Reading resolves relative paths against the run folder, so a copied `runs/` tree opens its
own tracking store, never the original's, and a run folder copied alone finds none instead
of a stranger's.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SQLITE = "sqlite:///"

# dotted paths of the config settings that name files; `[]` marks a list of them
PATH_FIELDS: tuple[str, ...] = ("hull.references[]", "reference_structures[]", "synthesis.model",
                                "synthesis.precursors")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def portable_path(path: str, run_dir: Path, base: Path | None = None) -> str:
    """`path` (relative to `base`, default the working folder) as config.yaml should hold it:
    relative to `run_dir` when it lies in the folder holding `run_dir`, else absolute."""
    base = Path.cwd() if base is None else base
    run_dir = Path(run_dir).resolve()
    p = Path(os.path.expanduser(path))
    p = (p if p.is_absolute() else base / p).resolve()
    if _inside(p, run_dir.parent):
        return os.path.relpath(p, run_dir)
    return str(p)


def resolved_path(path: str, run_dir: Path) -> str:
    """A path from config.yaml as an absolute path: relative ones are relative to `run_dir`."""
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (Path(run_dir) / p).resolve())


def portable_uri(uri: str, run_dir: Path, base: Path | None = None) -> str:
    """A tracking URI as config.yaml should hold it: a SQLite file by `portable_path`, any
    other URI (a server) as it is."""
    if uri.startswith(SQLITE):
        return SQLITE + portable_path(uri[len(SQLITE):], run_dir, base)
    return uri


def resolved_uri(uri: str, run_dir: Path) -> str:
    """A tracking URI from config.yaml with a relative SQLite path made absolute."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + resolved_path(uri[len(SQLITE):], run_dir)
    return uri


def _map_paths(cfg: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for field in PATH_FIELDS:
        *parents, leaf = field.removesuffix("[]").split(".")
        d = out
        for k in parents:
            d = d.get(k) if isinstance(d, dict) else None
        if not isinstance(d, dict) or d.get(leaf) in (None, ""):
            continue
        d[leaf] = [fn(str(v)) for v in d[leaf]] if field.endswith("[]") else fn(str(d[leaf]))
    return out


def portable_config(cfg: dict[str, Any], run_dir: Path, base: Path | None = None) -> dict[str, Any]:
    """A copy of a config dict (`model_dump()`) with every file it names written by
    `portable_path` and its tracking URI by `portable_uri`: what config.yaml should hold."""
    out = _map_paths(cfg, lambda p: portable_path(p, run_dir, base))
    if isinstance(out.get("tracking"), dict) and out["tracking"].get("uri"):
        out["tracking"]["uri"] = portable_uri(out["tracking"]["uri"], run_dir, base)
    return out


def resolved_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A copy of a config dict read from `run_dir`/config.yaml with its relative paths and
    SQLite tracking URI made absolute against `run_dir`: what the campaign runs with."""
    out = _map_paths(cfg, lambda p: resolved_path(p, run_dir))
    if isinstance(out.get("tracking"), dict) and out["tracking"].get("uri"):
        out["tracking"]["uri"] = resolved_uri(out["tracking"]["uri"], run_dir)
    return out
