"""Composition features for the surrogate (the structure part comes from the MLIP embedding)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition, Element

_PROPS = ("X", "atomic_radius", "atomic_mass", "row", "group")


def _prop(el: Element, name: str) -> float:
    v = getattr(el, name, None)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return 0.0
    return v if np.isfinite(v) else 0.0


def composition_features(comp: Composition, elements: Sequence[str]) -> np.ndarray:
    """Atomic fractions over the campaign's elements, then fraction-weighted mean and spread of
    electronegativity, radius (Å), mass (amu), period and group."""
    frac = comp.fractional_composition
    x = [frac[e] for e in elements]
    w = np.array([frac[e] for e in comp.elements])
    for name in _PROPS:
        v = np.array([_prop(e, name) for e in comp.elements])
        mean = float((w * v).sum())
        x += [mean, float(np.sqrt((w * (v - mean) ** 2).sum()))]
    return np.asarray(x, dtype=np.float64)
