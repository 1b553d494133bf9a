"""Novelty: is a structure one of the system's known phases?

StructureMatcher with pymatgen's default tolerances (ltol 0.2, stol 0.3, angle_tol 5 degrees,
primitive cells, volumes scaled), so an MLIP-relaxed candidate matches its DFT-relaxed known
phase despite the few-percent volume difference. Known structures are bucketed by reduced
formula: a candidate is only compared with the polymorphs of its own formula.

Every structure is reduced (primitive, Niggli) once, when it enters the index or is asked about,
and compared with `skip_structure_reduction`: StructureMatcher would otherwise reduce both sides
again for every pair, which was three quarters of a campaign's time spent matching.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalforge.references.known import KnownPhase


class KnownStructures:
    """The structures a candidate is checked against, by reduced formula."""

    def __init__(self, known: Iterable[KnownPhase | tuple[str, Structure]] = (),
                 matcher: StructureMatcher | None = None):
        self.matcher = matcher or StructureMatcher()
        self._by_formula: dict[str, list[tuple[str, Structure]]] = defaultdict(list)
        for k in known:
            if isinstance(k, KnownPhase):
                if k.structure is not None:
                    self.add(k.material_id, k.structure)
            else:
                self.add(*k)

    def reduced(self, structure: Structure) -> Structure:
        """`structure` as the index compares it (no oxidation states, primitive, Niggli-reduced):
        pass it to `match(..., reduced=True)` when asking about one structure many times."""
        s = structure.copy()
        s.remove_oxidation_states()
        return StructureMatcher._get_reduced_structure(s, self.matcher._primitive_cell, True)

    def add(self, material_id: str, structure: Structure) -> None:
        """Another reference structure (e.g. a known phase as the MLIP relaxed it, same id)."""
        s = self.reduced(structure)
        self._by_formula[s.composition.reduced_formula].append((material_id, s))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_formula.values())

    def count(self, formula: str) -> int:
        """Reference structures of reduced `formula` in the index."""
        return len(self._by_formula.get(formula, ()))

    def match(self, structure: Structure, start: int = 0, reduced: bool = False) -> str:
        """The material id of the first known structure that matches, or '' (novel); with
        `start`, only the references of its formula added after the first `start`."""
        refs = self._by_formula.get(structure.composition.element_composition.reduced_formula, [])[start:]
        if not refs:
            return ""
        s = structure if reduced else self.reduced(structure)
        for mid, ref in refs:
            if self.matcher.fit(s, ref, skip_structure_reduction=True):
                return mid
        return ""


def known_match(structure: Structure, known: KnownStructures | Iterable[KnownPhase]) -> str:
    """Material id of the known phase `structure` is (StructureMatcher, default tolerances), or
    '' when it matches none: then it is novel with respect to these references. Pass a
    `KnownStructures` built once when checking many structures."""
    index = known if isinstance(known, KnownStructures) else KnownStructures(known)
    return index.match(structure)
