"""Campaign-level numbers behind the dashboard: novelty, hits, Pareto fronts, hypervolume.

Pure functions over plain data, so each is tested on its own; the campaign feeds them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from xtalforge.loop.dedup import is_novel
from xtalforge.types import Candidate

log = logging.getLogger(__name__)

# Hypervolume reference point: e_above_hull above 0.5 eV/atom counts for nothing (such a phase
# is far from synthesizable), and p_synth is measured from 0.
HV_REF_E_HULL = 0.5
HV_REF_P_SYNTH = 0.0


def load_reference_structures(paths: Iterable[str | Path]) -> list[Structure]:
    """Structures from CIF files, or from every *.cif in a folder, for the novelty check.

    A file that does not parse is skipped with a warning: one bad reference must not stop a
    campaign, and it only makes the novelty check more generous.
    """
    out: list[Structure] = []
    for p in map(Path, paths):
        files = sorted(p.glob("**/*.cif")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"reference structures: {p} has no CIF files")
        for f in files:
            try:
                out.append(Structure.from_file(f))
            except Exception as err:
                log.warning("reference structure %s skipped: %s", f, err)
    return out


def novel_ids(cands: Sequence[Candidate], references: Sequence[Structure]) -> set[str]:
    """Ids of candidates that match no reference structure; with no references, all of them."""
    if not references:
        return {c.id for c in cands}
    by_formula: dict[str, list[Structure]] = {}
    for s in references:
        by_formula.setdefault(s.composition.reduced_formula, []).append(s)
    return {c.id for c in cands if is_novel(c.structure, by_formula.get(c.formula, []))}


def hit_ids(e_above_hull: dict[str, float], novel: set[str], threshold: float) -> list[str]:
    """Hits: stable within `threshold` (eV/atom) and novel. Ids are unique by construction."""
    return [k for k, v in e_above_hull.items() if v <= threshold + 1e-9 and k in novel]


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for the rows no other row dominates (every column minimized)."""
    pts = np.asarray(points, dtype=float)
    keep = np.ones(len(pts), dtype=bool)
    for i, p in enumerate(pts):
        others = np.delete(pts, i, axis=0)
        if len(others) and np.any(np.all(others <= p, axis=1) & np.any(others < p, axis=1)):
            keep[i] = False
    return keep


def hypervolume_2d(points: np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by `points` (both columns minimized) and bounded by `ref`.

    Points not better than `ref` in both columns contribute nothing.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    r = np.asarray(ref, dtype=float)
    pts = pts[np.all(pts < r, axis=1)]
    if not len(pts):
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, y_prev = 0.0, r[1]
    for x, y in pts:  # sweep in x; on a front sorted by x, y falls
        area += (r[0] - x) * (y_prev - y)
        y_prev = y
    return float(area)


def hypervolume(points: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume dominated by `points` (every column minimized) up to `ref`, any dimension:
    the exact 2-D sweep, BoTorch's exact algorithm beyond."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError("hypervolume needs points with two or more objectives")
    if pts.shape[1] == 2:
        return hypervolume_2d(pts, ref)
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    r = np.asarray(ref, dtype=float)
    pts = pts[np.all(pts < r, axis=1)]
    if not len(pts):
        return 0.0
    pts = pts[pareto_mask(pts)]
    # BoTorch maximizes: negate both the points and the reference
    return float(Hypervolume(torch.tensor(-r)).compute(torch.tensor(-pts)))


def reference_point(names: Sequence[str], minimize: Sequence[bool], values: np.ndarray) -> np.ndarray:
    """A hypervolume reference in the minimized frame: fixed for the quantities the project
    knows (e_above_hull 0.5 eV/atom, p_synth 0), else the worst value seen so far."""
    fixed = {"e_above_hull": HV_REF_E_HULL, "p_synth": HV_REF_P_SYNTH}
    ref = []
    for j, (name, mini) in enumerate(zip(names, minimize)):
        v = fixed.get(name)
        if v is None:
            col = values[:, j]
            v = float(np.nanmax(col) if mini else np.nanmin(col)) if len(col) else 0.0
        ref.append(v if mini else -v)
    return np.asarray(ref)


def e_hull_p_synth_hypervolume(e_hull: Sequence[float], p_synth: Sequence[float]) -> float:
    """Hypervolume of (e_above_hull minimized, p_synth maximized), in eV/atom x probability."""
    pts = np.column_stack([np.asarray(e_hull, float), -np.asarray(p_synth, float)])
    return hypervolume_2d(pts, (HV_REF_E_HULL, -HV_REF_P_SYNTH))


def discovery_series(order: Sequence[str], hits: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(oracle calls, hits found) after each call, for evaluations in the order they landed."""
    calls = np.arange(1, len(order) + 1)
    found = np.cumsum([cid in hits for cid in order]) if len(order) else np.zeros(0, int)
    return calls, found
