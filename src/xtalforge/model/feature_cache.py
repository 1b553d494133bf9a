"""An on-disk cache of per-structure feature rows, keyed by the structure itself.

CHGNet embeddings of a few thousand structures take minutes on two cores; a backtest repeats
them for every seed, split and subsample unless they are kept. Rows are keyed by a fingerprint
of the cell (lattice, species, fractional coordinates rounded to 1e-5), so any subset or
reordering of a data set reuses what was computed for the whole, and a changed structure is
never served a stale row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure


def default_cache_root() -> Path:
    """`paths.cache_root()`: ~/.cache/xtalforge, or $XTALFORGE_CACHE_DIR."""
    from xtalforge.paths import cache_root

    return cache_root()


def fingerprint(s: Structure) -> str:
    """A hex key that changes whenever the cell, the species or a position changes (1e-5)."""
    h = hashlib.sha1()
    h.update(np.round(s.lattice.matrix, 5).tobytes())
    h.update(",".join(sp.symbol if hasattr(sp, "symbol") else str(sp) for sp in s.species).encode())
    h.update(np.round(np.mod(s.frac_coords, 1.0), 5).tobytes())
    return h.hexdigest()[:24]


def cached_rows(structures: Sequence[Structure], name: str, compute: Callable[[list[Structure]], np.ndarray],
                root: str | Path | None = None, chunk: int = 256,
                progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Rows of `compute(structures)`, each computed once per fingerprint and kept in
    <root>/<name>.npz. Missing rows are computed in chunks of `chunk` and saved after each
    chunk, so an interrupted run keeps what it finished."""
    path = Path(root or default_cache_root()) / f"{name.replace('+', '_')}.npz"
    keys = [fingerprint(s) for s in structures]
    table: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            table = dict(zip(z["keys"].tolist(), z["features"]))
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    todo_idx = [first[k] for k in dict.fromkeys(keys) if k not in table]
    for start in range(0, len(todo_idx), chunk):
        idx = todo_idx[start : start + chunk]
        rows = np.asarray(compute([structures[i] for i in idx]), dtype=np.float64)
        for i, row in zip(idx, rows):
            table[keys[i]] = row
        _save(path, table)
        if progress:
            progress(f"{name}: {min(start + chunk, len(todo_idx))}/{len(todo_idx)} new rows")
    if not keys:
        return np.zeros((0, 0))
    return np.stack([table[k] for k in keys])


def _save(path: Path, table: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, keys=np.array(list(table)), features=np.stack(list(table.values())))
    tmp.replace(path)  # a reader never sees a half-written file
