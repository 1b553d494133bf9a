"""Structural sanity: the cheap hard filter every proposal passes before anything costs time.

The ground floor: generators, oracles and the loop all use these limits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from xtalforge.types import Candidate


@dataclass(frozen=True)
class ValidityLimits:
    min_distance: float = 0.5  # Å; closer than this is two atoms fused
    min_volume_per_atom: float = 5.0  # Å^3/atom; below is denser than any known solid
    max_volume_per_atom: float = 100.0  # Å^3/atom; above is a gas, not a crystal
    max_atoms: int = 200


def structure_problem(structure: Structure, limits: ValidityLimits, elements: tuple[str, ...] | None = None) -> str:
    """Why `structure` is not a valid proposal, or '' when it is."""
    if not structure.is_ordered:
        return "disordered (partial occupancies); order it first"
    n = len(structure)
    if n == 0:
        return "no atoms"
    if n > limits.max_atoms:
        return f"{n} atoms > max_atoms {limits.max_atoms}"
    if elements is not None:
        outside = sorted({e.symbol for e in structure.composition.elements} - set(elements))
        if outside:
            return f"element(s) {', '.join(outside)} outside the chemical system {'-'.join(elements)}"
    vpa = structure.volume / n
    if not np.isfinite(vpa) or vpa < limits.min_volume_per_atom or vpa > limits.max_volume_per_atom:
        return f"volume {vpa:.1f} Å^3/atom outside [{limits.min_volume_per_atom}, {limits.max_volume_per_atom}]"
    if n > 1 or min(structure.lattice.abc) < limits.min_distance:
        dmin = min_distance(structure)
        if dmin < limits.min_distance:
            return f"atoms {dmin:.2f} Å apart (< {limits.min_distance} Å)"
    return ""


def min_distance(structure: Structure) -> float:
    """Shortest interatomic distance in Å, periodic images included."""
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    dm = structure.distance_matrix
    np.fill_diagonal(dm, np.inf)
    d = float(dm.min())
    # a site's own periodic image can be closer than any other atom in a tiny cell
    return min(d, float(min(structure.lattice.abc)))


def filter_valid(
    cands: list[Candidate], limits: ValidityLimits, elements: tuple[str, ...] | None = None
) -> tuple[list[Candidate], dict[str, int]]:
    """Keep the valid candidates; count the rejections by reason (first word of the reason)."""
    keep, why = [], {}
    for c in cands:
        p = structure_problem(c.structure, limits, elements)
        if p:
            key = p.split(" ")[0] if not p.startswith("atoms") else "too_close"
            why[key] = why.get(key, 0) + 1
        else:
            keep.append(c)
    return keep, why
