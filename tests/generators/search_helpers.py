"""Helpers shared by the search-generator tests: contexts, synthetic oracle verdicts, checks."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalforge.generators.compositions import is_charge_balanced
from xtalforge.structure import ValidityLimits, structure_problem
from xtalforge.types import Candidate, Measurement, RoundContext

CATIO = ("Ca", "Ti", "O")


def ctx(elements=CATIO, max_atoms: int = 12, seed: int = 0, history=(), round: int = 0) -> RoundContext:
    return RoundContext(round=round, elements=tuple(elements), max_atoms=max_atoms,
                        rng=np.random.default_rng(seed), history=list(history))


def verdict(c: Candidate, e_above_hull: float, relaxed: Structure | None = None) -> Measurement:
    """A synthetic oracle result: what an MLIP relaxation would report, with a chosen e_above_hull."""
    return Measurement(candidate_id=c.id, oracle="synthetic", fidelity=1, values={"e_above_hull": e_above_hull},
                       relaxed=relaxed if relaxed is not None else c.structure)


def assert_in_bounds(cands: list[Candidate], elements, max_atoms: int, source: str,
                     commonality: str = "medium") -> None:
    """Every proposal: inside the system, within the size limit, structurally valid, charge
    balanced (SMACT, with the generator's `oxidation_commonality`)."""
    limits = ValidityLimits(max_atoms=max_atoms)
    for c in cands:
        s = c.structure
        assert c.source == source
        assert {e.symbol for e in s.composition.elements} <= set(elements), c.formula
        assert len(s) <= max_atoms, (c.formula, len(s))
        assert structure_problem(s, limits, tuple(elements)) == "", (c.formula, structure_problem(s, limits))
        assert is_charge_balanced(s.composition, commonality), c.formula
        assert all(getattr(sp, "oxi_state", None) is None for sp in s.species), "no oxidation states on output"


def perovskite(a: str = "Ca", b: str = "Ti", x: str = "O", lattice: float = 3.85) -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(lattice), [a, b, x],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def rocksalt(a: str = "Ca", x: str = "O", lattice: float = 4.8) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rutile(a: str = "Ti", x: str = "O") -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), [a, x],
                                     [[0, 0, 0], [0.305, 0.305, 0]])
