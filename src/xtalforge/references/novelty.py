"""Novelty: is a structure one of the system's known phases?

StructureMatcher with pymatgen's default tolerances (ltol 0.2, stol 0.3, angle_tol 5 degrees,
primitive cells, volumes scaled), so an MLIP-relaxed candidate matches its DFT-relaxed known
phase despite the few-percent volume difference. Known structures are bucketed by reduced
formula: a candidate is only compared with the polymorphs of its own formula.
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

    def add(self, material_id: str, structure: Structure) -> None:
        """Another reference structure (e.g. a known phase as the MLIP relaxed it, same id)."""
        s = structure.copy()
        s.remove_oxidation_states()
        self._by_formula[s.composition.reduced_formula].append((material_id, s))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_formula.values())

    def match(self, structure: Structure) -> str:
        """The material id of the first known structure that matches, or '' (novel)."""
        s = structure.copy()
        s.remove_oxidation_states()
        for mid, ref in self._by_formula.get(s.composition.reduced_formula, ()):
            if self.matcher.fit(s, ref):
                return mid
        return ""


def known_match(structure: Structure, known: KnownStructures | Iterable[KnownPhase]) -> str:
    """Material id of the known phase `structure` is (StructureMatcher, default tolerances), or
    '' when it matches none: then it is novel with respect to these references. Pass a
    `KnownStructures` built once when checking many structures."""
    index = known if isinstance(known, KnownStructures) else KnownStructures(known)
    return index.match(structure)
