"""The few types that cross package boundaries: Candidate, Measurement, Objective, RoundContext."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pymatgen.core import Structure


class Status(str, Enum):
    ok = "ok"
    failed = "failed"
    pending = "pending"


class Fidelity(int, Enum):
    single_point = 0  # the MLIP's energy of an unrelaxed proposal (loop.single_point)
    mlip = 1
    lab = 2


def structure_fingerprint(structure: Structure) -> str:
    """Cheap bucket key: reduced formula plus atoms per formula unit of the primitive cell.

    Two structures that StructureMatcher can match always share this key, so matching only
    needs to run inside one bucket.
    """
    comp = structure.composition
    return f"{comp.reduced_formula}"


def canonical_id(structure: Structure) -> str:
    """A deterministic id from the structure's canonical (symmetrized, primitive) form.

    Symmetry-equivalent copies (rotated, translated, supercell, permuted sites) give the same
    id in the common case; numerical edge cases are caught by the deduplicator, which maps a
    StructureMatcher duplicate to the id already seen.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        prim = sga.get_primitive_standard_structure()
        sg = sga.get_space_group_number()
    except Exception:  # spglib can fail on degenerate cells; fall back to the raw cell
        prim, sg = structure.get_primitive_structure(), 1
    lat = np.round(np.array(prim.lattice.abc + prim.lattice.angles), 1)
    species = sorted(str(s.specie) for s in prim)
    vol = round(prim.volume / len(prim), 0)
    key = f"{prim.composition.reduced_formula}|{sg}|{len(prim)}|{vol}|{species}|{lat.tolist()}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


@dataclass
class Candidate:
    """A proposed crystal. `id` is shared by every symmetry-equivalent copy."""

    structure: Structure
    source: str
    round: int
    parents: list[str] = field(default_factory=list)
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = canonical_id(self.structure)

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula


@dataclass
class Measurement:
    """What one oracle said about one candidate.

    `values` holds named floats in the field's units: energies in eV/atom, band gaps in eV,
    moduli in GPa, densities in g/cm^3.
    """

    candidate_id: str
    oracle: str
    fidelity: int
    values: dict[str, float] = field(default_factory=dict)
    stdev: dict[str, float] = field(default_factory=dict)
    status: Status = Status.ok
    error: str = ""
    relaxed: Structure | None = None
    cost_s: float = 0.0
    at: float = field(default_factory=time.time)
    round: int = -1


@dataclass(frozen=True)
class Objective:
    """A named value to optimize; with `threshold` it is a constraint (value <= or >= threshold)."""

    name: str
    minimize: bool = True
    threshold: float | None = None
    fidelity: int = Fidelity.mlip


@dataclass
class RoundContext:
    """What a generator may read when proposing: the system, limits and the results so far."""

    round: int
    elements: tuple[str, ...]
    max_atoms: int
    rng: np.random.Generator
    # (candidate, measurement) pairs with status ok, best first by e_above_hull
    history: list[tuple[Candidate, Measurement]] = field(default_factory=list)
