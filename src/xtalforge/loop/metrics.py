"""Campaign-level numbers behind the dashboard: hits, Pareto fronts, hypervolume.

Pure functions over plain data, so each is tested on its own; the campaign feeds them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Hypervolume reference point: e_above_hull above 0.5 eV/atom counts for nothing (such a phase
# is far from synthesizable), and p_synth is measured from 0.
HV_REF_E_HULL = 0.5
HV_REF_P_SYNTH = 0.0


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


