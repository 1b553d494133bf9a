"""Uniqueness and novelty: symmetry-equivalent structures collapse to one Candidate.id.

Structures are bucketed by reduced formula (StructureMatcher never matches across formulas),
and only inside a bucket is the expensive matcher run, first against the canonical id and then
structure by structure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalforge.types import Candidate


def _matcher() -> StructureMatcher:
    # pymatgen's defaults (ltol 0.2, stol 0.3, angle_tol 5) with supercell matching on, so a
    # doubled cell is the same crystal as its primitive one.
    return StructureMatcher(primitive_cell=True, scale=True, attempt_supercell=True)


class Deduplicator:
    """Remembers every structure seen; `add` returns the id a new structure should carry."""

    def __init__(self, known: Iterable[Candidate] = ()):
        self.matcher = _matcher()
        self.ids: set[str] = set()
        self.buckets: dict[str, list[tuple[str, Structure]]] = defaultdict(list)
        for c in known:
            self._remember(c.id, c.structure)

    def _remember(self, cid: str, s: Structure) -> None:
        self.ids.add(cid)
        self.buckets[s.composition.reduced_formula].append((cid, s))

    def match(self, s: Structure) -> str | None:
        """The id of a known structure that `s` duplicates, or None."""
        for cid, other in self.buckets.get(s.composition.reduced_formula, ()):
            if len(other) == len(s) or len(other) % len(s) == 0 or len(s) % len(other) == 0:
                if self.matcher.fit(s, other):
                    return cid
        return None

    def add(self, c: Candidate) -> bool:
        """True when `c` is new (and is now remembered); False for a duplicate."""
        if c.id in self.ids:
            return False
        if self.match(c.structure) is not None:
            return False
        self._remember(c.id, c.structure)
        return True

    def unique(self, cands: Iterable[Candidate]) -> list[Candidate]:
        return [c for c in cands if self.add(c)]


def is_novel(s: Structure, references: Iterable[Structure]) -> bool:
    """Not a StructureMatcher match of any reference structure of the same formula."""
    m = _matcher()
    f = s.composition.reduced_formula
    return not any(r.composition.reduced_formula == f and m.fit(s, r) for r in references)
